"""Issue 18 (round 3): hostile or careless inputs to stages 1-2, one test per failure class.

Each test names the class it closes; variants are tried, not only the reported instance.
Real files, real DICOMs (pydicom/GDCM), real subprocesses with a memory cap and a timeout.
"""
import io
import json
import os
import struct
import time
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from scraper import dicom_checks, fileio, phi
from scraper.cli import UserError, run_main
from scraper.folder import import_folder
from scraper.schema import normalize_modality, normalize_view
from scraper.scrape import main as scrape_main
from tests.scraper.dicom_factory import compress, dataset, write_dicom
from tests.scraper.fake_openi import FakeOpenI
from tests.scraper.test_folder import failures_of, nih, records_by_name
from tests.scraper.test_hostile import run_isolated

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "demo", "nih-24")
PIXELS = (np.arange(64 * 64).reshape(64, 64) * 7) % 4096


def scrape(argv):
    """cxr-scrape in this process: (exit code, stderr lines)."""
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_main(scrape_main, "cxr-scrape", [str(a) for a in argv])
    return code, err.getvalue().splitlines()


def everything_written(data):
    """Every byte stage 2 wrote under `data`, file names included, as lower-case text."""
    texts = []
    for root, _, names in os.walk(data):
        for name in names:
            texts.append(name.lower())
            with open(os.path.join(root, name), "rb") as handle:
                texts.append(handle.read().decode("utf-8", "replace").lower())
    return "\n".join(texts)


# ---- PHI: one masking function for every string that leaves stage 2 -------------------------

def test_mask_covers_short_identifiers_as_tokens():
    ds = Dataset()
    ds.PatientID, ds.PatientName = "042", "Li^Wu"
    ds.SOPInstanceUID = "1.2.3.4.5"
    mask = phi.IdentifierMask([ds])
    assert mask("/x/042/IM1.dcm") == "/x/[PatientID]/IM1.dcm"
    assert mask("/x/pt042_Li_Wu.dcm") == "/x/pt[PatientID]_[PatientName].dcm"
    assert mask("/x/LiWu/wu-li/1.2.3.4.5.dcm") == \
        "/x/[PatientName]/[PatientName]/[SOPInstanceUID].dcm"
    assert mask("/x/1042/Lisa/Wulf.dcm") == "/x/1042/Lisa/Wulf.dcm"  # inside longer tokens: kept
    assert mask("/x/LI/wu.dcm") == "/x/[PatientName]/[PatientName].dcm"  # any case
    # free text (a whole message): short IDs only as pieces of paths, counts stay counts
    ds.PatientID = "2"
    mask = phi.IdentifierMask([ds])
    assert mask("2 saved, 1 failed (e.g. 'x/2/IM2.dcm', 2_a.dcm)") == (  # IM2: as "pt042"
        "2 saved, 1 failed (e.g. 'x/[PatientID]/IM[PatientID].dcm', [PatientID]_a.dcm)")
    assert mask("2", path=True) == mask("2") == "[PatientID]"


