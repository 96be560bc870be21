"""Stage 4: grouped, stratified, seeded split; counts of what was dropped; output contract."""
import json
import os
import pathlib
import pickle
import re

import numpy as np
import pytest

from learning import safe_pickle
from learning.learning_examples_preparing import (
    SortedNames, check_group_integrity, main, match_examples, name_lookup, split_examples,
    stratified_group_split)
from learning.store.index import open_store, shards_folder, write_store
from learning.store.splits import load_pair
from scraper.cli import UserError, run_main
from scraper.schema import make_record, save_descriptions

FEATURE_PARAMS = {"weights": "random:seed=0", "image_size": 32, "layer": "block5_pool",
                  "pooling": "none", "preprocessing": "caffe", "precision": "float32"}


def write_inputs(tmp_path, records, feature_names, shape=(2, 2, 8), seed=0, legacy=False):
    """images-description.json + a features store (an index and float32 shards of 16 rows;
    with `legacy`, an old cxr-features/1 pickle) whose features encode the row index."""
    descriptions = tmp_path / "images-description.json"
    save_descriptions(descriptions, records)
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(len(feature_names),) + shape).astype(np.float32)
    features[:, 0, 0, 0] = np.arange(len(feature_names))  # row id, to check rows follow names
    path = tmp_path / "transfer_features.pickle"
    if legacy:
        safe_pickle.dump({"format": "cxr-features/1", "names": list(feature_names),
                          "features": features, "content_hashes": ["x"] * len(feature_names),
                          "params": FEATURE_PARAMS, "failures": []}, path)
    else:
        write_store(path, list(feature_names), [features], shape, FEATURE_PARAMS, "float32",
                    shard_bytes=16 * features[0].nbytes)
    return descriptions, path, features


def grouped_records(n_reports=60, seed=0):
    """Reports of 1-3 images; about a third abnormal; every image of a report shares its label."""
    rng = np.random.default_rng(seed)
    records = []
    for r in range(n_reports):
        label = "abnormal" if r % 3 == 0 else "normal"
        for i in range(int(rng.integers(1, 4))):
            records.append(make_record(f"r{r:03d}_{i}.png", "folder", label=label,
                                       report_id=f"report-{r}"))
    return records


def run_stage(tmp_path, descriptions, features, *flags):
    outputs = [tmp_path / n for n in ("training.pickle", "testing.pickle", "examples.json")]
    code = run_main(main, "cxr-prepare-examples",
                    [str(descriptions), str(features)] + [str(o) for o in outputs] + list(flags))
    return code, outputs


def test_groups_never_cross_splits_and_classes_are_stratified(tmp_path, capsys):
    records = grouped_records(90)
    names = [r["name"] for r in records]
    descriptions, features_path, features = write_inputs(tmp_path, records, names)
    code, (training_path, testing_path, examples_path) = run_stage(
        tmp_path, descriptions, features_path, "--test-fraction", "0.2")
    assert code == 0
    training, testing = load_pair(training_path, testing_path)
    assert training["split"] == "training" and testing["split"] == "testing"
    assert training["split_id"] == testing["split_id"] and len(training["split_id"]) == 32
    for path in (training_path, testing_path):   # references only: no feature row inside
        raw = safe_pickle.load(path, kind="cxr-examples/2")
        assert set(raw["features"]) == {"index", "path", "store_id", "shape", "dtype",
                                        "rows_in_index"}
        assert raw["features"]["index"] == "transfer_features.pickle"   # relative to the file
        assert path.stat().st_size < 20_000 and "description" in raw
    assert set(testing["subset"]) == {"test"}
    assert set(training["subset"]) == {"train", "validation"}
    # No report in two splits (train / validation / test), even with several images per report.
    where = {}
    for data in (training, testing):
        for group, part in zip(data["groups"], data["subset"]):
            assert where.setdefault(group, part) == part
    assert len(training["names"]) + len(testing["names"]) == len(records)
    # Stratified: the test share of each class is close to 0.2 (groups hold up to 3 images).
    all_labels = np.concatenate([training["labels"], testing["labels"]])
    for c in (0, 1):
        share = (testing["labels"] == c).sum() / (all_labels == c).sum()
        assert 0.15 <= share <= 0.25, share
    # Validation is ~10 % of the non-test images, both classes.
    val = np.asarray(training["subset"]) == "validation"
    assert 0.05 <= val.mean() <= 0.15 and set(training["labels"][val]) == {0, 1}
    # Rows follow their names; labels agree with the descriptions.
    label_of = {r["name"]: r["label"] for r in records}
    for data in (training, testing):
        rows = data["source"].read(np.arange(len(data["names"])))
        assert rows.dtype == np.float32 and data["labels"].dtype == np.int64
        assert rows.shape[1:] == (2, 2, 8) and data["format"] == "cxr-examples/2"
        for name, row, label in zip(data["names"], rows, data["labels"]):
            assert names[int(row[0, 0, 0])] == name
            assert ["normal", "abnormal"][label] == label_of[name]
        assert data["feature_params"] == FEATURE_PARAMS
        assert data["split_params"] == {"seed": 0, "test_fraction": 0.2,
                                        "validation_fraction": 0.1}
        assert data["class_names"] == ["normal", "abnormal"]
    assert json.loads(examples_path.read_text()) == testing["names"]
    err = capsys.readouterr().err
    assert "validation" in err and "dropped 0 unlabelled" in err


