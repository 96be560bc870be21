"""Stage 4: split the labelled images into training and testing sets by report (patient).

Reads:  images-description.json (stage 2; `label` and `report_id` per image) and the features
        index transfer_features.pickle (stage 3; "cxr-features/2", or an old single-pickle
        "cxr-features/1"): only its names are needed, no feature row is read or copied.
Writes: training.pickle and testing.pickle ({"format": "cxr-examples/2", ...}, see
        `make_examples`): REFERENCES into the features index (its path, store_id and the row
        of each image), with names, labels, groups, subsets, each image's finding labels
        (learning/train/findings.py) and one `split_id` shared by both files; and
        examples.json (JSON list of the test images' names, which stage 6 explains). All
        three are written atomically, under the output folder's lock.

No report_id (one report / study / patient, possibly several images) is ever in two splits:
frontal and lateral views of one study, or two films of one patient, stay together. The split
is stratified by label, seeded (--seed), with --test-fraction of the labelled examples held
out for testing and --validation-fraction of the rest marked as the "validation" subset of
training.pickle (used by stage 5 for early stopping, never for the reported metrics).
Unlabelled images, images without features and features without a description are counted
and reported, never silently dropped. Before anything is read, the three outputs are checked
(scraper.fileio.check_outputs): none may be an input or another output (arguments shifted by
one would otherwise overwrite the features), the pickles must end in .pickle and the list in
.json. Stage 5 checks the feature rows themselves (numbers, finite, within range) as it
streams them.

Example:
    cxr-prepare-examples data/images-description.json data/transfer_features.pickle \\
        data/training.pickle data/testing.pickle data/examples.json
"""
import bisect
import contextlib
import hashlib
import json
import os
import time

import numpy as np

from learning import safe_pickle
from learning.store.descriptions import iter_records
from learning.store.index import open_store, strictly_sorted
from learning.train.findings import count_line, finding_matrix
from scraper.cli import ArgumentParser, UserError, elapsed_since, exit_with, fmt_count, log
from scraper.cli import fraction as fraction_type, seed as seed_type
from scraper.fileio import atomic_write_json, check_outputs, folder_lock
from scraper.findings import FINDINGS
from scraper.schema import LABELS


PROG = "cxr-prepare-examples"
EXAMPLES_FORMAT = "cxr-examples/2"
CLASS_NAMES = list(LABELS)  # ["normal", "abnormal"]: label index 0 = normal, 1 = abnormal
DESCRIPTION = (
    "Stage 4's split (cxr-prepare-examples). split: 'training' (subsets train + validation) "
    "or 'testing'; split_id: the same in both files of one split; features: the features "
    "index these rows refer to (path relative to this file, absolute path, store_id, row "
    "shape, dtype); names/rows/labels/groups/subset: one entry per image, rows = its row in "
    "the index, labels 0 = normal 1 = abnormal, groups = report/patient id; finding_names / "
    "finding_labels: the finding vocabulary and per image 1 = has it, 0 = has not, -1 = not "
    "known (learning/train/findings.py); feature_params: "
    "what made the features; split_params: seed and fractions; class_names: label order.")


def load_features(path):
    """(names, float32 features (N, ...), params) of a features index, ALL ROWS IN MEMORY:
    for benchmarks and small sets only (the stages stream from the store)."""
    store = open_store(path, "features index")
    store.check_files()
    features = store.read(np.arange(len(store)))
    store.close()
    return store.names, features, dict(store.params)


class SortedNames:
    """name -> row (or None) by binary search over sorted names: no extra memory, where a dict
    of 100,000 names costs ~8 MB."""

    def __init__(self, names):
        self.names = names

    def get(self, name):
        row = bisect.bisect_left(self.names, name)
        return row if row < len(self.names) and self.names[row] == name else None