def test_no_identifier_leaves_stage_2_in_records_failures_or_stderr(tmp_path):
    """(a) a duplicate's reason named the other file's path with its PatientID; (b) IDs of
    under 4 characters were never masked; (c) the 'skipped (e.g. PATH)' line showed a path."""
    src = tmp_path / "src"
    patients = {"PHIPID7777": dict(PatientID="PHIPID7777", PatientName="DOE^JANE"),
           "042": dict(PatientID="042", PatientName="Li^Wu"),
           "PXQ777Z": dict(PatientID="PXQ777Z", PatientName="ROE^RICHARD")}
    for folder, tags in patients.items():
        (src / folder).mkdir(parents=True)
    first = write_dicom(src / "PHIPID7777" / "IM1.dcm", PIXELS, **patients["PHIPID7777"])
    duplicate = dataset(PIXELS, **patients["PHIPID7777"])
    duplicate.SOPInstanceUID = duplicate.file_meta.MediaStorageSOPInstanceUID = \
        first.SOPInstanceUID
    duplicate.save_as(src / "PHIPID7777" / "IM2.dcm", enforce_file_format=True)
    write_dicom(src / "042" / "Li_Wu_042.dcm", PIXELS, ViewPosition="PA", **patients["042"])
    write_dicom(src / "PXQ777Z" / "PXQ777Z_extra.dcm", PIXELS, **patients["PXQ777Z"])
    labels = tmp_path / "labels.csv"
    labels.write_text("image,label\nPHIPID7777/IM1.dcm,normal\nPHIPID7777/IM2.dcm,abnormal\n"
                      "042/Li_Wu_042.dcm,abnormal\n042/missing_042.dcm,normal\n")
    data = tmp_path / "data"
    code, err = scrape([data, "--source", "folder", "--images", src, "--labels", labels,
                        "--no-progress"])
    assert code == 0, err
    records = list(records_by_name(data).values())
    assert len(records) == 2 and len(failures_of(data)) == 1
    assert "a duplicate" in failures_of(data)[0]["reason"]
    secrets = ["phipid7777", "042", "li", "wu", "doe", "jane", "pxq777z", "roe", "richard"]
    written = everything_written(data)
    for text in (written, "\n".join(err).lower()):
        tokens = set(__import__("re").findall(r"[a-z]+|[0-9]+", text))
        assert not [s for s in secrets if s in tokens or (len(s) >= 4 and s in text)], text
    pa = next(r for r in records if r["view"] == "PA")
    assert pa["url"].endswith("/[PatientID]/[PatientName]_[PatientID].dcm")
    assert pa["modality"] == "DX" and pa["dicom"]["modality"] == "DX"


def test_views_and_modalities_are_a_vocabulary_never_raw_text():
    assert [normalize_view(v) for v in ("PA", " pa ", "LL", "RAO", "LLD", "AP supine", "",
                                        None, "Dr. Li's view", "<script>")] == [
        "PA", "PA", "lateral", "oblique", "decubitus", "AP", None, None, "other", "other"]
    assert [normalize_modality(m) for m in ("DX", "cr", " OT", "", None, "SMITH^J")] == [
        "DX", "CR", "OT", None, None, "other"]


def pngs(tmp_path, *names):
    """tmp_path/src holding a small real X-ray under each name."""
    src = tmp_path / "src"
    src.mkdir()
    for index, name in enumerate(names):
        nih(index).save(src / name)
    return src


def test_csv_view_column_is_normalised(tmp_path):
    src = pngs(tmp_path, "a.png", "b.png")
    labels = tmp_path / "l.csv"
    labels.write_text("image,label,view\na.png,0,posteroanterior\nb.png,1,=HYPERLINK(\"x\")\n")
    import_folder(tmp_path / "d", src, labels, progress=False)
    assert {n: r["view"] for n, r in records_by_name(tmp_path / "d").items()} == {
        "a.png": "PA", "b.png": "other"}


# ---- data loss: temp and lock files never write through a link ------------------------------