def test_split_is_deterministic_under_seed_and_changes_with_it():
    records = grouped_records(80)
    labels = np.array([r["label"] == "abnormal" for r in records], dtype=np.int64)
    groups = [r["report_id"] for r in records]
    first = split_examples(labels, groups, seed=3)
    assert split_examples(labels, groups, seed=3) == first
    assert split_examples(labels, groups, seed=4) != first


def test_unlabelled_and_missing_are_counted_not_silently_dropped(tmp_path, capsys):
    records = grouped_records(30)
    records[0]["label"] = None
    records[1]["label"] = None
    names = [r["name"] for r in records]
    # 3 described images have no features; 2 feature rows have no description.
    feature_names = names[:-3] + ["stray1.png", "stray2.png"]
    indices, labels, groups, counts = match_examples(records, feature_names)
    assert counts == {"labelled": len(records) - 5, "unlabelled": 2, "no_features": 3,
                      "no_description": 2}
    descriptions, features_path, _ = write_inputs(tmp_path, records, feature_names)
    code, (training_path, testing_path, _) = run_stage(tmp_path, descriptions, features_path)
    assert code == 0
    err = capsys.readouterr().err
    assert ("dropped 2 unlabelled, 3 described without features, 2 features without a "
            "description") in err
    n = len(safe_pickle.load(training_path)["names"]) + len(safe_pickle.load(testing_path)["names"])
    assert n == len(records) - 5


def test_old_single_pickle_features_still_split(tmp_path, capsys):
    """A cxr-features/1 file works as before (rows follow names), with a note on converting."""
    records = grouped_records(30)
    names = [r["name"] for r in records]
    descriptions, features_path, features = write_inputs(tmp_path, records, names, legacy=True)
    code, (training_path, testing_path, _) = run_stage(tmp_path, descriptions, features_path)
    assert code == 0 and "re-run stage 3" in capsys.readouterr().err
    training, testing = load_pair(training_path, testing_path)
    for data in (training, testing):
        rows = data["source"].read(np.arange(len(data["names"])))
        assert [names[int(r[0, 0, 0])] for r in rows] == data["names"]


