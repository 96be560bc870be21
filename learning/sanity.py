"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Used by stage 6 (`cxr-visualize --sanity-check`), which writes results/sanity.json. A map that
explains the *model* must change when the model's learned weights are destroyed. Cascading from
the top, as in the paper: (1) the head re-drawn at random, (2) the head and VGG16's top conv
block (block5) re-drawn. Per method and image we compare the trained map with each randomized
one by Spearman rank correlation of the absolute signed maps (the paper's "absolute value"
variant); a method whose mean rho stays above the flag level (0.9) barely depends on the
weights (it mostly shows the image's edges) and is flagged.

Re-drawing: every kernel (weights with 2+ dimensions) gets glorot-uniform values from a numpy
generator seeded by --seed; biases and normalization statistics are kept. The weights are
restored afterwards (the same model objects and compiled attribution graphs are reused).
"""
import numpy as np

FLAG_RHO = 0.9
STAGES = ("head", "head+block5")


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


def cascade(head, conv_base, block="block5"):
    """[(stage name, layers to re-draw at that stage)], cumulative from the top."""
    head_layers = [layer for layer in head.layers if layer.get_weights()]
    block_layers = [layer for layer in conv_base.layers
                    if layer.name.startswith(block + "_") and layer.get_weights()]
    return [(STAGES[0], head_layers), (STAGES[1], head_layers + block_layers)]


def summarize(correlations, flag_rho=FLAG_RHO):
    """correlations: {method: {stage: [rho per image]}} -> report dict with flags."""
    report = {"flag_rho": flag_rho, "methods": {}, "flagged": []}
    for method, stages in correlations.items():
        entry = {}
        flagged = False
        for stage, values in stages.items():
            finite = [v for v in values if np.isfinite(v)]
            mean = float(np.mean(finite)) if finite else float("nan")
            entry[stage] = {"mean_rho": mean, "per_image": [float(v) for v in values],
                            "flag": bool(finite and mean > flag_rho)}
            flagged = flagged or entry[stage]["flag"]
        report["methods"][method] = entry
        if flagged:
            report["flagged"].append(method)
    return report


def format_report(report):
    lines = []
    for method, entry in report["methods"].items():
        parts = ", ".join(f"{stage} rho {values['mean_rho']:.2f}" for stage, values in entry.items())
        flag = ("  <- FLAGGED: barely changes when the weights are randomized"
                if method in report["flagged"] else "")
        lines.append(f"sanity check {method}: {parts}{flag}")
    return lines