def test_open_nofollow_refuses_a_hard_link_before_truncating(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    os.link(victim, tmp_path / "out.log")
    for append in (True, False):
        with pytest.raises(UserError, match="2 hard links"):
            fileio.open_nofollow(tmp_path / "out.log", append=append)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("plant", ["hardlink", "symlink", "fifo", "folder"])
def test_planted_lock_file_is_never_written(tmp_path, plant):
    data = tmp_path / "data"
    data.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    lock = data / fileio.LOCK_FILE
    {"hardlink": lambda: os.link(victim, lock), "symlink": lambda: lock.symlink_to(victim),
     "fifo": lambda: os.mkfifo(lock), "folder": lambda: lock.mkdir()}[plant]()
    result = run_isolated(
        "import sys; from scraper.cli import run_main; from scraper.scrape import main; "
        f"sys.exit(run_main(main, 'cxr-scrape', [{str(data)!r}, '--source', 'folder', "
        f"'--images', {os.path.join(DEMO, 'images')!r}, '--no-progress']))")
    assert result is not None, "hung"
    code, err = result
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"{lock}" in err and "Traceback" not in err
    assert victim.read_bytes() == b"precious"
    assert not (data / "images").exists()


def test_folder_lock_nests_in_one_process_and_refuses_another(tmp_path):
    with fileio.folder_lock(tmp_path, "outer"):
        with fileio.folder_lock(tmp_path, "inner"):  # same process: fine
            pass
        result = run_isolated("from scraper.fileio import folder_lock\n"
                              f"with folder_lock({str(tmp_path)!r}, 'other'): pass")
        assert result is not None and result[0] == 1
        assert f"process {os.getpid()} outer" in result[1]
    with fileio.folder_lock(tmp_path, "again"):  # released after the outer block
        assert (tmp_path / fileio.LOCK_FILE).read_text() == f"{os.getpid()} again\n"


# ---- hangs and unbounded reads: only bounded regular files are read -------------------------

@pytest.mark.parametrize("flag", ["--labels", "--boxes"])
@pytest.mark.parametrize("kind", ["fifo", "zero", "big"])
def test_csv_inputs_that_are_no_csv_get_one_line(tmp_path, flag, kind, monkeypatch):
    path = tmp_path / "in.csv"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as handle:  # sparse: 300 MB that take no disk
            handle.truncate(300 << 20)
    result = run_isolated(
        "import sys; from scraper.cli import run_main; from scraper.scrape import main; "
        f"sys.exit(run_main(main, 'cxr-scrape', [{str(tmp_path / 'd')!r}, '--source', "
        f"'folder', '--images', {os.path.join(DEMO, 'images')!r}, {flag!r}, {str(path)!r}, "
        f"'--no-progress']))", memory=1 << 30)
    assert result is not None, f"{kind} as {flag} hung"
    code, err = result
    expected = {"fifo": "is not a regular file (a FIFO/named pipe)",
                "zero": "is not a regular file (a character device)",
                "big": "more than the 268,435,456 allowed"}[kind]
    assert code == 1 and len(err.strip().splitlines()) == 1 and expected in err, err


def test_catastrophic_group_pattern_is_stopped_with_one_line(tmp_path):
    src = pngs(tmp_path, "a" * 40 + "!.png")
    start = time.monotonic()
    code, err = scrape([tmp_path / "d", "--source", "folder", "--images", src,
                        "--group-pattern", "(a+)+b", "--no-progress"])
    assert time.monotonic() - start < 30
    assert code == 1 and "backtracks catastrophically" in err[-1]
    assert not os.path.exists(tmp_path / "d" / "images-description.json")
    for pattern, message in (("(a){99999999999}", "invalid regular expression"),
                             ("(x)" * 300, "at most 500 allowed")):
        code, err = scrape([tmp_path / "d", "--source", "folder", "--images", src,
                            "--group-pattern", pattern])
        assert code == 2 and len(err) == 1 and message in err[0], err


# ---- DICOM: decoded sizes capped before decoding; a bad file is a listed failure ------------

def deflated_dicom(path, inflated_bytes):
    """A real Deflated Explicit VR Little Endian file whose dataset holds a private OB element
    of `inflated_bytes` zeros: tiny on disk, `inflated_bytes` once inflated. Built in a stream."""
    ds = dataset(PIXELS[:8, :8])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    _, meta_end = dicom_checks._file_meta_syntax(buffer.getvalue())
    head = buffer.getvalue()[:meta_end]
    body = zlib.decompress(buffer.getvalue()[meta_end:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [head, packer.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0,
                                             inflated_bytes))]
    zeros = bytes(1 << 20)
    for _ in range(inflated_bytes >> 20):
        out.append(packer.compress(zeros))
    out += [packer.compress(body), packer.flush()]  # (0009,1010) sorts before (0010,...)
    path.write_bytes(b"".join(out))


def test_deflated_bomb_is_refused_from_a_streamed_measure(tmp_path, monkeypatch):
    monkeypatch.setattr(dicom_checks, "MAX_INFLATED_BYTES", 16 << 20)
    src = tmp_path / "src"
    src.mkdir()
    deflated_dicom(src / "bomb.dcm", 64 << 20)
    assert os.path.getsize(src / "bomb.dcm") < 1_000_000  # 64 MB once inflated
    write_dicom(src / "good.dcm", PIXELS)
    summary = import_folder(tmp_path / "d", src, progress=False)
    assert (summary.saved, summary.failed) == (1, 1)
    assert failures_of(tmp_path / "d")[0]["reason"] == (
        "deflated DICOM inflates to more than 16,777,216 bytes: refused before decoding")


def test_deflated_bomb_in_a_capped_process_is_one_failure(tmp_path):
    """As reported (a few hundred KB inflating to GBs; 400 MB here), at the real cap
    (MAX_INFLATED_BYTES, 256 MB), in a process capped at 1.2 GB: one listed failure."""
    src = tmp_path / "src"
    src.mkdir()
    deflated_dicom(src / "bomb.dcm", 400 << 20)
    write_dicom(src / "good.dcm", PIXELS)
    result = run_isolated(
        "from scraper.folder import import_folder\n"
        f"s = import_folder({str(tmp_path / 'd')!r}, {str(src)!r}, progress=False)\n"
        "print(s.saved, s.failed)", timeout=120, memory=1200 << 20)
    assert result is not None and result[0] == 0, result
    assert "more than 268,435,456 bytes" in json.dumps(failures_of(tmp_path / "d"))


def patch_jpeg_size(path, width, height):
    """Rewrite the frame header (SOF) of a JPEG-compressed DICOM's codestream in place."""
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    at = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in
              dicom_checks._SOF_MARKERS)
    struct.pack_into(">HH", data, at + 5, height, width)
    ds.PixelData = bytes(data)
    ds.save_as(path)