def test_missing_or_damaged_shard_is_one_line(tmp_path, capsys):
    records = grouped_records(30)
    names = [r["name"] for r in records]
    descriptions, features_path, _ = write_inputs(tmp_path, records, names)
    shards = sorted(pathlib.Path(shards_folder(features_path)).iterdir())
    shards[0].write_bytes(shards[0].read_bytes()[:-10])                # truncated
    code, outputs = run_stage(tmp_path, descriptions, features_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "was changed since its index was written" in err[0]
    shards[0].unlink()
    code, outputs = run_stage(tmp_path, descriptions, features_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "feature shard missing" in err[0]
    assert not any(path.exists() for path in outputs)


def test_tiny_dataset_still_tests_both_classes():
    # 24 images, 12 per class, one image per report (like demo/nih-24).
    labels = np.array([0, 1] * 12)
    groups = [f"p{i}" for i in range(24)]
    subset = np.array(split_examples(labels, groups, 0.1, 0.1, seed=0))
    assert sorted(labels[subset == "test"].tolist()) == [0, 1]
    assert sorted(labels[subset == "validation"].tolist()) == [0, 1]
    assert (subset == "train").sum() == 20


def test_class_in_a_single_group_stays_in_training():
    labels = np.array([0] * 10 + [1, 1])
    groups = [f"p{i}" for i in range(10)] + ["only", "only"]
    held = stratified_group_split(labels, groups, 0.5, seed=0)
    assert not held[-2:].any() and held[:10].sum() == 5


def test_large_fraction_still_leaves_every_class_for_training():
    labels = np.array([0] * 6 + [1, 1])
    groups = [f"p{i}" for i in range(8)]
    held = stratified_group_split(labels, groups, 0.9, seed=0)
    assert held[:6].sum() == 5 and held[6:].sum() == 1


def test_missing_class_is_a_clear_error(tmp_path):
    records = [make_record(f"n{i}.png", "folder", label="normal") for i in range(5)]
    descriptions, features_path, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    with pytest.raises(UserError, match="no 'abnormal' examples"):
        main([str(descriptions), str(features_path), str(tmp_path / "a.pickle"),
              str(tmp_path / "b.pickle"), str(tmp_path / "c.json")])


def test_bad_fraction_and_crafted_pickle_are_one_line_errors(tmp_path, capsys):
    records = grouped_records(10)
    descriptions, features_path, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    code, _ = run_stage(tmp_path, descriptions, features_path, "--test-fraction", "1.5")
    assert code == 2 and ("argument --test-fraction: invalid fraction '1.5': must be in [0, 1)"
                          in capsys.readouterr().err)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"format": "cxr-features/1",
                                                         "x": Evil()}))
    code, _ = run_stage(tmp_path, descriptions, tmp_path / "evil.pickle")
    err = capsys.readouterr().err
    assert code == 1 and "refusing to load" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
    code, _ = run_stage(tmp_path, descriptions, tmp_path / "missing.pickle")
    assert code == 1 and "not found" in capsys.readouterr().err


def test_group_integrity_check_catches_a_split_report():
    check_group_integrity(["a", "a", "b"], ["train", "train", "test"])
    with pytest.raises(AssertionError, match="report 'a'"):
        check_group_integrity(["a", "a", "b"], ["train", "test", "test"])


def test_real_demo_labels_split_by_patient(tmp_path):
    """demo/nih-24's labels.csv (real patient ids) through the stage with pooled features."""
    import csv

    root = os.path.join(os.path.dirname(__file__), "..", "..", "demo", "nih-24")
    with open(os.path.join(root, "labels.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = [make_record(row["image"], "folder",
                           label="abnormal" if row["abnormal"] == "1" else "normal",
                           report_id=row["patient_id"]) for row in rows]
    descriptions, features_path, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    code, (training_path, testing_path, examples_path) = run_stage(tmp_path, descriptions,
                                                                   features_path)
    assert code == 0
    testing = safe_pickle.load(testing_path)
    assert sorted(testing["labels"].tolist()) == [0, 1]
    assert json.loads(examples_path.read_text()) == testing["names"]
    assert set(testing["groups"]).isdisjoint(safe_pickle.load(training_path)["groups"])


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_descriptions_are_streamed_record_by_record(tmp_path, monkeypatch, chunk):
    """iter_records gives what load_descriptions gives, whatever the chunk boundaries (unicode
    names, numbers, nested boxes split across reads)."""
    from learning.store import descriptions
    from scraper.schema import load_descriptions

    records = grouped_records(12)
    records[3]["name"] = "r\u00e9sum\u00e9-\u4e2d.png"
    records[4]["boxes"] = [{"finding": "nodule", "x": 1.5, "y": 20, "w": 300.25, "h": 4}]
    save_descriptions(tmp_path / "d.json", records)
    monkeypatch.setattr(descriptions, "CHUNK", chunk)
    assert list(descriptions.iter_records(tmp_path / "d.json")) == \
        load_descriptions(tmp_path / "d.json")


@pytest.mark.parametrize("text, message", [
    ('{"a": 1}', "must be a JSON list of records"),
    ('[{"name": "x.png"}', "lacks field(s)"),
    ("[1, 2", "record #0: record must be an object"),
    ('[{"name": ', "is not valid JSON"),
    ("[] []", "extra data after the list"),
])
def test_broken_descriptions_are_one_line(tmp_path, text, message):
    from learning.store.descriptions import iter_records

    (tmp_path / "d.json").write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        list(iter_records(tmp_path / "d.json"))


def test_duplicate_description_is_refused(tmp_path):
    records = grouped_records(5)
    with pytest.raises(UserError, match="duplicate record name 'r000_0.png'"):
        match_examples(records + [records[0]], [r["name"] for r in records])


