"""The allow-list unpickler: real pipeline dicts round-trip, crafted pickles never run code."""
import os
import pickle

import numpy as np
import pytest

from learning import safe_pickle
from scraper.cli import UserError


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_round_trip_keeps_arrays_dtypes_and_containers(tmp_path):
    obj = {"format": "cxr-features/1", "names": ["a.png", "b.png"],
           "features": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
           "labels": np.array([0, 1], dtype=np.int64), "half": np.ones(3, np.float16),
           "params": {"image_size": 224, "ratio": 0.5, "flag": True, "none": None,
                      "pair": (1, 2), "scalar": np.float32(1.5)}}
    safe_pickle.dump(obj, tmp_path / "f.pickle")
    back = safe_pickle.load(tmp_path / "f.pickle", kind="cxr-features/1")
    np.testing.assert_array_equal(back["features"], obj["features"])
    assert back["features"].dtype == np.float32 and back["half"].dtype == np.float16
    assert back["labels"].tolist() == [0, 1]
    assert back["params"] == obj["params"]


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"format": "x", "payload": _Exploit()}))
    with pytest.raises(UserError, match=r"refusing to load .*forbidden global (posix|os)\.system"):
        safe_pickle.load(tmp_path / "evil.pickle")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("data, message", [
    (b"<html>maintenance</html>", "corrupt or not a pipeline pickle"),
    (pickle.dumps({"format": "cxr-features/1"})[:-5], "corrupt or not a pipeline pickle"),
    (b"", "corrupt or not a pipeline pickle"),
])
def test_corrupt_data_is_one_clear_error(tmp_path, data, message):
    (tmp_path / "bad.pickle").write_bytes(data)
    with pytest.raises(UserError, match=message):
        safe_pickle.load(tmp_path / "bad.pickle", what="features pickle")


def test_wrong_kind_and_missing_file(tmp_path):
    safe_pickle.dump({"format": "cxr-examples/1"}, tmp_path / "e.pickle")
    with pytest.raises(UserError, match="expected format 'cxr-features/1', found 'cxr-examples/1'"):
        safe_pickle.load(tmp_path / "e.pickle", kind="cxr-features/1")
    with pytest.raises(UserError, match="not found"):
        safe_pickle.load(tmp_path / "missing.pickle")


def _shared(depth):
    d = [1.0]
    for _ in range(depth):
        d = [d, d]          # one list referenced twice: 2**depth elements as a tree
    return d


@pytest.mark.parametrize("depth", [20, 30, 40])
def test_shared_references_are_measured_as_the_graph_they_are(tmp_path, depth):
    """A few hundred bytes of memo references that expand to 2**depth elements when walked
    (compared, printed, written to JSON) are refused at load."""
    path = tmp_path / "bomb.pickle"
    safe_pickle.dump({"format": "cxr-examples/2", "feature_params": {"x": _shared(depth)}}, path)
    assert path.stat().st_size < 1000
    with pytest.raises(UserError, match="(expands to|more than) [0-9,]+ elements"):
        safe_pickle.load(path, kind="cxr-examples/2")


def test_self_containing_list_is_refused(tmp_path):
    cycle = []
    cycle.append(cycle)
    (tmp_path / "c.pickle").write_bytes(pickle.dumps({"format": "x", "a": cycle}))
    with pytest.raises(UserError, match="a container that contains itself"):
        safe_pickle.load(tmp_path / "c.pickle")


def test_shared_strings_and_small_sharing_still_load(tmp_path):
    """What our writers make: one str object referenced by many list slots (pickle's memo),
    plus a little harmless sharing."""
    train = "train"
    obj = {"format": "x", "subset": [train] * 100_000, "small": _shared(8),
           "rows": np.arange(10)}
    safe_pickle.dump(obj, tmp_path / "ok.pickle")
    back = safe_pickle.load(tmp_path / "ok.pickle")
    assert back["subset"] == obj["subset"] and back["small"] == obj["small"]


def test_dump_without_memo_writes_no_memo_and_loads_equal(tmp_path):
    """memo=False (stage 4's split files): no memo table while writing (pickle keeps one entry
    per object written: ~10 MB for 50,000 names); the file loads equal, each repeat its own
    copy."""
    import pickletools

    train = "train"
    obj = {"format": "x", "names": [f"{i:05d}.png" for i in range(1000)],
           "subset": [train] * 1000, "rows": np.arange(1000)}
    for memo in (True, False):
        path = tmp_path / f"memo-{memo}.pickle"
        safe_pickle.dump(obj, path, memo=memo)
        ops = [op.name for op, _, _ in pickletools.genops(path.read_bytes())]
        back = safe_pickle.load(path)
        assert back["names"] == obj["names"] and back["subset"] == obj["subset"]
        assert np.array_equal(back["rows"], obj["rows"])
        if memo:
            assert ops.count("MEMOIZE") > 1000 and back["subset"][0] is back["subset"][-1]
        else:
            assert "MEMOIZE" not in ops and ops.count("SHORT_BINUNICODE") > 2000
    with pytest.raises(ValueError, match="cyclic"):
        cycle = []
        cycle.append(cycle)
        safe_pickle.dump({"a": cycle}, tmp_path / "cycle.pickle", memo=False)
    assert not (tmp_path / "cycle.pickle").exists()
