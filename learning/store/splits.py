"""Reading stage 4's split files (training.pickle, testing.pickle) for stage 5.

"cxr-examples/2" (stage 4 now): references into the features index (learning/store/index.py)
- names, rows, labels, groups, subset, and one split_id shared by both files. The rows are read
from the store on demand (learning/store/dataset.StoreSource).
"cxr-examples/1" (earlier versions): the same with the feature rows copied in ("features");
still read, into memory (ArraySource), as before.

`load_pair` gives both, checked: each file well formed; both from one split (split_id) and one
features index (store_id); no patient group on both sides; same feature shape and parameters.
"""
import os

import numpy as np

from learning import safe_pickle
from learning.store.dataset import ArraySource, StoreSource
from learning.store.index import check_row_shape, open_store
from learning.train.findings import check_split_findings
from scraper.cli import UserError

FORMAT = "cxr-examples/2"
LEGACY_FORMAT = "cxr-examples/1"


def load_split(path, split, stores=None):
    """A stage-4 pickle as a dict with "source" (the rows), "names", "labels", "groups",
    "subset", "feature_params", "split_id" (None in old files) ...; split: "training" or
    "testing". `stores` caches opened features indexes by path (both files share one)."""
    data = safe_pickle.load(path, f"{split} examples", kind=(FORMAT, LEGACY_FORMAT))
    if data["format"] == LEGACY_FORMAT:
        # numbers only, and finite: a head trained on NaN features is garbage with exit 0
        features = safe_pickle.check_array(data.get("features"), "features", path,
                                           finite=True)
        check_row_shape(features.shape[1:], path)
        data["source"] = ArraySource(features.astype(np.float32, copy=False), path)
    else:
        data["source"] = _store_source(data, path, stores if stores is not None else {})
    labels = safe_pickle.check_array(data.get("labels"), "labels", path, ndims=(1,))
    n = len(data["source"])
    for key in ("names", "groups", "subset"):
        safe_pickle.check_str_list(data.get(key), key, path, length=n)
    data["feature_params"] = safe_pickle.check_dict(data.get("feature_params"),
                                                    "feature_params", path)
    if labels.shape != (n,):
        raise UserError(f"{path}: {n:,} feature rows with labels of shape {labels.shape}; "
                        f"expected ({n:,},)")
    if n and not np.isin(labels, (0, 1)).all():
        raise UserError(f"{path}: labels must be 0 (normal) or 1 (abnormal), found "
                        f"{sorted(set(labels.tolist()))[:5]}")
    if data.get("split") != split:
        raise UserError(f"{path} holds the {data.get('split')!r} split, expected {split!r}; "
                        f"are the training and testing arguments swapped?")
    data["labels"] = labels.astype(np.int64, copy=False)
    data["finding_names"], data["finding_labels"] = check_split_findings(data, path, n)
    data.setdefault("split_id", None)
    return data


def _store_source(data, path, stores):
    """The StoreSource a cxr-examples/2 file refers to, after checking the index is the one
    stage 4 saw (same store_id)."""
    reference = safe_pickle.check_dict(data.get("features"), "features", path)
    rows = safe_pickle.check_array(data.get("rows"), "rows", path, ndims=(1,))
    relative, absolute = reference.get("index"), reference.get("path")
    if not isinstance(relative, str) or not isinstance(absolute, str):
        raise UserError(f"{path}: 'features' must name the features index (index, path)")
    candidates = [os.path.join(os.path.dirname(os.path.abspath(path)), relative), absolute]
    index = next((c for c in candidates if os.path.isfile(c)), None)
    if index is None:
        raise UserError(f"{path} refers to the features index {absolute}, which is not there "
                        f"(nor at {candidates[0]}); re-run stage 3 and stage 4")
    key = os.path.realpath(index)
    if key not in stores:
        stores[key] = open_store(index, "features index")
        stores[key].check_files()
    store = stores[key]
    if store.store_id != reference.get("store_id"):
        raise UserError(f"the features index {index} changed after stage 4 split it (store_id "
                        f"{str(store.store_id)[:12]}... vs {str(reference.get('store_id'))[:12]}"
                        f"... in {path}): re-run stage 4, cxr-prepare-examples")
    if rows.dtype.kind not in "iu" or (len(rows) and (rows.min() < 0 or
                                                      rows.max() >= len(store))):
        raise UserError(f"{path}: 'rows' must be row numbers of the features index "
                        f"(0..{len(store) - 1})")
    return StoreSource(store, rows)


def load_pair(training_path, testing_path):
    """(training, testing) from load_split, checked to belong together."""
    stores = {}
    training = load_split(training_path, "training", stores)
    testing = load_split(testing_path, "testing", stores)
    if training["split_id"] != testing["split_id"]:
        raise UserError(f"{training_path} and {testing_path} come from different runs of stage "
                        f"4 (split ids {str(training['split_id'])[:12]} and "
                        f"{str(testing['split_id'])[:12]}): re-run stage 4 and pass both "
                        f"files it writes")
    shared = set(training["groups"]) & set(testing["groups"])
    if shared:
        example = sorted(shared)[0]
        raise UserError(f"{len(shared):,} patient groups are in both {training_path} and "
                        f"{testing_path} (e.g. {example!r}): the test set would not be "
                        f"held out; re-run stage 4")
    if training["source"].shape != testing["source"].shape:
        raise UserError(f"feature shapes differ: {training_path} has "
                        f"{training['source'].shape}, {testing_path} has "
                        f"{testing['source'].shape}; re-run stage 4 on one features file")
    if training.get("feature_params") != testing.get("feature_params"):
        raise UserError(f"feature parameters differ between {training_path} and {testing_path} "
                        f"({training.get('feature_params')} vs {testing.get('feature_params')}); "
                        f"re-run stage 4 on one features file")
    if len(training["source"]) == 0 or len(testing["source"]) == 0:
        raise UserError("empty training or testing set: check stage 4's summary")
    return training, testing
