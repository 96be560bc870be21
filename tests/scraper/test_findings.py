"""The finding vocabulary (scraper/findings.py) and stage 2's finding_labels field."""
import argparse
import os

import pytest

from scraper import findings
from scraper.cli import UserError
from scraper.folder import import_folder
from scraper.schema import make_record, mesh_labels, validate_record
from scraper.scrape import main as scrape_main
from tests.scraper.test_folder import NIH, nih, records_by_name


def test_nih_names_synonyms_and_no_finding():
    assert len(findings.FINDINGS) == 14
    assert findings.parse_labels("Pneumonia|Infiltration|Atelectasis") == (
        ["Atelectasis", "Infiltration", "Pneumonia"], [])     # vocabulary order
    assert findings.parse_labels("No Finding") == ([], [])
    assert findings.parse_labels("  ") is None                  # empty: not known
    assert findings.parse_labels("infiltrate; pleural effusion|Pleural Thickening|Fracture") \
        == (["Effusion", "Infiltration", "Pleural_Thickening"], ["Fracture"])
    assert findings.canonical("PLEURAL-THICKENING") == "Pleural_Thickening"
    assert findings.canonical("Opacity") is None


def test_openi_mesh_terms_map_literally():
    assert findings.from_mesh(["Pleural Effusion/right", "Cardiomegaly/mild",
                               "Pulmonary Atelectasis/base/left"]) == [
        "Atelectasis", "Cardiomegaly", "Effusion"]
    assert findings.from_mesh(["Thickening/pleura/apex", "Hernia, Hiatal/large",
                               "Hydropneumothorax"]) == ["Effusion", "Pneumothorax",
                                                         "Pleural_Thickening", "Hernia"]
    # no NIH counterpart: nothing guessed; subcutaneous emphysema is not lung emphysema
    assert findings.from_mesh(["Opacity/lung/base", "Airspace Disease", "Calcified Granuloma",
                               "Subcutaneous Emphysema", "Thickening/bronchi"]) == []
    assert mesh_labels(["normal"]) == {"label": "normal", "finding_labels": []}
    assert mesh_labels(["No Indexing"]) == {"label": None}     # unknown: no finding_labels
    assert mesh_labels(["Nodule/lung", "Opacity"]) == {"label": "abnormal",
                                                        "finding_labels": ["Nodule"]}


def test_findings_flag_type():
    assert findings.findings_type("all") == "all"
    assert findings.findings_type("effusion, Pneumonia,effusion") == ("Effusion", "Pneumonia")
    for text, message in (("Effusion,Fracture", "invalid finding 'Fracture'; use 'all' or "
                                                "names from the vocabulary: Atelectasis"),
                          (",", "no finding named")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            findings.findings_type(text)


def test_schema_validates_finding_labels():
    record = make_record("a.png", "folder", label="abnormal", finding_labels=["Mass", "Nodule"])
    assert record["finding_labels"] == ["Mass", "Nodule"]
    for value, message in ((["Fracture"], "'Fracture', not a vocabulary finding"),
                           (["Nodule", "Mass"], "once, in the vocabulary's order"),
                           ("Mass", "must be a list")):
        with pytest.raises(ValueError, match=message):
            validate_record(dict(record, finding_labels=value))
    with pytest.raises(ValueError, match="labelled normal but finding_labels names Mass"):
        validate_record(dict(record, label="normal", finding_labels=["Mass"]))
    validate_record(dict(record, label="normal", finding_labels=[]))


def test_nih_csv_finding_labels_column_is_read(tmp_path):
    data = tmp_path / "data"
    import_folder(data, os.path.join(NIH, "images"), os.path.join(NIH, "labels.csv"),
                  label_column="abnormal", group_column="patient_id", progress=False)
    records = records_by_name(data)
    assert records["00000150_002.png"]["finding_labels"] == ["Atelectasis", "Infiltration",
                                                             "Pneumonia"]
    assert records["00000506_013.png"]["finding_labels"] == ["Effusion", "Pneumonia", "Edema"]
    normals = [r for r in records.values() if r["label"] == "normal"]
    assert len(normals) == 12 and all(r["finding_labels"] == [] for r in normals)


def _folder(tmp_path, rows, header="image,label,conditions"):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for k, row in enumerate(rows):
        nih(k).save(src / row.split(",")[0])
    labels = tmp_path / "labels.csv"
    labels.write_text(header + "\n" + "\n".join(rows) + "\n")
    return src, labels


def test_named_column_unknown_names_warned_and_empty_cells_unknown(tmp_path, capsys):
    src, labels = _folder(tmp_path, ["a.png,1,Infiltrate|Fracture", "b.png,0,No Finding",
                                     "c.png,1,", "d.png,0,", "e.png,1,Fracture"])
    data = tmp_path / "data"
    import_folder(data, src, labels, finding_column="conditions", progress=False)
    records = records_by_name(data)
    assert {name: r.get("finding_labels") for name, r in records.items()} == {
        "a.png": ["Infiltration"], "b.png": [], "c.png": None, "d.png": [], "e.png": []}
    assert ("warning: 2 finding name(s) in 'conditions' are not in the vocabulary and were "
            "left out: Fracture (2)") in capsys.readouterr().err


@pytest.mark.parametrize("rows, column, message", [
    (["a.png,1,Fracture", "b.png,1,Lung Opacity"], "conditions",
     "column 'conditions' names no finding of the vocabulary (e.g. 'Fracture'); known: "
     "Atelectasis"),
    (["a.png,0,Mass"], "conditions",
     "row 2 (image a.png) is labelled normal but its conditions names Mass"),
    (["a.png,0,Mass"], "diagnosis", "has no column 'diagnosis' (columns: image, label, "
                                    "conditions) (--finding-column)"),
])
def test_bad_finding_columns_are_one_line(tmp_path, rows, column, message):
    src, labels = _folder(tmp_path, rows)
    with pytest.raises(UserError, match=".*" + message.replace("(", r"\(").replace(")", r"\)")):
        import_folder(tmp_path / "data", src, labels, finding_column=column, progress=False)
    assert not (tmp_path / "data" / "images-description.json").exists()


def test_finding_column_flag_needs_labels(tmp_path, capsys):
    code = scrape_main_code([str(tmp_path / "d"), "--source", "folder", "--images", "x",
                             "--finding-column", "conditions"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "cxr-scrape: error: --finding-column needs --labels CSV"


def scrape_main_code(argv):
    from scraper.cli import run_main

    return run_main(scrape_main, "cxr-scrape", argv)
