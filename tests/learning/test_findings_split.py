"""Stage 4 carries each image's finding labels into the split (learning/train/findings.py)."""
import numpy as np

from learning import safe_pickle
from learning.store.splits import load_pair
from scraper.findings import FINDINGS
from scraper.schema import make_record
from tests.learning.test_learning_examples_preparing import run_stage, write_inputs


def finding_records(n=40):
    """Normal images (findings [] implied), Effusion, Effusion|Mass, and abnormal images whose
    findings are not known (no finding_labels field)."""
    records = []
    for i in range(n):
        kind = i % 4
        fields = {"label": "normal" if kind == 0 else "abnormal", "report_id": f"p{i}"}
        if kind == 1:
            fields["finding_labels"] = ["Effusion"]
        elif kind == 2:
            fields["finding_labels"] = ["Effusion", "Mass"]
        records.append(make_record(f"i{i:03d}.png", "folder", **fields))
    return records


def test_split_carries_finding_labels(tmp_path, capsys):
    records = finding_records()
    descriptions, features, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    code, (training, testing, _) = run_stage(tmp_path, descriptions, features)
    assert code == 0
    assert ("cxr-prepare-examples: finding labels known for 30 of 40 images: Effusion 20, "
            "Mass 10") in capsys.readouterr().err
    train, test = load_pair(training, testing)
    effusion, mass = FINDINGS.index("Effusion"), FINDINGS.index("Mass")
    for split in (train, test):
        assert split["finding_names"] == list(FINDINGS)
        matrix = split["finding_labels"]
        assert matrix.dtype == np.int8 and matrix.shape == (len(split["names"]), 14)
        for name, row in zip(split["names"], matrix):
            kind = int(name[1:4]) % 4
            expected = np.zeros(14, np.int8) if kind != 3 else np.full(14, -1, np.int8)
            expected[effusion] = 1 if kind in (1, 2) else expected[effusion]
            expected[mass] = 1 if kind == 2 else expected[mass]
            assert row.tolist() == expected.tolist(), name


def test_old_split_files_read_as_without_finding_labels(tmp_path):
    records = finding_records(20)
    descriptions, features, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    _, (training, testing, _) = run_stage(tmp_path, descriptions, features)
    for path in (training, testing):
        data = safe_pickle.load(path)
        del data["finding_names"], data["finding_labels"]
        safe_pickle.dump(data, path)
    train, _ = load_pair(training, testing)
    assert train["finding_names"] is None and train["finding_labels"] is None


def test_no_finding_line_for_a_normal_abnormal_data_set(tmp_path, capsys):
    records = [make_record(f"i{i:03d}.png", "folder", report_id=f"p{i}",
                           label="normal" if i % 2 else "abnormal") for i in range(20)]
    descriptions, features, _ = write_inputs(tmp_path, records, [r["name"] for r in records])
    code, (training, testing, _) = run_stage(tmp_path, descriptions, features)
    assert code == 0 and "finding labels" not in capsys.readouterr().err
    train, _ = load_pair(training, testing)
    assert (train["finding_labels"] != 1).all()     # normals 0 (implied), the rest unknown