def test_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_dicom(src / "big.dcm", PIXELS)
    compress(src / "big.dcm", "jpeg-lossless")
    patch_jpeg_size(src / "big.dcm", 40000, 40000)
    write_dicom(src / "j2k.dcm", PIXELS)
    compress(src / "j2k.dcm", "jpeg2000")
    ds = pydicom.dcmread(src / "j2k.dcm")
    ds.Rows = ds.Columns = 32  # the header says less than the codestream
    ds.save_as(src / "j2k.dcm")
    write_dicom(src / "good.dcm", PIXELS)
    compress(src / "good.dcm", "jpeg-ls")
    summary = import_folder(tmp_path / "d", src, progress=False)
    assert (summary.saved, summary.failed) == (1, 2)
    reasons = {f["name"]: f["reason"] for f in failures_of(tmp_path / "d")}
    assert reasons == {
        "big.dcm": "the compressed pixel data declares 40,000 x 40,000 pixels, the header "
                   "64 x 64: refused before decoding",
        "j2k.dcm": "the compressed pixel data declares 64 x 64 pixels, the header 32 x 32: "
                   "refused before decoding"}


def lut_item(**elements):
    item = Dataset()
    for keyword, value in elements.items():
        if keyword in ("LUTData", "LUTDescriptor"):  # US: their VR is ambiguous otherwise
            item.add_new(pydicom.datadict.tag_for_keyword(keyword), "US", value)
        else:
            setattr(item, keyword, value)
    return item


def two_frames_under_one(path):
    ds = dataset(PIXELS, NumberOfFrames=1)
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path, enforce_file_format=True)


def slope_abc(path):
    write_dicom(path, PIXELS, RescaleSlope="1", RescaleIntercept="0")
    raw = path.read_bytes()
    slope = b"\x28\x00\x53\x10DS"  # (0028,1053) RescaleSlope, explicit VR DS
    path.write_bytes(raw.replace(slope + b"\x02\x001 ", slope + b"\x04\x00abc "))


