"""Localization metrics: how well an attribution map points at expert boxes.

Used by stage 6 (learning/visualization.py), which writes results/localization.json. Pure
numpy; maps are (H, W) arrays of non-negative evidence, boxes are {x, y, w, h} already scaled to
the map's pixels (see `scale_boxes`).

Metrics per image (the union of the image's boxes is "the box"):
  pointing game   the map's argmax lies inside a box (Zhang et al. 2016); a map with no
                  positive value misses.
  inside share    share of the positive attribution mass that lies inside the boxes.
  IoU / IoBB      the map thresholded at a fraction of its maximum (levels, default 0.25, 0.5,
                  0.75) gives a region M; IoU = |M & B| / |M | B|, IoBB = |M & B| / |M|
                  (Wang et al. 2017, ChestX-ray8, computed on pixel regions instead of the
                  boxes drawn around them). T(IoBB) = share of images whose IoBB > T.
Two maps that use no model are scored the same way, as the baselines every real map has to
beat (`baseline_summaries`): a centred Gaussian (sigma = a quarter of the side; chest X-rays put
most findings near the middle) and a lung-field prior fixed a priori from anatomy
(`lung_prior_map`: two Gaussians over the lung fields). Each mean comes with a 95 % percentile
bootstrap interval over images (`bootstrap_ci`, `summarize_with_ci`). On nih-cxr-1000's 44
boxed images (224 px) the prior scores pointing 0.41 and inside share 0.227 (the boxes cover
0.087 of the image): a method that does not beat it does not localize.
"""
import numpy as np

LEVELS = (0.25, 0.5, 0.75)
IOBB_THRESHOLDS = (0.1, 0.25, 0.5)


def scale_boxes(boxes, original_size, map_size):
    """Boxes in original-image pixels -> map pixels. sizes are (width, height)."""
    sx = map_size[0] / float(original_size[0])
    sy = map_size[1] / float(original_size[1])
    return [{"finding": box.get("finding", ""), "x": box["x"] * sx, "y": box["y"] * sy,
             "w": box["w"] * sx, "h": box["h"] * sy} for box in boxes]


def box_mask(boxes, shape):
    """Union of boxes as a boolean (H, W) mask; a pixel is inside if its centre is."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    for box in boxes:
        rows = (ys >= box["y"]) & (ys < box["y"] + box["h"])
        cols = (xs >= box["x"]) & (xs < box["x"] + box["w"])
        mask |= rows[:, None] & cols[None, :]
    return mask


def gaussian_map(shape, sigma_fraction=0.25):
    """A centred Gaussian (H, W), peak 1, sigma = sigma_fraction * side."""
    height, width = shape
    ys = (np.arange(height) + 0.5 - height / 2.0) / (sigma_fraction * height)
    xs = (np.arange(width) + 0.5 - width / 2.0) / (sigma_fraction * width)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


# The lung-field prior: centres (x, y) and sigmas (x, y) as fractions of width and height.
LUNG_PRIOR_CENTRES = ((0.30, 0.55), (0.70, 0.55))
LUNG_PRIOR_SIGMA = (0.10, 0.15)
# The metrics that get a bootstrap interval (keys of image_metrics' result).
CI_METRICS = ("pointing", "inside_share", "iobb@0.5")


def lung_prior_map(shape, centres=LUNG_PRIOR_CENTRES, sigma=LUNG_PRIOR_SIGMA):
    """Anatomical prior (H, W), peak ~1: the sum of one Gaussian per lung field.

    Fixed a priori (not fitted to any boxes): centres at (0.30, 0.55) and (0.70, 0.55) of the
    width and height, sigma (0.10, 0.15) of width and height. It uses no model and no image, so
    it is a baseline: it says where lungs usually are, not where this patient's finding is.
    """
    height, width = shape
    ys = (np.arange(height) + 0.5) / height  # (H,) pixel centres as fractions
    xs = (np.arange(width) + 0.5) / width  # (W,)
    prior = np.zeros(shape, dtype=np.float64)
    for cx, cy in centres:
        prior += np.exp(-0.5 * (((ys[:, None] - cy) / sigma[1]) ** 2
                                + ((xs[None, :] - cx) / sigma[0]) ** 2))
    return prior


def bootstrap_ci(values, n_resamples=1000, seed=0, level=0.95):
    """Mean of per-image values with a percentile bootstrap interval over images.

    values: (N,) numbers or booleans (e.g. pointing hits). Returns {"mean", "low", "high",
    "level", "n", "n_resamples"}; low/high are None for fewer than two values.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    result = {"mean": float(values.mean()) if len(values) else None, "low": None,
              "high": None, "level": level, "n": int(len(values)), "n_resamples": n_resamples}
    if len(values) < 2:
        return result
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(n_resamples, len(values)))  # (R, N) indices
    means = values[draws].mean(axis=1)
    alpha = (1 - level) / 2
    result["low"], result["high"] = (float(v) for v in np.quantile(means, [alpha, 1 - alpha]))
    return result


