"""Stage 6's entries on disk (learning/explain/entries.py) and the writers that stream them:
maps.npz's index, gallery-data.js. Memory flat in the number of images is checked here by
its mechanism (Python objects held per entry, tracemalloc: deterministic); the peak RSS at
2,000 / 10,000 / 50,000 images is benchmarks/bench_scale.py's stage 6 line."""
import json
import math
import os
import tracemalloc

import numpy as np

from learning.explain import gallery, outputs, results_folder
from learning.explain.entries import INTERNAL, EntryLog
from tests.learning import gallery_data


def _entry(name, p, **extra):
    return dict({"name": name, "p_abnormal": p, "p_normal": 1 - p, "label": "normal",
                 "path": "/x/" + name, "scored_boxes": [], "scores": {},
                 "methods": {"m": {"delta": None}}}, **extra)


def test_entries_come_back_as_appended_then_by_probability_and_name(tmp_path):
    log = EntryLog(str(tmp_path))
    rows = [("b.png", 0.5), ("a.png", 0.5), ("\u00fc \"q\".png", 0.9), ("d.png", 0.1),
            ("c.png", 0.5), ("e.png", 1.0), ("f.png", 1.0)]
    for name, p in rows:
        log.append(_entry(name, np.float32(p) if name == "d.png" else p,
                          delta=float("nan"), pair=(1, 2)))
    assert os.listdir(tmp_path) == []          # the file has no name: never published
    assert [e["name"] for e in log] == [name for name, _ in rows]
    first = next(iter(log))
    assert first["delta"] is None and first["pair"] == [1, 2]   # one JSON round trip
    assert isinstance(log.read(3)["p_abnormal"], float)
    log.sort_by_probability()
    assert [e["name"] for e in log] == ["e.png", "f.png", "\u00fc \"q\".png", "a.png", "b.png",
                                        "c.png", "d.png"]
    assert [e["name"] for e in log] == [e["name"] for e in log]     # re-iterable
    assert [e["name"] for e in log.by_name()] == sorted(name for name, _ in rows)
    assert [log.name(i) for i in range(len(log))] == [name for name, _ in rows]
    assert len(log) == len(log.public()) == 7
    assert all(not set(INTERNAL) & set(e) for e in log.public())
    assert all(set(INTERNAL) <= set(e) for e in log)
    log.close()


def test_the_renderers_tops_decorate_each_entry_none_and_unset_kept_apart(tmp_path):
    log = EntryLog(str(tmp_path))
    for k in range(4):
        log.append(_entry(f"{k}.png", 0.1 * k))
    log.set_tops(2, {"m": 0.25, "m/Nodule": 0.5})
    log.set_tops(0, {"m": None})                  # an all-zero map
    log.decorate = lambda entry, tops: entry.update(tops=tops)
    assert [e["tops"] for e in log] == [{"m": None}, {}, {"m": 0.25, "m/Nodule": 0.5}, {}]
    assert log.read(2)["tops"]["m"] == 0.25 and math.isnan(log._tops["m"][1])


def test_memory_per_entry_is_the_order_not_the_entry(tmp_path):
    """20,000 entries of ~3 KB each (the generated gallery entries): a list holds ~100 MB of
    Python objects; the log keeps < 60 bytes an entry (offset, p, name bytes: ~40)."""
    log = EntryLog(str(tmp_path))
    entries = gallery_data.iter_entries(str(tmp_path / "pictures"), 20_001, distinct=2)
    log.append(next(entries))     # the generator's pictures and imports: not the log's
    tracemalloc.start()
    try:
        for entry in entries:
            log.append(entry)
        held, _ = tracemalloc.get_traced_memory()
        log.sort_by_probability()
        for _ in log.public():
            pass
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 60 * 20_000, held
    assert after - held < 20 * 20_000 and peak < 150 * 20_000, (held, after, peak)


def test_map_index_is_streamed_into_the_same_arrays(tmp_path):
    """maps.npz's names/labels written block by block equal np.array(list) (dtype: the longest
    name's length, non-ASCII included); the numbers come from the same single pass."""
    log = EntryLog(str(tmp_path))
    names = ["a.png", "\u00fcn\u00efc\u00f8de-long-name-\u2603.png", "b.png"] + [
        f"x{k}.png" for k in range(5000)]
    for k, name in enumerate(names):
        log.append(dict(_entry(name, k / len(names), label="" if k % 3 else "abnormal"),
                        methods={"m": {"delta": None}, "d": {"delta": 1e-6 * k}},
                        findings={"Nodule": 0.25, "Mass": k / len(names)}))
    path = str(tmp_path / "maps.npz")
    with results_folder.MapsWriter(path) as maps:
        outputs.write_map_index(maps, log, ["m", "d"], 224, "run1")
    with np.load(path, allow_pickle=False) as saved:
        assert saved["names"].dtype == np.array(names).dtype
        assert saved["names"].tolist() == names
        assert saved["labels"].tolist() == ["abnormal" if k % 3 == 0 else ""
                                            for k in range(len(names))]
        assert np.isnan(saved["completeness_delta"][:, 0]).all()
        assert np.allclose(saved["completeness_delta"][:, 1], 1e-6 * np.arange(len(names)))
        assert saved["findings"].tolist() == ["Nodule", "Mass"]
        assert saved["p_findings"].shape == (len(names), 2)
        assert int(saved["image_size"]) == 224 and str(saved["run_id"]) == "run1"


def test_gallery_data_streamed_is_the_one_json_assignment(tmp_path):
    entries = gallery_data.make_entries(str(tmp_path), 50, distinct=3)
    methods = list(gallery_data.METHODS)
    header = gallery_data.make_header(gallery)
    text = "".join(gallery.gallery_data(entries, methods, header))
    whole = {"version": 1, "threshold": header.threshold, "methods": methods,
             "outcomes": gallery.OUTCOMES, "columns": list(gallery.COLUMNS),
             "rows": [gallery.card_row(e, methods, header.threshold) for e in entries]}
    assert text == ("window.CXR_GALLERY = " + json.dumps(whole, ensure_ascii=True,
                                                         separators=(",", ":")) + ";\n")
    summary = gallery.card_summary(entries, methods)
    assert summary["total"] == 50 and sum(summary["outcomes"].values()) == 50
    assert summary["view"] == sorted(gallery_data.VIEWS) and summary["scored"]