@pytest.mark.parametrize("make, reason", [
    (two_frames_under_one, "the pixel data holds 16,384 bytes but the header describes 8,192 "
                           "(64 x 64, 1 sample(s) of 16 bits, one frame); 2 frames' worth"),
    (lambda p: write_dicom(p, PIXELS, VOILUTSequence=Sequence([])), "VOILUTSequence is empty"),
    (lambda p: write_dicom(p, PIXELS, VOILUTSequence=Sequence([lut_item(LUTData=[0] * 10)])),
     "VOILUTSequence item without LUTDescriptor"),
    (lambda p: write_dicom(p, PIXELS, VOILUTSequence=Sequence([lut_item(
        LUTDescriptor=[4096, 0, 12], LUTData=[0, 1, 2])])),
     "VOILUTSequence LUTData has 3 entries, its LUTDescriptor declares 4,096"),
    (lambda p: write_dicom(p, PIXELS, VOILUTSequence=Sequence([lut_item(
        LUTDescriptor=[0, 0, 12], LUTData=[0, 1, 2])])),
     "VOILUTSequence LUTData has 3 entries, its LUTDescriptor declares 65,536"),
    (lambda p: write_dicom(p, PIXELS, ModalityLUTSequence=Sequence([lut_item(
        LUTDescriptor=[4096, 0, 12], ModalityLUTType="HU")])),
     "ModalityLUTSequence item without LUTData"),
    (slope_abc, "invalid RescaleSlope 'abc': not a number"),
])
def test_each_dicom_fault_is_one_listed_failure_and_the_import_goes_on(tmp_path, make, reason):
    src = tmp_path / "src"
    src.mkdir()
    write_dicom(src / "good.dcm", PIXELS)
    make(src / "bad.dcm")
    summary = import_folder(tmp_path / "d", src, progress=False)
    assert (summary.saved, summary.failed) == (1, 1)
    assert [(f["name"], f["reason"]) for f in failures_of(tmp_path / "d")] == [("bad.dcm",
                                                                                reason)]


# ---- careless inputs: master CSVs, ':' in names, an Open-i run that saves nothing ----------

def test_master_labels_csv_rows_without_an_image_are_not_failures(tmp_path):
    """Issue 17 #6: 24 images with a 1,000-row CSV: '24 saved, 976 ... not in the folder', no
    failures file."""
    labels = tmp_path / "labels.csv"
    rows = open(os.path.join(DEMO, "labels.csv")).read().splitlines()
    extra = [f"{i:08d}_000.png,0,No Finding,PA,{i},50,F" for i in range(976)]
    labels.write_text("\n".join(rows + extra) + "\n")
    code, err = scrape([tmp_path / "d", "--source", "folder", "--images",
                        os.path.join(DEMO, "images"), "--labels", labels,
                        "--label-column", "abnormal", "--no-progress"])
    assert code == 0
    assert not (tmp_path / "d" / "images-failures.json").exists()
    assert any(line.startswith("976 row(s) of labels.csv name images that are not in")
               for line in err)
    assert "24 saved, 0 already present, 0 failed, 0 skipped, 0 unlabelled, 976 listed in the "\
           "CSV but not in the folder" in err[-1]


def test_colon_in_a_csv_path_is_a_file_name_and_bad_paths_are_row_failures(tmp_path):
    src = pngs(tmp_path, "scan:1.png", "b.png")
    labels = tmp_path / "l.csv"
    labels.write_text("image,label\nscan:1.png,0\nb.png,1\nC:/x/c.png,1\n../d.png,0\n")
    summary = import_folder(tmp_path / "d", src, labels, progress=False)
    assert (summary.saved, summary.failed) == (2, 2)
    assert sorted(records_by_name(tmp_path / "d")) == ["b.png", "scan:1.png"]
    assert [f["reason"] for f in failures_of(tmp_path / "d")] == [
        "listed in l.csv row 5: invalid image path (must be relative to the images folder, "
        "without '..')",
        "listed in l.csv row 4: invalid image path (must be relative to the images folder, "
        "without '..')"]


def test_open_i_run_that_saves_nothing_exits_non_zero(tmp_path):
    with FakeOpenI(n_records=2) as server:
        for name in server.names:
            server.fault(name, "404")
        code, err = scrape([tmp_path, "--base-url", server.base_url, "--retries", "0",
                            "--no-progress"])
    assert code == 1 and err[-1].startswith(f"cxr-scrape: error: nothing saved from Open-i "
                                            f"{server.base_url}: 2 failed, 0 skipped; first: ")
