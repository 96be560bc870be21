"""DICOM through the folder source: pixels against hand-computed windows, failures, privacy."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from scraper import dicom, phi
from scraper.cli import run_main
from scraper.folder import import_folder
from scraper.scrape import main as scrape_main
from tests.scraper.dicom_factory import compress, dataset, write_dicom
from tests.scraper.test_folder import failures_of, nih, records_by_name

SIZE = 128


def xray(n, bits=12):
    """Demo NIH X-ray n as (128, 128) ints spanning 0 .. 2**bits - 1."""
    return np.asarray(nih(n, SIZE), dtype=np.int64) * (2 ** bits - 1) // 255


def one_record(data):
    records = list(records_by_name(data).values())
    assert len(records) == 1, records
    return records[0]


def png_of(data, record):
    return np.asarray(Image.open(os.path.join(data, record["image"])))


def imported(tmp_path, files, **kwargs):
    """Import tmp_path/src into tmp_path/data; returns (data dir, records by name, summary)."""
    data = tmp_path / "data"
    summary = import_folder(data, tmp_path / "src", progress=False, **kwargs)
    return data, records_by_name(data), summary


@pytest.fixture
def src(tmp_path):
    (tmp_path / "src").mkdir()
    return tmp_path / "src"


def test_monochrome1_12_bit_with_a_window(src, tmp_path):
    pixels = xray(0)
    pixels[0, :5] = [1548, 2048, 2547, 0, 4095]
    write_dicom(src / "a.dcm", pixels, photometric="MONOCHROME1", WindowCenter=2048,
                WindowWidth=1000)
    data = tmp_path / "data"
    assert import_folder(data, src, progress=False).saved == 1
    record = one_record(data)
    out = png_of(data, record)
    assert out.shape == (SIZE, SIZE) and out.dtype == np.uint8
    # LINEAR window (PS3.3 C.11.2.1.2): y = (x - 2047.5) / 999 + 0.5, clipped; then inverted:
    # 1548 -> 0.0 -> 255; 2048 -> 0.5005 -> 1 - 0.5005 = 0.4995 * 255 = 127.4 -> 127; 2547 -> 1 -> 0
    assert out[0, :5].tolist() == [255, 127, 0, 255, 0]
    expected = 1 - np.clip((pixels - 2047.5) / 999 + 0.5, 0, 1)
    np.testing.assert_array_equal(out, np.round(expected * 255).astype(np.uint8))
    assert record["dicom"]["window"] == {"from": "header WindowCenter/WindowWidth",
                                         "center": 2048.0, "width": 1000.0, "function": "LINEAR"}
    assert record["dicom"]["inverted"] is True and record["dicom"]["bits_stored"] == 12
    assert record["name"].startswith("dcm-") and record["name"].endswith(".png")


def test_monochrome2_16_bit_rescale_before_the_window(src, tmp_path):
    pixels = xray(1, bits=16)
    pixels[0, :4] = [2048, 0, 4048, 3048]
    write_dicom(src / "b.dcm", pixels, bits_stored=16, RescaleSlope=0.5, RescaleIntercept=-1024,
                WindowCenter=0, WindowWidth=2001)
    data, _, _ = imported(tmp_path, None)
    out = png_of(data, one_record(data))
    # value = 0.5 * stored - 1024; y = (value + 0.5) / 2000 + 0.5: 2048 -> 0 -> 0.50025 -> 128;
    # 0 -> -1024 -> 0; 4048 -> 1000 -> 1.00025 -> 255; 3048 -> 500 -> 0.75025 -> 191.3 -> 191
    assert out[0, :4].tolist() == [128, 0, 255, 191]
    assert one_record(data)["dicom"]["rescale"] == {"slope": 0.5, "intercept": -1024.0}


def test_signed_pixels_padding_and_the_percentile_window(src, tmp_path):
    pixels = xray(2) - 2048                  # signed 12-bit: -2048 .. 2047
    pixels[:8, :] = -2048                    # padding: a border outside the exposed field
    pixels[8, :3] = [-1000, 0, 1000]
    write_dicom(src / "c.dcm", pixels, signed=True, PixelPaddingValue=-2048)
    data, _, _ = imported(tmp_path, None)
    record = one_record(data)
    out = png_of(data, record)
    inside = pixels[pixels != -2048]
    low, high = np.percentile(inside, [0.5, 99.5])
    expected = np.round(np.clip((pixels - low) / (high - low), 0, 1) * 255)
    expected[pixels == -2048] = 0
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert (out[:8] == 0).all() and record["dicom"]["padding_pixels"] >= 8 * SIZE
    window = record["dicom"]["window"]
    assert window["from"].startswith("percentiles 0.5-99.5")
    assert window["center"] == pytest.approx((low + high) / 2)


def test_10_bit_stored_in_16_masks_the_unused_high_bits(src, tmp_path):
    pixels = xray(3, bits=10)
    pixels[0, :2] = [0x3FF | 0xF000, 512 | 0xA800]   # garbage above bit 9 (overlay bits)
    write_dicom(src / "d.dcm", pixels.astype(np.uint16), bits_stored=10, WindowCenter=512,
                WindowWidth=1024, VOILUTFunction="LINEAR_EXACT")
    data, _, _ = imported(tmp_path, None)
    out = png_of(data, one_record(data))
    # LINEAR_EXACT: y = (x - 512) / 1024 + 0.5: 1023 -> 0.999 -> 255 (254.75); 512 -> 0.5 -> 128
    assert out[0, :2].tolist() == [255, 128]


def test_voi_lut_sequence_wins_over_the_window(src, tmp_path):
    from pydicom.dataset import Dataset
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]  # entries, first mapped value, bits per entry
    lut.add_new(0x00283006, "US", ((np.arange(4096) >= 2000) * 4095).tolist())  # LUTData: a step
    pixels = xray(4)
    pixels[0, :2] = [1999, 2000]
    write_dicom(src / "e.dcm", pixels, VOILUTSequence=[lut], WindowCenter=100, WindowWidth=10)
    data, _, _ = imported(tmp_path, None)
    record = one_record(data)
    assert png_of(data, record)[0, :2].tolist() == [0, 255]
    assert record["dicom"]["window"] == {"from": "VOI LUT sequence"}


@pytest.mark.parametrize("syntax", ["jpeg-lossless", "jpeg2000", "jpeg-ls", "rle"])
def test_compressed_syntaxes_decode_to_the_same_png(src, tmp_path, syntax):
    pixels = xray(5)
    write_dicom(src / "raw.dcm", pixels, WindowCenter=2000, WindowWidth=3000, PatientID="P1")
    write_dicom(src / "packed.dcm", pixels, WindowCenter=2000, WindowWidth=3000, PatientID="P1")
    uid = compress(src / "packed.dcm", syntax)
    assert uid.is_compressed
    data, records, summary = imported(tmp_path, None)
    assert (summary.saved, summary.failed) == (2, 0)
    by_syntax = {r["dicom"]["transfer_syntax"]: png_of(data, r) for r in records.values()}
    assert set(by_syntax) == {"1.2.840.10008.1.2.1", str(uid)}
    np.testing.assert_array_equal(by_syntax[str(uid)], by_syntax["1.2.840.10008.1.2.1"])


def test_no_preamble_and_no_extension_is_found_by_content(src, tmp_path):
    pixels = xray(6)
    write_dicom(src / "IM0001", pixels, preamble=False, WindowCenter=2048, WindowWidth=4096)
    (src / "README").write_text("exported by PACS\n")
    (src / "junk").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)) * 4)  # looks like a tag
    index = dataset(np.zeros((1, 1), dtype=int))  # a DICOMDIR: an export's index, no image
    index.file_meta.MediaStorageSOPClassUID = index.SOPClassUID = dicom.MEDIA_DIRECTORY
    del index.PixelData
    index.save_as(src / "DICOMDIR", enforce_file_format=True)
    data, _, summary = imported(tmp_path, None)
    assert (summary.saved, summary.failed, summary.skipped) == (1, 0, 3)
    out = png_of(data, one_record(data))
    expected = np.clip((pixels - 2047.5) / 4095 + 0.5, 0, 1)
    np.testing.assert_array_equal(out, np.round(expected * 255).astype(np.uint8))


def test_colour_dicom_becomes_gray(src, tmp_path):
    rgb = np.asarray(nih(7, SIZE).convert("RGB"), dtype=np.uint8).copy()
    rgb[..., 0] = 255 - rgb[..., 0]
    write_dicom(src / "rgb.dcm", rgb, photometric="RGB")
    data, _, _ = imported(tmp_path, None)
    out = png_of(data, one_record(data)).astype(int)
    reference = np.asarray(Image.fromarray(rgb).convert("L"), dtype=int)
    assert np.abs(out - reference).max() <= 1


def test_bad_dicoms_are_failures_with_reasons(src, tmp_path):
    from pydicom.uid import HTJ2K
    from pydicom.encaps import encapsulate
    pixels = xray(8)
    write_dicom(src / "good.dcm", pixels)
    write_dicom(src / "frames.dcm", np.stack([pixels, pixels]))
    write_dicom(src / "ct.dcm", pixels, Modality="CT")
    ds = write_dicom(src / "nopixels.dcm", pixels)
    del ds.PixelData
    ds.save_as(src / "nopixels.dcm", enforce_file_format=True)
    ds = write_dicom(src / "htj2k.dcm", pixels)
    ds.file_meta.TransferSyntaxUID = HTJ2K
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
    ds.save_as(src / "htj2k.dcm", enforce_file_format=True)
    write_dicom(src / "truncated.dcm", pixels)
    whole = (src / "truncated.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(whole[:len(whole) // 2])
    (src / "copy.dcm").write_bytes((src / "good.dcm").read_bytes())
    (src / "text.dcm").write_text("not a DICOM at all\n")
    data, records, summary = imported(tmp_path, None)
    assert (summary.saved, summary.failed) == (1, 7)
    reasons = {f["name"]: f["reason"] for f in failures_of(data)}
    assert reasons["frames.dcm"].startswith("multi-frame image (2 frames)")
    assert reasons["ct.dcm"].startswith("modality CT is not a projection radiograph")
    assert reasons["nopixels.dcm"].startswith("no pixel data")
    assert reasons["htj2k.dcm"] == ("the compressed pixel data declares 0 x 0 pixels, the "
                                    "header 128 x 128: refused before decoding")
    assert reasons["truncated.dcm"].startswith("the pixel data holds 16,026 bytes but the "
                                               "header describes 32,768 (128 x 128")
    assert reasons["text.dcm"].startswith("not a DICOM file")
    assert reasons["good.dcm"] == "the same DICOM image (SOPInstanceUID) as copy.dcm: a duplicate"


def test_nothing_imported_exits_non_zero(src, tmp_path, capsys):
    (src / "text.dcm").write_text("not a DICOM\n")
    write_dicom(src / "frames.dcm", np.stack([xray(0), xray(1)]))
    code = run_main(scrape_main, "cxr-scrape", [str(tmp_path / "data"), "--source", "folder",
                                                "--images", str(src), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "0 saved, 0 already present, 2 failed" in err[-2]
    assert err[-1].startswith(f"cxr-scrape: error: nothing imported from {src}: 2 failed")
    assert len(failures_of(tmp_path / "data")) == 2


PHI = {"PatientName": "DOE^JANE^Q", "PatientID": "PID7734521", "PatientBirthDate": "19450317",
       "AccessionNumber": "ACC99887766", "InstitutionName": "Saint Example Hospital",
       "ReferringPhysicianName": "SMITH^JOHN", "OtherPatientIDs": "MRN5550123",
       "PatientAddress": "12 Elm Street Springfield", "StudyID": "STUDY4242"}


def test_no_phi_anywhere_in_the_data_folder(src, tmp_path):
    (src / "PID7734521").mkdir()
    datasets = [write_dicom(src / "PID7734521" / f"{i}.dcm", xray(i), ViewPosition=view,
                            **PHI) for i, view in enumerate(("PA", "LL"))]
    write_dicom(src / "PID7734521" / "frames.dcm", np.stack([xray(0), xray(1)]), **PHI)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"image,label\nPID7734521/0.dcm,abnormal\n"
                      f"{datasets[1].SOPInstanceUID},normal\nPID7734521/frames.dcm,normal\n")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,finding,x,y,w,h\n{datasets[0].SOPInstanceUID},Mass,10,20,30,40\n")
    data, records, summary = imported(tmp_path, None, labels_csv=labels, boxes_csv=boxes)
    assert (summary.saved, summary.failed) == (2, 1)
    by_view = {r["view"]: r for r in records.values()}
    assert sorted(by_view) == ["PA", "lateral"]
    assert (by_view["PA"]["label"], by_view["lateral"]["label"]) == ("abnormal", "normal")
    assert by_view["PA"]["boxes"] == [{"finding": "Mass", "x": 10.0, "y": 20.0, "w": 30.0,
                                       "h": 40.0}]
    # one patient, one salted group; the path's PatientID is masked in the url
    assert by_view["PA"]["report_id"] == by_view["lateral"]["report_id"]
    assert by_view["PA"]["report_id"].startswith("patient-")
    assert by_view["PA"]["url"].endswith("[PatientID]/0.dcm")
    secrets = list(PHI.values()) + ["DOE", "JANE", "SMITH", "Springfield"]
    for ds in datasets:
        secrets += [str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]
    files = [os.path.join(root, name) for root, _, names in os.walk(data) for name in names]
    assert len(files) >= 5  # description, failures, salt, two PNGs
    for path in files + [data / "images-description.json"]:
        content = open(path, "rb").read().lower()
        found = [s for s in secrets if s.lower().encode() in content]
        assert not found, f"{path} holds {found}"
        assert not any(s.lower() in os.path.basename(path).lower() for s in secrets)


def test_groups_by_patient_or_study_and_reruns_convert_nothing(src, tmp_path):
    study = "1.2.826.0.1.3680043.8.498.1"
    write_dicom(src / "a.dcm", xray(0), PatientID="P1", StudyInstanceUID=study)
    write_dicom(src / "b.dcm", xray(1), PatientID="P1")
    write_dicom(src / "c.dcm", xray(2), PatientID="P2", StudyInstanceUID=study)
    data, records, _ = imported(tmp_path, None)
    groups = {os.path.basename(r["url"]): r["report_id"] for r in records.values()}
    assert groups["a.dcm"] == groups["b.dcm"] != groups["c.dcm"]
    salt = (data / phi.SALT_FILE).read_text().strip()
    assert groups["a.dcm"] == phi.salted_id(salt, "patient", "P1")
    before = {n: os.stat(data / "images" / n).st_mtime_ns for n in os.listdir(data / "images")}
    summary = import_folder(data, src, dicom_group="study", progress=False)
    assert (summary.saved, summary.present) == (0, 3)
    assert before == {n: os.stat(data / "images" / n).st_mtime_ns for n in before}
    groups = {os.path.basename(r["url"]): r["report_id"] for r in records_by_name(data).values()}
    assert groups["a.dcm"] == groups["c.dcm"] != groups["b.dcm"]
    assert groups["a.dcm"].startswith("study-")


def test_a_salt_per_data_folder(src, tmp_path):
    write_dicom(src / "a.dcm", xray(0), PatientID="P1")
    first = import_folder(tmp_path / "d1", src, progress=False) and one_record(tmp_path / "d1")
    second = import_folder(tmp_path / "d2", src, progress=False) and one_record(tmp_path / "d2")
    assert first["report_id"] != second["report_id"] and first["name"] != second["name"]
    assert json.loads(json.dumps(first["dicom"])) == first["dicom"]


def test_the_shared_pixel_limit_applies_before_decoding(src, tmp_path):
    from scraper.images import max_pixels, set_max_pixels
    write_dicom(src / "big.dcm", xray(0))
    write_dicom(src / "ok.dcm", xray(1)[:50, :50])
    before = max_pixels()
    set_max_pixels(10_000)
    try:
        data, _, summary = imported(tmp_path, None)
    finally:
        set_max_pixels(before)
    assert (summary.saved, summary.failed) == (1, 1)
    assert failures_of(data)[0]["reason"] == (
        "image is 128 x 128 = 16,384 pixels, more than the 10,000 allowed (raise "
        "--max-image-pixels if it is real)")