def name_lookup(names):
    """name -> row (`.get(name)`, None when absent) for a list of distinct names: SortedNames
    when sorted (as stage 3 writes them), else a dict."""
    if strictly_sorted(names):
        return SortedNames(names)
    return {name: row for row, name in enumerate(names)}


def match_examples(records, feature_names):
    """Join descriptions (an iterable of records, e.g. streamed by iter_records) and features
    by image name, keeping per image only its label and group.

    Returns (indices into feature_names, labels int64, groups, counts). `counts` has
    "labelled" (used), "unlabelled" (label null, with features), "no_features" (described,
    labelled or not, but no feature vector: stage 3 skipped or failed it) and
    "no_description" (features for an image the descriptions do not list).
    """
    row_of = name_lookup(feature_names)
    label_of = np.full(len(feature_names), -2, dtype=np.int8)  # -2 undescribed, -1 unlabelled
    group_of = [None] * len(feature_names)
    described_only = set()          # described, no features (usually few)
    for record in records:
        name = record["name"]
        row = row_of.get(name)
        if (name in described_only) if row is None else label_of[row] != -2:
            raise UserError(f"duplicate record name {name!r} in the image descriptions")
        if row is None:
            described_only.add(name)
            continue
        label_of[row] = -1 if record["label"] is None else CLASS_NAMES.index(record["label"])
        group_of[row] = record["report_id"]
    indices = np.flatnonzero(label_of >= 0).astype(np.int64)
    counts = {"labelled": int(len(indices)), "unlabelled": int((label_of == -1).sum()),
              "no_features": len(described_only),
              "no_description": int((label_of == -2).sum())}
    return (indices, label_of[indices].astype(np.int64), [group_of[i] for i in indices],
            counts)