def test_a_second_writer_of_the_output_folder_is_refused(tmp_path, capsys):
    """Stage 4 takes the data folder's lock (scraper.fileio.folder_lock), like stages 2-3."""
    import fcntl

    from scraper.fileio import LOCK_FILE

    records = grouped_records(10)
    descriptions, features_path, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    with open(tmp_path / LOCK_FILE, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, outputs = run_stage(tmp_path, descriptions, features_path)
    assert code == 1 and "another run is writing to" in capsys.readouterr().err
    assert not any(path.exists() for path in outputs)


def test_name_lookup_finds_rows_in_sorted_and_unsorted_names():
    names = [f"{i:05d}.png" for i in range(50)]
    asked = ["00000.png", "00049.png", "00020.png", "00020", "zzz.png", ""]
    sorted_lookup, unsorted_lookup = name_lookup(names), name_lookup(names[::-1])
    assert isinstance(sorted_lookup, SortedNames) and isinstance(unsorted_lookup, dict)
    assert [sorted_lookup.get(n) for n in asked] == [0, 49, 20, None, None, None]
    assert [unsorted_lookup.get(n) for n in asked] == [49, 0, 29, None, None, None]
    records = grouped_records(20)
    names = sorted(r["name"] for r in records)[3:]           # 3 described without features
    by_name = {}
    for given in (names, names[::-1]):
        indices, labels, groups, counts = match_examples(records, given)
        by_name[given[0]] = sorted(zip([given[i] for i in indices], labels.tolist(), groups))
        assert counts == {"labelled": len(names), "unlabelled": 0, "no_features": 3,
                          "no_description": 0}
    assert len(set(map(tuple, by_name.values()))) == 1


def test_matching_sorted_names_builds_no_table_of_them():
    """Stage 3 writes the names sorted: matching 20,000 of them allocates the per-image arrays
    (~0.7 MB), not also a dict of the names and their row numbers (~1.2 MB more)."""
    import tracemalloc

    names = [f"{i:08d}.png" for i in range(20_000)]
    record = {"label": "normal", "report_id": "patient"}
    peaks = []
    for given in (names, names[::-1]):
        tracemalloc.start()
        indices, *_ = match_examples((dict(record, name=n) for n in given), given)
        peaks.append(tracemalloc.get_traced_memory()[1] / 1e6)
        tracemalloc.stop()
        assert len(indices) == 20_000
    assert peaks[0] < 0.9 < 1.5 < peaks[1], peaks


def test_stage4_keeps_no_per_row_table_and_reads_no_row(tmp_path, capsys):
    """open_store(rows=False) checks every shard (size, header) and drops the per-row
    locations and hashes; stage 4 reads no feature row, so a shard whose values (not its size)
    changed still splits (stage 5's checking pass refuses it by its sha256)."""
    records = grouped_records(30)
    names = sorted(r["name"] for r in records)
    descriptions, features_path, _ = write_inputs(tmp_path, records, names)
    store = open_store(features_path, rows=False)
    assert store.locations is None and store.digests is None and store.names == names
    store.close()
    shard = sorted(pathlib.Path(shards_folder(features_path)).iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"                       # the last value becomes +inf
    shard.write_bytes(bytes(data))
    code, (training_path, testing_path, _) = run_stage(tmp_path, descriptions, features_path)
    assert code == 0
    training, testing = load_pair(training_path, testing_path)
    assert sorted(training["names"] + testing["names"]) == names


def test_duplicate_names_in_an_unsorted_index_are_one_line(tmp_path, capsys):
    records = grouped_records(10)
    names = [r["name"] for r in records][::-1]
    names[1] = names[0]
    descriptions, features_path, _ = write_inputs(tmp_path, records, names, legacy=True)
    code, outputs = run_stage(tmp_path, descriptions, features_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "duplicate image names in the features index" in err[0]
    assert not any(path.exists() for path in outputs)


def test_a_record_longer_than_the_read_size_is_decoded_a_few_times(tmp_path, monkeypatch):
    """A 200 kB record read 64 bytes at a time: the unread part doubles on each failed decode,
    so it is decoded about log2(200 kB / 64) times, not 3,000 times (quadratic)."""
    from learning.store import descriptions

    records = grouped_records(3)
    records[1]["findings"] = "pleural effusion " * 12_000
    save_descriptions(tmp_path / "d.json", records)
    calls = []

    class Counting(json.JSONDecoder):
        def raw_decode(self, text, index=0):
            calls.append(index)
            return super().raw_decode(text, index)

    monkeypatch.setattr(descriptions, "CHUNK", 64)
    monkeypatch.setattr(descriptions.json, "JSONDecoder", Counting)
    assert list(descriptions.iter_records(tmp_path / "d.json")) == records
    assert len(calls) < 40, len(calls)
