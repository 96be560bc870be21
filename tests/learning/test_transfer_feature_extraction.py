"""Stage 3: features are the VGG16 conv base applied to preprocess(load_image), incrementally,
into a sharded store (an index pickle + .npy shards).

Random weights and 64 px images keep this fast (one 64 px VGG16 build is ~1 s); the images are
the real NIH X-rays of demo/nih-24 plus a truncated PNG and a .DS_Store. Most tests store
float32 (exact comparisons); the float16 default has its own tests.
"""
import hashlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from learning import safe_pickle, vgg
from learning import transfer_feature_extraction as tfe
from learning.store.index import open_store, shards_folder
from scraper.cli import run_main

ROOT = pathlib.Path(__file__).resolve().parents[2]

DEMO = pathlib.Path(__file__).resolve().parents[2] / "demo" / "nih-24" / "images"
DEMO_NAMES = sorted(p.name for p in DEMO.glob("*.png"))
SIZE = 64          # block5_pool of a 64 px image: (2, 2, 512)
CORRUPT = "zz_truncated.png"


def make_images(folder, names=DEMO_NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(DEMO / name, folder / name)
    (folder / CORRUPT).write_bytes((DEMO / DEMO_NAMES[0]).read_bytes()[:3000])
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return folder


def run(images, output, **kwargs):
    kwargs.setdefault("random_weights", True)
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("feature_dtype", "float32")
    kwargs.setdefault("shard_size_mb", 0.06)     # 7 rows of (2, 2, 512) float32 per shard
    return tfe.extract_features(images, output, **kwargs)


def load(output):
    """The index as a dict, with every row read back ("features", float32)."""
    store = open_store(output)
    rows = store.read(np.arange(len(store)))
    result = {"names": store.names, "features": rows, "content_hashes": store.content_hashes,
              "params": store.params, "failures": store.failures, "dtype": store.dtype,
              "shards": store.shards, "store_id": store.store_id}
    store.close()
    return result


def snapshot(output):
    """Bytes of the index and of every shard file."""
    folder = pathlib.Path(shards_folder(output))
    return {p.name: p.read_bytes() for p in [pathlib.Path(output)] + sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def net():
    """The 64 px random-weight network, built once and shared by the incremental tests."""
    return tfe.FeatureModel(None, True, 0, SIZE, "block5_pool", "none", "fp32")


@pytest.fixture(scope="module")
def first(tmp_path_factory, net):
    """One full run on the 24 demo images: (images dir, output path, stats)."""
    root = tmp_path_factory.mktemp("first")
    images = make_images(root / "images")
    output = root / "features.pickle"
    stats = run(images, output, batch_size=16, model=net)
    return images, output, stats


def copy_run(first, tmp_path):
    images, output, _ = first
    shutil.copytree(images, tmp_path / "images")
    shutil.copy(output, tmp_path / "features.pickle")
    shutil.copytree(shards_folder(output), shards_folder(tmp_path / "features.pickle"))
    return tmp_path / "images", tmp_path / "features.pickle"


def test_contract_shapes_names_hashes_failures(first):
    images, output, stats = first
    assert safe_pickle.load(output, kind="cxr-features/2")["format"] == "cxr-features/2"
    result = load(output)
    assert result["names"] == DEMO_NAMES
    assert result["features"].dtype == np.float32
    assert result["features"].shape == (24, 2, 2, 512)
    assert result["content_hashes"] == [hashlib.sha256((images / n).read_bytes()).hexdigest()
                                        for n in DEMO_NAMES]
    assert result["params"] == {"weights": "random:seed=0", "image_size": SIZE,
                                "layer": "block5_pool", "pooling": "none",
                                "preprocessing": vgg.PREPROCESSING, "precision": "fp32"}
    assert [f["name"] for f in result["failures"]] == [CORRUPT]
    assert "not a decodable image" in result["failures"][0]["reason"]
    assert (stats.total, stats.computed, stats.reused, stats.failed, stats.skipped) == \
        (25, 24, 0, 1, 1)
    assert stats.written


def test_features_equal_a_direct_call_of_the_conv_base(first):
    images, output, _ = first
    result = load(output)
    model = vgg.build_conv_base(random_weights=True, seed=0, image_size=SIZE)
    batch = np.stack([vgg.load_image(images / n, SIZE) for n in DEMO_NAMES])   # (24, 64, 64, 3)
    expected = np.asarray(model(vgg.preprocess(batch), training=False))        # (24, 2, 2, 512)
    assert float(np.abs(expected).max()) > 0.01   # random ReLU features are not all zero
    np.testing.assert_allclose(result["features"], expected, rtol=1e-4,
                               atol=1e-5 * float(np.abs(expected).max()))


def test_rerun_computes_nothing_and_leaves_the_file_alone(first, tmp_path, net):
    images, output = copy_run(first, tmp_path)
    before = snapshot(output)
    stats = run(images, output, model=net)
    assert (stats.computed, stats.reused, stats.failed) == (0, 24, 1)
    assert not stats.written
    assert snapshot(output) == before


def test_new_changed_and_deleted_images(first, tmp_path, net):
    images, output = copy_run(first, tmp_path)
    old = load(output)
    shards_before = snapshot(output)
    # Two new images (same pixels under new names) cost exactly two.
    shutil.copy(DEMO / DEMO_NAMES[0], images / "new_a.png")
    shutil.copy(DEMO / DEMO_NAMES[1], images / "new_b.png")
    stats = run(images, output, model=net)
    assert (stats.computed, stats.reused, stats.copied) == (2, 24, 0)
    after = snapshot(output)
    kept = {name for name in shards_before if name.endswith(".npy")}
    assert all(after[name] == shards_before[name] for name in kept)  # unchanged shards kept
    result = load(output)
    assert result["names"] == sorted(DEMO_NAMES + ["new_a.png", "new_b.png"])
    np.testing.assert_allclose(result["features"][result["names"].index("new_a.png")],
                               old["features"][0], rtol=1e-4, atol=1e-4)
    # A changed file (new bytes under the same name) is recomputed; a deleted one dropped.
    flipped = vgg.load_image(DEMO / DEMO_NAMES[2])[:, ::-1, 0]
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(flipped)).save(images / DEMO_NAMES[2])
    (images / DEMO_NAMES[3]).unlink()
    stats = run(images, output, model=net)
    assert (stats.computed, stats.reused) == (1, 24)
    result = load(output)
    assert DEMO_NAMES[3] not in result["names"]
    assert len(result["names"]) == result["features"].shape[0] == 25
    changed = result["features"][result["names"].index(DEMO_NAMES[2])]
    assert not np.allclose(changed, old["features"][2])
    kept = result["names"].index(DEMO_NAMES[4])
    np.testing.assert_array_equal(result["features"][kept], old["features"][4])


def test_changing_params_recomputes_everything_pooling_and_bf16(first, tmp_path):
    images, output = copy_run(first, tmp_path)
    grid = load(output)["features"]     # (24, 2, 2, 512)
    stats = run(images, output, pooling="avg")
    assert (stats.computed, stats.reused) == (24, 0)
    avg = load(output)
    assert avg["features"].shape == (24, 512) and avg["params"]["pooling"] == "avg"
    np.testing.assert_allclose(avg["features"], grid.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)
    stats = run(images, output, pooling="max")
    assert (stats.computed, stats.reused) == (24, 0)
    maximum = grid.max(axis=(1, 2))                                           # (24, 512)
    np.testing.assert_allclose(load(output)["features"], maximum, rtol=1e-4, atol=1e-4)
    # bf16: the precision is part of the params (recompute all), features still float32
    # and within bf16's ~3 significant digits of fp32 after 13 convolutions.
    stats = run(images, output, pooling="max", precision="bf16")
    assert (stats.computed, stats.reused) == (24, 0)
    bf16 = load(output)
    assert bf16["params"]["precision"] == "bf16"
    assert bf16["dtype"] == "float32" and bf16["features"].shape == (24, 512)
    relative = np.abs(bf16["features"] - maximum).max() / np.abs(maximum).max()
    assert 1e-4 < relative < 0.05


def test_interrupted_run_keeps_previous_output_and_resumes(first, tmp_path, net, monkeypatch):
    images, output = copy_run(first, tmp_path)
    before = snapshot(output)
    for name in DEMO_NAMES[:8]:                       # 8 changed images -> 2 batches of 4
        (images / name).write_bytes((DEMO / DEMO_NAMES[23]).read_bytes() + name.encode())
    calls = []
    real_call = tfe.FeatureModel.__call__

    def interrupt_second_batch(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, batch)

    monkeypatch.setattr(tfe.FeatureModel, "__call__", interrupt_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(images, output, model=net, batch_size=4)
    assert all(snapshot(output)[n] == before[n] for n in before)  # previous output intact
    assert os.path.exists(tfe.partial_path(output))           # 4 finished images saved
    monkeypatch.setattr(tfe.FeatureModel, "__call__", real_call)
    stats = run(images, output, model=net, batch_size=4)
    assert (stats.computed, stats.reused) == (4, 20)          # only the 4 not yet done
    assert not os.path.exists(tfe.partial_path(output))
    result = load(output)
    np.testing.assert_allclose(result["features"][0], result["features"][23], rtol=1e-4,
                               atol=1e-4)  # same pixels (trailing bytes after IEND ignored)


def test_crash_keeps_the_periodic_checkpoint(first, tmp_path, net, monkeypatch):
    images, output = copy_run(first, tmp_path)
    for name in DEMO_NAMES[:8]:
        (images / name).write_bytes((DEMO / DEMO_NAMES[23]).read_bytes() + name.encode())
    real_call = tfe.FeatureModel.__call__
    calls = []

    def crash_second_batch(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise MemoryError("simulated crash: no Ctrl-C handler runs")
        return real_call(self, batch)

    monkeypatch.setattr(tfe.FeatureModel, "__call__", crash_second_batch)
    with pytest.raises(MemoryError):
        run(images, output, model=net, batch_size=4, checkpoint_every=1e-9)
    partial = safe_pickle.load(tfe.partial_path(output), kind="cxr-features-partial/2")
    assert sorted(partial["names"]) == sorted(DEMO_NAMES[:4] + DEMO_NAMES[8:])  # 4 new + kept
    monkeypatch.setattr(tfe.FeatureModel, "__call__", real_call)
    stats = run(images, output, model=net, batch_size=4)
    assert (stats.computed, stats.reused) == (4, 20)


def test_main_end_to_end_prints_warning_and_summary(tmp_path, capsys):
    images = make_images(tmp_path / "images", DEMO_NAMES[:2])
    output = tmp_path / "out" / "features.pickle"
    argv = [str(images), str(output), "--random-weights", "--image-size", "32",
            "--pooling", "max", "--no-progress"]
    assert run_main(tfe.main, "cxr-extract-features", argv) == 0
    err = capsys.readouterr().err
    assert "RANDOMLY initialised" in err and "smoke tests only" in err
    assert "3 images: 2 computed, 0 reused, 1 failed, 1 non-image files skipped" in err
    assert load(output)["features"].shape == (2, 512)
    assert run_main(tfe.main, "cxr-extract-features", argv) == 0
    assert "0 computed, 2 reused, 1 failed" in capsys.readouterr().err


def _one_error_line(capsys, argv):
    code = run_main(tfe.main, "cxr-extract-features", [str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if "WARNING: --random-weights" not in line]
    assert code != 0
    assert len(err) == 1 and err[0].startswith("cxr-extract-features: error: "), err
    return err[0]


def test_bad_inputs_give_one_line_and_nonzero_exit(tmp_path, capsys):
    images = make_images(tmp_path / "images", DEMO_NAMES[:1])
    out = tmp_path / "features.pickle"
    assert "images folder not found" in _one_error_line(
        capsys, [tmp_path / "nope", out, "--random-weights"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"junk")
    assert "no image files" in _one_error_line(capsys, [empty, out, "--random-weights"])
    assert "no VGG16 weights given" in _one_error_line(capsys, [images, out])
    assert "weights file not found" in _one_error_line(capsys, [images, out, tmp_path / "w.h5"])
    text = tmp_path / "weights.h5"
    text.write_text("<html>not weights</html>")
    assert "not a VGG16 weights file" in _one_error_line(capsys, [images, out, text])
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle.attrs["layer_names"] = [b"dense"]
        handle.create_group("dense")
    line = _one_error_line(capsys, [images, out, other, "--image-size", "32"])
    assert "is not a VGG16 no-top weights file" in line
    assert not out.exists()
    only_corrupt = tmp_path / "corrupt"
    only_corrupt.mkdir()
    (only_corrupt / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "could be read" in _one_error_line(capsys, [only_corrupt, out, "--random-weights"])


def test_refuses_to_overwrite_a_file_that_is_not_a_features_pickle(tmp_path, capsys):
    images = make_images(tmp_path / "images", DEMO_NAMES[:1])
    out = tmp_path / "training.pickle"
    safe_pickle.dump({"format": "cxr-examples/1", "x": [1]}, out)
    line = _one_error_line(capsys, [images, out, "--random-weights", "--image-size", "32"])
    assert "refusing to overwrite" in line and "is not a features file" in line
    assert safe_pickle.load(out)["format"] == "cxr-examples/1"


# ---------------------------------------------------------------- issue 8: hostile/careless input

def test_only_our_own_stale_temp_files_are_removed(first, tmp_path, net):
    """A killed run's temp files go; an unrelated hidden .part file (a user's, another
    program's, an old-style name) stays."""
    images, output = copy_run(first, tmp_path)
    (images / DEMO_NAMES[0]).write_bytes((DEMO / DEMO_NAMES[1]).read_bytes())  # one change
    ours = [tmp_path / ".features.pickle.cxr-tmp-k3j_x9ab.part",
            tmp_path / ".features.pickle.partial.cxr-tmp-q0w9e8r7.part"]
    theirs = [tmp_path / ".something.part", tmp_path / ".features.pickle.abcdefgh.part",
              tmp_path / ".notes.cxr-tmp-.part"]
    for path in ours + theirs:
        path.write_bytes(b"half-written")
    stats = run(images, output, model=net)
    assert stats.computed == 1
    assert [p.exists() for p in ours] == [False, False]
    assert [p.exists() for p in theirs] == [True, True, True]


def test_a_running_writer_is_not_disturbed(first, tmp_path, net, capsys):
    """A temp file another writer holds (locked) survives a run; while another run holds the
    output folder, a second one refuses in one line and changes nothing."""
    import fcntl

    from scraper.fileio import LOCK_FILE

    images, output = copy_run(first, tmp_path)
    before = output.read_bytes()
    running_temp = tmp_path / ".examples.json.cxr-tmp-r7unn1ng.part"
    running_temp.write_bytes(b"another stage is writing this")
    with open(running_temp, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)                     # a writer at work
        (images / DEMO_NAMES[0]).write_bytes((DEMO / DEMO_NAMES[1]).read_bytes())
        assert run(images, output, model=net).computed == 1
        assert running_temp.read_bytes() == b"another stage is writing this"
    changed = output.read_bytes()
    with open(tmp_path / LOCK_FILE, "a") as first_run:
        fcntl.flock(first_run, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the first run"
        (images / DEMO_NAMES[1]).write_bytes((DEMO / DEMO_NAMES[2]).read_bytes())
        line = _one_error_line(capsys, [images, output, "--random-weights", "--image-size",
                                        str(SIZE), "--no-progress"])
    assert "another run is writing to" in line
    assert output.read_bytes() == changed != before


@pytest.mark.parametrize("flag, value, message", [
    ("--image-size", "100000", "must be between 32 and 2,048"),
    ("--image-size", "16", "must be between 32 and 2,048"),
    ("--batch-size", "1000000000", "must be between 1 and 1,024"),
    ("--batch-size", "0", "must be between 1 and 1,024"),
    ("--seed", "-5", "must be between 0 and 4,294,967,295"),
    ("--workers", "0", "must be between 1 and 256"),
    ("--checkpoint-every", "nan", "must be between 0 and 604,800"),
    ("--checkpoint-every", "-1", "must be between 0 and 604,800"),
    ("--checkpoint-every", "1e20", "must be between 0 and 604,800"),
    ("--shard-size-mb", "0", "must be between 0.001 and 4,096"),
    ("--shard-size-mb", "1e9", "must be between 0.001 and 4,096"),
    ("--max-image-pixels", "0", "must be at least 1"),
])
def test_flag_ranges_are_checked_at_parse_time(tmp_path, capsys, flag, value, message):
    images = make_images(tmp_path / "images", DEMO_NAMES[:1])
    out = tmp_path / "features.pickle"
    line = _one_error_line(capsys, [images, out, "--random-weights", flag, value])
    assert flag in line and message in line
    assert not out.exists()


# ---------------------------------------------------------------- the split-out parts, alone

@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_decode_pipeline_keeps_order_and_reports_bad_images(tmp_path, mode):
    from learning import features_decode

    images = make_images(tmp_path / "images", DEMO_NAMES[:3])
    paths = [images / DEMO_NAMES[2], images / CORRUPT, images / DEMO_NAMES[0],
             images / "vanished.png"]
    decoded = list(features_decode.iter_decoded([str(p) for p in paths], 32, workers=2,
                                                prefetch=2, mode=mode))
    assert [position for position, _ in decoded] == [0, 1, 2, 3]
    np.testing.assert_array_equal(decoded[0][1], vgg.load_image(images / DEMO_NAMES[2], 32))
    np.testing.assert_array_equal(decoded[2][1], vgg.load_image(images / DEMO_NAMES[0], 32))
    assert isinstance(decoded[1][1], features_decode.BadImage)
    assert isinstance(decoded[3][1], features_decode.BadImage)   # vanished since listed
    assert features_decode.choose_mode("auto", 10_000, cpus=16) == "processes"
    assert features_decode.choose_mode("auto", 10_000, cpus=2) == "threads"
    assert features_decode.choose_mode("auto", 10, cpus=16) == "threads"


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_pixel_limit_holds_in_decode_processes_too(tmp_path, mode):
    """--max-image-pixels set in the stage applies in spawned decode workers as well."""
    from learning import features_decode
    from scraper.images import DEFAULT_MAX_PIXELS, set_max_pixels

    images = make_images(tmp_path / "images", DEMO_NAMES[:1])
    set_max_pixels(512 * 512 - 1)                     # the demo X-rays are 512 x 512
    try:
        [(_, result)] = features_decode.iter_decoded([str(images / DEMO_NAMES[0])], 32, 1, 1,
                                                     mode)
    finally:
        set_max_pixels(DEFAULT_MAX_PIXELS)
    assert isinstance(result, features_decode.BadImage) and "max-image-pixels" in str(result)


def test_reuse_plan_alone():
    from types import SimpleNamespace

    from learning.store import incremental

    params = {"layer": "block5_pool"}
    previous = SimpleNamespace(params=params, dtype="float32", names=["a", "b", "c"],
                               content_hashes=["ha", "hb", "hc"])
    checkpoint = SimpleNamespace(params=params, dtype="float16", names=["d"],
                                 content_hashes=["hd"])
    stale = SimpleNamespace(params={"layer": "other"}, dtype="float32", names=["e"],
                            content_hashes=["he"])
    names, hashes = ["a", "b", "d", "e", "f"], ["ha", "CHANGED", "hd", "he", None]
    sources, reuse, to_compute = incremental.plan_reuse(
        names, hashes, [previous, checkpoint, stale], params, "float16")
    assert sources == [previous, checkpoint]
    assert reuse == {0: (0, 0), 2: (1, 0)} and to_compute == [1, 3]   # f unreadable: neither
    # A float32 store never takes float16 rows (precision would be lost silently).
    sources, reuse, to_compute = incremental.plan_reuse(
        names, hashes, [previous, checkpoint], params, "float32")
    assert sources == [previous] and reuse == {0: (0, 0)} and to_compute == [1, 2, 3]


# ---------------------------------------------------------------- the store (issue 16)

def test_float16_default_store_halves_disk_and_stays_close(first, tmp_path, net, capsys):
    """The default stores float16: 2 bytes a value (a .npy header per shard aside), within
    float16's precision of the float32 rows; the shards are plain .npy files."""
    images, output = copy_run(first, tmp_path)
    exact = load(output)["features"]
    half = tmp_path / "half" / "features.pickle"
    stats = tfe.extract_features(images, half, random_weights=True, image_size=SIZE,
                                 progress=False, model=net)
    assert stats.computed == 24
    result = load(half)
    assert result["dtype"] == "float16" and len(result["shards"]) == 1   # 256 MiB shards
    np.testing.assert_allclose(result["features"], exact, rtol=2e-3,
                               atol=1e-3 * np.abs(exact).max())
    shard = pathlib.Path(shards_folder(half)) / result["shards"][0]["file"]
    assert shard.stat().st_size == result["shards"][0]["bytes"] == 128 + 24 * 2 * 2 * 512 * 2
    np.testing.assert_array_equal(np.load(shard).astype(np.float32), result["features"])


def test_float16_overflow_is_one_line(first, tmp_path, net, monkeypatch, capsys):
    """Features beyond float16's range are refused, naming the flag that keeps them."""
    images, _ = copy_run(first, tmp_path)
    real_call = tfe.FeatureModel.__call__
    monkeypatch.setattr(tfe.FeatureModel, "__call__",
                        lambda self, batch: real_call(self, batch) * 1e6)
    with pytest.raises(tfe.UserError, match=r"do not fit in float16 .* --feature-dtype float32"):
        tfe.extract_features(images, tmp_path / "o" / "f.pickle", random_weights=True,
                             image_size=SIZE, progress=False, model=net)
    assert not (tmp_path / "o" / "f.pickle").exists()


def test_old_single_pickle_is_converted_without_recomputing(first, tmp_path, net):
    """A cxr-features/1 file (every row in one pickle) as the previous output: re-running
    stage 3 rewrites it as an index + shards, reusing every row."""
    images, output = copy_run(first, tmp_path)
    rows = load(output)
    old = tmp_path / "old" / "features.pickle"
    safe_pickle.dump({"format": "cxr-features/1", "names": rows["names"],
                      "features": rows["features"], "content_hashes": rows["content_hashes"],
                      "params": rows["params"], "failures": rows["failures"]}, old)
    stats = run(images, old, model=net)
    assert (stats.computed, stats.reused, stats.copied) == (0, 24, 24) and stats.written
    converted = load(old)
    assert converted["names"] == rows["names"]
    np.testing.assert_array_equal(converted["features"], rows["features"])


def test_deleting_most_of_a_shard_rewrites_it(first, tmp_path, net):
    """A shard left mostly dead by deleted images is rewritten; the others are kept."""
    images, output = copy_run(first, tmp_path)
    before = load(output)
    for name in DEMO_NAMES[:5]:              # 5 of the first shard's 7 rows
        (images / name).unlink()
    stats = run(images, output, model=net)
    assert (stats.computed, stats.reused, stats.copied) == (0, 19, 2)
    after = load(output)
    assert after["names"] == DEMO_NAMES[5:]
    np.testing.assert_array_equal(after["features"], before["features"][5:])
    files = sorted(p.name for p in pathlib.Path(shards_folder(output)).iterdir())
    assert files == sorted(s["file"] for s in after["shards"])     # no dead shard left
    assert len(set(files) & {s["file"] for s in before["shards"]}) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_shard_is_recomputed_not_reused(first, tmp_path, net, capsys, damage):
    """A shard truncated, changed in place (same size) or deleted since the index was written:
    stage 3 recomputes its rows (stage 5 would refuse the shard), and says so."""
    images, output = copy_run(first, tmp_path)
    before = load(output)
    shard = pathlib.Path(shards_folder(output)) / before["shards"][1]["file"]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    stats = run(images, output, model=net)
    assert (stats.computed, stats.reused) == (7, 17) and stats.written
    assert "recomputing the features of " + shard.name in capsys.readouterr().err
    after = load(output)
    np.testing.assert_allclose(after["features"], before["features"], rtol=1e-4,
                               atol=1e-5 * np.abs(before["features"]).max())
    assert not shard.exists()


def test_sigkill_mid_run_resumes_from_complete_shards(first, tmp_path, net):
    """A real stage-3 process killed (SIGKILL) after its first checkpoint: the re-run
    computes only what no complete shard holds, and the result equals a clean run's."""
    images = make_images(tmp_path / "images", DEMO_NAMES * 0)
    for i in range(40):                      # 40 distinct files (different bytes)
        (images / f"x{i:02d}.png").write_bytes((DEMO / DEMO_NAMES[i % 24]).read_bytes() +
                                               bytes([i]))
    output = tmp_path / "features.pickle"
    argv = [sys.executable, "-m", "learning.transfer_feature_extraction", str(images),
            str(output), "--random-weights", "--image-size", str(SIZE), "--batch-size", "1",
            "--shard-size-mb", "0.005", "--no-progress", "--workers", "1", "--layer",
            "block5_pool"]
    process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 120
    while not os.path.exists(tfe.partial_path(output)) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, process.stderr.read()
    process.stderr.close()
    assert not output.exists()
    done = len(safe_pickle.load(tfe.partial_path(output))["names"])
    assert 1 <= done < 40
    stats = run(images, output, shard_size_mb=0.005, feature_dtype="float16", model=net)
    assert stats.reused >= done and stats.computed == 40 - stats.reused
    assert stats.failed == 1                 # the truncated PNG
    assert not os.path.exists(tfe.partial_path(output))
    resumed = load(output)
    exact = load(first[1])["features"]       # x{i}.png has the pixels of DEMO_NAMES[i % 24]
    expected = exact[[i % 24 for i in range(40)]].astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(resumed["features"], expected, rtol=1e-3,
                               atol=1e-3 * np.abs(expected).max())
    files = {p.name for p in pathlib.Path(shards_folder(output)).iterdir()}
    assert files == {s["file"] for s in resumed["shards"]}       # no orphan, no temp file
