"""Pictures of attribution maps: heatmap PNG, colour overlay on the X-ray, 3-part panel.

Used by stage 6 (learning/visualization.py). matplotlib with the Agg backend (no display
needed); every file is written atomically.

Colour scale: the top of the scale is the 99.5th percentile of the shown values
(`robust_max`), so one hot pixel does not wash out the rest; stage 6 takes it per image or
pooled over the run (--scale shared, from `scale_sample`s). Panels and overlays show the
positive part of the signed map (evidence for "abnormal"); the detail page's RGBA layers
(`layer_rgba`) show its positive, negative or absolute values (`view_values`). Colormap
"inferno" (perceptually uniform, readable in grey print). The overlay makes weak evidence
transparent (alpha grows with the value) so the X-ray stays visible where nothing is found.
The overlay and panel show the map lightly smoothed (Gaussian, `smooth` pixels of the model
input) because pixel-level DeepLIFT maps are speckled; the `_<method>.png` heatmap and all
metrics use the unsmoothed map.
"""
import io

import numpy as np

from scraper.fileio import atomic_write_bytes

CMAP = "inferno"
BOX_COLOUR = "#39ff14"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def robust_max(heatmap, percentile=99.5):
    positive = np.asarray(heatmap)[np.asarray(heatmap) > 0]
    if positive.size == 0:
        return 1.0
    top = float(np.percentile(positive, percentile))
    return top if top > 0 else float(positive.max())


def resize_map(heatmap, size):
    """(h, w) float map -> (size, size) (or (height, width) for a tuple) bilinear."""
    from PIL import Image

    if isinstance(size, int):
        size = (size, size)
    height, width = size
    if np.shape(heatmap) == (height, width):
        return np.asarray(heatmap, np.float32)
    image = Image.fromarray(np.asarray(heatmap, np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BILINEAR), np.float32)


def smooth_map(heatmap, sigma):
    if not sigma or sigma <= 0:
        return np.asarray(heatmap, np.float32)
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(heatmap, np.float32), sigma)


def colorize(heatmap, vmax, cmap=CMAP):
    """(H, W) map -> (H, W, 3) uint8 through the colormap, 0..vmax."""
    import matplotlib

    values = np.clip(np.asarray(heatmap, np.float64) / vmax, 0, 1)
    return (matplotlib.colormaps[cmap](values)[..., :3] * 255).round().astype(np.uint8)


def overlay(xray_rgb, heatmap, vmax, cmap=CMAP, max_alpha=0.75):
    """Alpha-blend the colour map on the X-ray; both (H, W, ...) at the same size -> uint8."""
    gray = np.asarray(xray_rgb, np.float64).mean(-1, keepdims=True)
    values = np.clip(np.asarray(heatmap, np.float64) / vmax, 0, 1)
    colour = colorize(heatmap, vmax, cmap).astype(np.float64)
    alpha = (max_alpha * np.sqrt(values))[..., None]
    return (gray * (1 - alpha) + colour * alpha).round().clip(0, 255).astype(np.uint8)


def png_bytes(rgb):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def save_png(path, rgb):
    atomic_write_bytes(path, png_bytes(rgb))


# The detail page's three views of a signed map: colour source and which values they show.
VIEWS = {"positive": ("inferno", 1.0), "negative": ("Blues", -1.0), "absolute": ("viridis", 0.0)}


def view_values(signed, view):
    """(H, W) signed map -> the non-negative values a view shows (positive/negative/absolute)."""
    signed = np.asarray(signed, np.float32)
    if view == "absolute":
        return np.abs(signed)
    return np.maximum(VIEWS[view][1] * signed, 0)