def stratified_group_split(labels, groups, fraction, seed=0):
    """Pick whole groups holding about `fraction` of each class; returns a bool mask (held out).

    Groups are visited in a seeded random order and taken while no class would exceed its
    target round(fraction * class size) - at least 1 for a class with two or more groups, so
    a tiny dataset still tests both classes, at most class size - 1, so the kept side keeps
    every class - then the visit stops once every class is full.
    A class that lives in a single group stays on the kept side (it cannot be in both).
    Equivalent in spirit to sklearn's StratifiedGroupKFold, but hits any fraction (not just
    1/k) and never fails on tiny datasets. Memory: a few arrays of the group count.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    # sorted unique groups (the visit order's reference) and each image's group number
    unique_groups, inverse = np.unique(np.asarray(groups, dtype=object), return_inverse=True)
    n_classes = len(CLASS_NAMES)
    group_counts = np.zeros((len(unique_groups), n_classes), dtype=np.int64)
    np.add.at(group_counts, (inverse.reshape(-1), labels), 1)
    totals = np.bincount(labels, minlength=n_classes)
    groups_per_class = (group_counts > 0).sum(axis=0)
    targets = np.where(groups_per_class >= 2,
                       np.maximum(1, np.round(fraction * totals)), 0).astype(int)
    targets = np.minimum(targets, totals - 1)  # the kept side always keeps each class
    taken = np.zeros(n_classes, dtype=int)
    held_group = np.zeros(len(unique_groups), dtype=bool)
    rng = np.random.default_rng(seed)
    for position in rng.permutation(len(unique_groups)):
        if np.all(taken >= targets):
            break
        counts = group_counts[position]
        if np.any(taken + counts > targets):
            continue  # would overshoot a class (e.g. a mixed-label patient): try another group
        taken += counts
        held_group[position] = True
    return held_group[inverse.reshape(-1)]   # a group is entirely on one side by construction


def split_examples(labels, groups, test_fraction=0.1, validation_fraction=0.1, seed=0):
    """Assign each example to "train", "validation" or "test"; returns a list of str.

    validation_fraction is a fraction of the non-test examples (taken from training).
    """
    for flag, value in (("--test-fraction", test_fraction),
                        ("--validation-fraction", validation_fraction)):
        if not 0 <= value < 1:
            raise UserError(f"invalid {flag} {value}: must be in [0, 1)")
    labels = np.asarray(labels)
    present = np.bincount(labels, minlength=len(CLASS_NAMES))
    missing = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if present[c] == 0]
    if missing:
        raise UserError(f"no {' or '.join(repr(m) for m in missing)} examples among the "
                        f"{fmt_count(len(labels))} labelled images: a classifier needs both "
                        f"classes (check the labels in the descriptions)")
    test = stratified_group_split(labels, groups, test_fraction, seed)
    rest = np.flatnonzero(~test)
    validation_rest = stratified_group_split(labels[rest], [groups[i] for i in rest],
                                             validation_fraction, seed + 1)
    subset = np.array(["train"] * len(labels), dtype=object)
    subset[test] = "test"
    subset[rest[validation_rest]] = "validation"
    check_group_integrity(groups, subset)
    return subset.tolist()


def check_group_integrity(groups, subset):
    """Raise AssertionError if any group appears in more than one subset."""
    seen = {}
    for group, part in zip(groups, subset):
        assert seen.setdefault(group, part) == part, \
            f"report {group!r} is in both {seen[group]!r} and {part!r}"


def make_split_id(store_id, split_params, names, subset):
    """One id for one split: the same in training.pickle and testing.pickle."""
    digest = hashlib.sha256(json.dumps([store_id, split_params], sort_keys=True).encode())
    for name, part in zip(names, subset):
        digest.update(f"{name}\0{part}\0".encode())
    return digest.hexdigest()[:32]


def features_reference(store, example_path):
    """Where stage 5 finds the rows: the index relative to the examples file (the data folder
    may move), its absolute path, and what it must hold (store_id, row shape, dtype)."""
    index = os.path.abspath(store.path)
    return {"index": os.path.relpath(index, os.path.dirname(os.path.abspath(example_path))),
            "path": index, "store_id": store.store_id, "shape": list(store.shape),
            "dtype": store.dtype, "rows_in_index": len(store)}


def make_examples(split, split_id, names, rows, labels, groups, subset, reference,
                  feature_params, split_params, finding_labels=None):
    """The stage-4 pickle dict (one per split) that stage 5 reads; finding_labels: the images'
    (n, K) int8 matrix (learning/train/findings.py), carried when given."""
    findings = {} if finding_labels is None else {
        "finding_names": list(FINDINGS), "finding_labels": np.asarray(finding_labels, np.int8)}
    return {**findings,
        "format": EXAMPLES_FORMAT, "description": DESCRIPTION, "split": split,
        "split_id": split_id, "features": reference, "names": list(names),
        "rows": np.asarray(rows, dtype=np.int64), "labels": np.asarray(labels, dtype=np.int64),
        "groups": list(groups), "subset": list(subset), "feature_params": feature_params,
        "split_params": split_params, "class_names": list(CLASS_NAMES),
    }


@contextlib.contextmanager
def output_locks(paths, prog):
    """scraper.fileio.folder_lock on every distinct folder of `paths` (in sorted order)."""
    with contextlib.ExitStack() as stack:
        for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in paths}):
            stack.enter_context(folder_lock(folder, prog))
        yield


def count_table(labels, subset):
    """Rows of class counts per subset, e.g. 'train  400  400  800'."""
    labels = np.asarray(labels)
    subset = np.asarray(subset)
    lines = [f"{'split':<11}{'normal':>9}{'abnormal':>10}{'total':>9}"]
    for part in ("train", "validation", "test"):
        counts = np.bincount(labels[subset == part], minlength=len(CLASS_NAMES))
        lines.append(f"{part:<11}{fmt_count(int(counts[0])):>9}{fmt_count(int(counts[1])):>10}"
                     f"{fmt_count(int(counts.sum())):>9}")
    return "\n".join(lines)


def prepare(descriptions_path, features_path, training_path, testing_path, examples_path,
            test_fraction=0.1, validation_fraction=0.1, seed=0):
    """Run stage 4; returns (subset list, counts dict, labels, groups) of the labelled images."""
    check_outputs(inputs=[("descriptions", descriptions_path), ("features", features_path)],
                  outputs=[("training output", training_path, ".pickle"),
                           ("testing output", testing_path, ".pickle"),
                           ("examples output", examples_path, ".json")])
    with output_locks([training_path, testing_path, examples_path], PROG):
        # every shard there, with the size its index records; no row is read here
        store = open_store(features_path, "features index", rows=False)
        indices, labels, groups, counts = match_examples(iter_records(descriptions_path),
                                                         store.names)
        names = [store.names[i] for i in indices]
        finding_rows = finding_matrix(iter_records(descriptions_path), names)   # (n, K) int8
        subset = np.asarray(split_examples(labels, groups, test_fraction, validation_fraction,
                                           seed), dtype=object)
        split_params = {"seed": seed, "test_fraction": test_fraction,
                        "validation_fraction": validation_fraction}
        split_id = make_split_id(store.store_id, split_params, names, subset)
        for split, parts, path in (("training", ("train", "validation"), training_path),
                                   ("testing", ("test",), testing_path)):
            rows = np.flatnonzero(np.isin(subset, parts))
            safe_pickle.dump(make_examples(
                split, split_id, [names[i] for i in rows], indices[rows], labels[rows],
                [groups[i] for i in rows], subset[rows].tolist(),
                features_reference(store, path), store.params, split_params,
                finding_rows[rows]), path, memo=False)
        atomic_write_json(examples_path, [n for n, s in zip(names, subset) if s == "test"])
        store.close()
    line = count_line(finding_rows, PROG)
    if line:
        log(line)
    if store.legacy:
        log(f"{PROG}: note: {features_path} is a single-pickle features file (cxr-features/1): "
            f"stage 5 will load all of it into memory; re-run stage 3 (cxr-extract-features, "
            f"same arguments) to convert it into shards, without recomputing")
    return subset.tolist(), counts, labels, groups


def get_args_parser():
    parser = ArgumentParser(
        prog=PROG,
        description="Split labelled image features into training/testing sets by report_id "
                    "(no report or patient in two splits), stratified by label.")
    parser.add_argument("descriptions", help="images-description.json from stage 2")
    parser.add_argument("features", help="transfer_features.pickle (the features index) from "
                                         "stage 3")
    parser.add_argument("training", help="output training.pickle (train + validation subsets)")
    parser.add_argument("testing", help="output testing.pickle")
    parser.add_argument("examples", help="output examples.json (names of the test images)")
    parser.add_argument("--test-fraction", type=fraction_type, default=0.1,
                        help="fraction of the labelled images held out for testing")
    parser.add_argument("--validation-fraction", type=fraction_type, default=0.1,
                        help="fraction of the remaining (training) images marked 'validation' "
                             "for early stopping")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed of the split")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    subset, counts, labels, groups = prepare(args.descriptions, args.features, args.training,
                                     args.testing, args.examples, args.test_fraction,
                                     args.validation_fraction, args.seed)
    log(count_table(labels, subset))
    reports = {part: len({g for g, s in zip(groups, subset) if s == part})
               for part in ("train", "validation", "test")}
    log(f"reports (groups): {fmt_count(reports['train'])} train, "
        f"{fmt_count(reports['validation'])} validation, {fmt_count(reports['test'])} test")
    log(f"cxr-prepare-examples: {fmt_count(counts['labelled'])} labelled images split; "
        f"dropped {fmt_count(counts['unlabelled'])} unlabelled, "
        f"{fmt_count(counts['no_features'])} described without features, "
        f"{fmt_count(counts['no_description'])} features without a description; "
        f"{elapsed_since(start)}")
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