def summarize_with_ci(per_image, metrics=CI_METRICS, n_resamples=1000, seed=0):
    """{metric: bootstrap_ci(...)} over images for each of `metrics`, plus "images"."""
    result = {"images": len(per_image)}
    for key in metrics:
        result[key] = bootstrap_ci([m[key] for m in per_image], n_resamples, seed)
    return result


def baseline_summaries(boxes_by_image, shape, n_resamples=1000, seed=0):
    """Score the two no-model maps on the same boxes: {"centred_gaussian", "lung_prior"}.

    boxes_by_image: {name: [boxes in map pixels]} for maps of `shape` (H, W). Each value is
    {"summary": summarize(...), "ci": summarize_with_ci(...)}.
    """
    maps = {"centred_gaussian": gaussian_map(shape), "lung_prior": lung_prior_map(shape)}
    result = {}
    for key, heatmap in maps.items():
        per_image = [image_metrics(heatmap, boxes) for boxes in boxes_by_image.values()]
        result[key] = {"summary": summarize(per_image),
                       "ci": summarize_with_ci(per_image, n_resamples=n_resamples, seed=seed)}
    return result


def format_ci(ci, digits=3):
    """'0.410 [0.273, 0.568]' for a bootstrap_ci result."""
    if ci.get("mean") is None:
        return "n/a"
    if ci.get("low") is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def image_metrics(heatmap, boxes, levels=LEVELS):
    """Metrics of one map (H, W) against boxes in map pixels; see the module docstring."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = box_mask(boxes, heatmap.shape)
    positive = np.maximum(heatmap, 0)
    total = positive.sum()
    peak = positive.max() if positive.size else 0.0
    result = {"box_fraction": float(mask.mean())}
    if peak <= 0:
        result["pointing"] = False
        result["inside_share"] = 0.0
    else:
        row, col = np.unravel_index(int(np.argmax(positive)), positive.shape)
        result["pointing"] = bool(mask[row, col])
        result["inside_share"] = float(positive[mask].sum() / total)
    for level in levels:
        region = positive >= level * peak if peak > 0 else np.zeros_like(mask)
        inter = np.logical_and(region, mask).sum()
        union = np.logical_or(region, mask).sum()
        result[f"iou@{level:g}"] = float(inter / union) if union else 0.0
        result[f"iobb@{level:g}"] = float(inter / region.sum()) if region.sum() else 0.0
    return result


def summarize(per_image, levels=LEVELS, thresholds=IOBB_THRESHOLDS):
    """Means over images plus T(IoBB) accuracies; {} counts when there is nothing to score."""
    n = len(per_image)
    summary = {"images": n}
    if not n:
        return summary
    summary["pointing_game"] = float(np.mean([m["pointing"] for m in per_image]))
    summary["inside_share"] = float(np.mean([m["inside_share"] for m in per_image]))
    summary["box_fraction"] = float(np.mean([m["box_fraction"] for m in per_image]))
    for level in levels:
        ious = [m[f"iou@{level:g}"] for m in per_image]
        iobbs = [m[f"iobb@{level:g}"] for m in per_image]
        summary[f"iou@{level:g}"] = float(np.mean(ious))
        summary[f"iobb@{level:g}"] = float(np.mean(iobbs))
        for t in thresholds:
            summary[f"T(iobb>{t:g})@{level:g}"] = float(np.mean([v > t for v in iobbs]))
    return summary


def format_summary(title, summary, level=0.5, threshold=0.25):
    """One line for the terminal."""
    if not summary.get("images"):
        return f"{title}: no boxed images"
    return (f"{title}: pointing game {summary['pointing_game']:.2f}, inside share "
            f"{summary['inside_share']:.2f} (boxes cover {summary['box_fraction']:.2f}), "
            f"IoU@{level:g} {summary[f'iou@{level:g}']:.2f}, IoBB@{level:g} "
            f"{summary[f'iobb@{level:g}']:.2f}, T(IoBB>{threshold:g}) "
            f"{summary[f'T(iobb>{threshold:g})@{level:g}']:.2f} over {summary['images']:,} images")