def layer_rgba(values, vmax, cmap, max_alpha=0.85):
    """Non-negative (H, W) values -> (H, W, 4) uint8: colour-mapped, alpha growing with the
    value (transparent where there is nothing), for stacking over the X-ray in a browser."""
    import matplotlib

    scaled = np.clip(np.asarray(values, np.float64) / vmax, 0, 1)
    # Blues starts almost white: use its darker upper half so weak evidence stays visible.
    colours = matplotlib.colormaps[cmap](0.35 + 0.65 * scaled if cmap == "Blues" else scaled)
    rgba = (colours * 255).round().astype(np.uint8)
    rgba[..., 3] = (255 * max_alpha * np.sqrt(scaled)).round().astype(np.uint8)
    return rgba


def scale_sample(values, rng, size=256):
    """A fixed-size random sample of a map's positive values, to pool a run-wide scale
    (256 float32 per map and view: ~3 KB per image and method, whatever the map size)."""
    positive = np.asarray(values, np.float32)[np.asarray(values) > 0]
    if positive.size > size:
        positive = rng.choice(positive, size, replace=False)
    return positive


def _draw_boxes(ax, boxes):
    from matplotlib.patches import Rectangle

    for box in boxes:
        ax.add_patch(Rectangle((box["x"], box["y"]), box["w"], box["h"], fill=False,
                               edgecolor=BOX_COLOUR, linewidth=1.6, linestyle="--"))
        if box.get("finding"):
            ax.text(box["x"] + 2, box["y"] - 4, box["finding"], color=BOX_COLOUR, fontsize=8,
                    va="bottom", ha="left", clip_on=True)


def save_panel(path, xray_rgb, heatmap, vmax, title, boxes=(), subtitle="", warning="",
               colorbar_label="attribution", cmap=CMAP):
    """X-ray | heatmap (with colour bar) | overlay, at the X-ray's size; boxes in its pixels."""
    plt = _pyplot()
    width, height = 14.0, 5.2
    fig = plt.figure(figsize=(width, height), dpi=100)
    side = 0.70 * height / width  # square image axes, 70% of the figure height
    gap, bar_gap, bar_w, bar_pad = 0.015, 0.008, 0.011, 0.065
    left = (1 - (3 * side + 2 * gap + bar_gap + bar_w + bar_pad - gap)) / 2
    x1 = left + side + gap
    xbar = x1 + side + bar_gap
    x2 = xbar + bar_w + bar_pad
    axes = [fig.add_axes([x, 0.12, side, 0.70]) for x in (left, x1, x2)]
    bar_ax = fig.add_axes([xbar, 0.12, bar_w, 0.70])
    try:
        axes[0].imshow(xray_rgb)
        axes[0].set_title("X-ray", fontsize=10)
        shown = axes[1].imshow(np.clip(heatmap, 0, None), cmap=cmap, vmin=0, vmax=vmax)
        axes[1].set_title("attribution map", fontsize=10)
        bar = fig.colorbar(shown, cax=bar_ax)
        bar.set_label(colorbar_label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
        bar.formatter.set_powerlimits((-2, 3))
        axes[2].imshow(overlay(xray_rgb, heatmap, vmax, cmap))
        axes[2].set_title("overlay" + (" + expert boxes" if boxes else ""), fontsize=10)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            _draw_boxes(ax, boxes)
        fig.suptitle(title, fontsize=12, fontweight="bold", y=0.975)
        lines = [line for line in (subtitle,) if line]
        if lines:
            fig.text(0.5, 0.04, "\n".join(lines), ha="center", fontsize=8.5, color="#333333")
        if warning:
            fig.text(0.5, 0.875, warning, ha="center", fontsize=9, color="white",
                     bbox={"facecolor": "#c0392b", "edgecolor": "none", "pad": 3})
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def save_overlay(path, xray_rgb, heatmap, vmax, boxes=(), cmap=CMAP):
    """The overlay alone, boxes drawn in (PIL, at the X-ray's size)."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(overlay(xray_rgb, heatmap, vmax, cmap))
    draw = ImageDraw.Draw(image)
    width = max(1, round(image.width / 256))
    for box in boxes:
        draw.rectangle([box["x"], box["y"], box["x"] + box["w"], box["y"] + box["h"]],
                       outline=BOX_COLOUR, width=width)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
