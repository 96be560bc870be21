"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Used by stage 6 (`cxr-visualize --sanity-check`), which writes results/sanity.json. A map that
explains the *model* must change when the model's learned weights are destroyed. Cascading from
the top, as in the paper: (1) the head re-drawn at random, (2) the head and the top VGG16 conv
block present in the model (block5, or block4 for block4_pool features) re-drawn. Each stage is
named by what it re-draws ("head", "head+block4"), and the report lists the layers.

Per method and image the trained map is compared with each randomized one by Spearman rank
correlation of the absolute signed maps (the paper's "absolute value" variant). A stage's mean
rho above the flag level (0.9) means the map barely depends on those weights: FLAGGED. A rho is
NaN when a map is constant (e.g. Grad-CAM all zero under a random head): such an image could not
be checked, and a stage with no finite rho is "could not be checked", never a pass.

It costs one attribution per image, method and stage, so it runs on a sample (stage 6:
--sanity-images, default 8 images, the first ones explained) and says so.

Re-drawing: every kernel (weights with 2+ dimensions) gets glorot-uniform values from a numpy
generator seeded by --seed; biases and normalization statistics are kept. The weights are
restored afterwards (the same model objects and compiled attribution graphs are reused).
"""
import re

import numpy as np

FLAG_RHO = 0.9
HEAD = "head"
STATUS = {"flagged": "FLAGGED: barely changes when the weights are randomized",
          "passes": "changes with the weights",
          "could not be checked": "could not be checked (the randomized maps were constant)"}
_VGG_CONV = re.compile(r"^block(\d+)_conv\d+$")
# The fixed preprocessing layer of classifier.keras (learning/export.py): never re-drawn.
PREPROCESSING = ("vgg16_preprocess",)


def spearman(a, b):
    """Spearman rank correlation of two arrays (ties get average ranks); nan if constant."""
    from scipy.stats import rankdata

    ra = rankdata(np.ravel(a))
    rb = rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _glorot(shape, rng):
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def randomize_layers(layers, rng):
    """Re-draw the kernels of `layers` in place; returns their old weights for `restore`."""
    saved = []
    for layer in layers:
        weights = layer.get_weights()
        saved.append((layer, weights))
        if weights:
            layer.set_weights([_glorot(w.shape, rng) if w.ndim >= 2 else w for w in weights])
    return saved


def restore(saved):
    for layer, weights in saved:
        if weights:
            layer.set_weights(weights)


def cascade(layers):
    """[(stage name, layers to re-draw)], cumulative from the top, named by what is re-drawn.

    layers: the model's leaf layers in graph order. VGG16's conv layers are those named
    block<k>_conv<j> that come before the head; everything with weights after the last of
    them is the head (a block5 head's own block5 convs count as head). The second stage adds
    the top VGG block present."""
    weighted = [layer for layer in layers if layer.get_weights()
                and layer.name not in PREPROCESSING]
    last_vgg = max((i for i, layer in enumerate(weighted) if _VGG_CONV.match(layer.name)),
                   default=-1)
    head = weighted[last_vgg + 1:]
    base = weighted[:last_vgg + 1]
    blocks = [int(_VGG_CONV.match(layer.name).group(1)) for layer in base
              if _VGG_CONV.match(layer.name)]
    stages = [(HEAD, head)]
    if blocks:
        top = max(blocks)
        block = [layer for layer in base if _VGG_CONV.match(layer.name)
                 and int(_VGG_CONV.match(layer.name).group(1)) == top]
        stages.append((f"{HEAD}+block{top}", head + block))
    return stages


def describe(stages):
    """{stage: what was re-drawn} for the report and the gallery."""
    return {name: ("the head's kernels re-drawn" if name == HEAD else
                   f"the head's and VGG16 {name.split('+')[1]}'s conv kernels re-drawn")
            + f" ({len(layers)} layers: {', '.join(layer.name for layer in layers)})"
            for name, layers in stages}


def summarize(correlations, flag_rho=FLAG_RHO):
    """correlations: {method: {stage: [rho per image]}} -> report dict with statuses."""
    report = {"flag_rho": flag_rho, "methods": {}, "flagged": [], "unchecked": []}
    for method, stages in correlations.items():
        entry = {}
        for stage, values in stages.items():
            finite = [v for v in values if np.isfinite(v)]
            mean = float(np.mean(finite)) if finite else None
            flag = None if mean is None else bool(mean > flag_rho)
            entry[stage] = {"mean_rho": mean, "checked": len(finite), "images": len(values),
                            "per_image": [float(v) if np.isfinite(v) else None for v in values],
                            "flag": flag, "status": ("could not be checked" if flag is None
                                                     else "flagged" if flag else "passes")}
        statuses = [values["status"] for values in entry.values()]
        status = ("flagged" if "flagged" in statuses else
                  "could not be checked" if "could not be checked" in statuses else "passes")
        report["methods"][method] = {"stages": entry, "status": status}
        if status == "flagged":
            report["flagged"].append(method)
        elif status == "could not be checked":
            report["unchecked"].append(method)
    return report


def format_report(report):
    lines = []
    for method, block in report["methods"].items():
        parts = ", ".join(
            f"{stage} rho " + ("n/a (constant maps)" if values["mean_rho"] is None
                               else f"{values['mean_rho']:.2f}")
            + (f" ({values['checked']} of {values['images']} images checked)"
               if values["checked"] < values["images"] else "")
            for stage, values in block["stages"].items())
        lines.append(f"sanity check {method} ({report.get('sample_note', '')}): {parts} -> "
                     f"{STATUS[block['status']]}")
    return lines


def run_check(explainer, methods, kept, rng_seed, batch_size):
    """The test on the sample `kept` ([{"name", "image" uint8 (S, S, 3), "signed": {method:
    trained map}}]) with stage 6's Explainer -> report dict (summarize + "stages", "images")."""
    from learning.explain.deeplift import leaf_layers
    from scraper.cli import progress_bar

    stages = cascade(list(leaf_layers(explainer.model)))
    correlations = {method: {stage: [] for stage, _ in stages} for method in methods}
    progress = progress_bar(total=len(stages) * len(kept), unit="img", desc="sanity check",
                            dynamic_ncols=True)
    for stage, layers in stages:
        saved = randomize_layers(layers, np.random.default_rng(rng_seed))
        try:
            for start in range(0, len(kept), batch_size):
                chunk = kept[start:start + batch_size]
                x, b = explainer.inputs(np.stack([entry["image"] for entry in chunk]))
                logits_x, logits_b = explainer.logits(x), explainer.logits(b)
                for method in methods:
                    random_maps = explainer.explain(method, x, b, logits_x, logits_b)[0]
                    for entry, random_map in zip(chunk, random_maps):
                        correlations[method][stage].append(
                            spearman(np.abs(entry["signed"][method]), np.abs(random_map)))
                progress.update(len(chunk))
        finally:
            restore(saved)
    progress.close()
    report = summarize(correlations)
    report["stages"] = describe(stages)
    report["images"] = [entry["name"] for entry in kept]
    return report
