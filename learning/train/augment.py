"""Augmentation of chest X-rays that respects anatomy: small shifts, scales and rotations, brightness
and contrast; NEVER a flip.

Why no flips: laterality is anatomy. The heart, the aortic knob and the stomach bubble sit on the
patient's left; a left-right flipped film shows situs inversus, and a model trained on flipped
films learns that side does not matter, which is false for the findings (a left lower-lobe
consolidation hides behind the heart, a right one does not). Up-down flips are not films at all.
So the geometry is a similarity transform only: p_out = c + t + s R(theta) (p_in - c), with
scale s > 0 and a rotation R, whose linear part has determinant s^2 > 0: it can never mirror.

The ranges (LIMITS) are those of real positioning variation on a detector, not of a natural image
benchmark: a few degrees of tilt, a few percent of shift and magnification (patient size and
distance to the tube), exposure differences for brightness and contrast.

Randomness is a function of (seed, epoch, image index) only (`image_rng`): the same image in the
same epoch gets the same transform whatever the batch order, the number of loader threads, or a
resume after a kill, so a resumed training run sees exactly the images the uninterrupted one saw.

Input: uint8 RGB (S, S, 3) as scraper.images.load_rgb gives; output: float32 (S, S, 3) in
0..255, the classifier's input (learning/export.py: RGB pixels, VGG16 preprocessing inside).
"""
import math

import numpy as np
from PIL import Image

# Half-widths of the uniform ranges sampled per image.
LIMITS = {
    "shift": 0.06,       # translation, fraction of the image side, along x and y
    "scale": 0.08,       # magnification in [1 - 0.08, 1 + 0.08]
    "rotation": 7.0,     # degrees, either way
    "brightness": 0.10,  # added offset, fraction of 255
    "contrast": 0.15,    # factor in [0.85, 1.15] around the image's mean
}
# Beyond these the "augmented" film is no longer a plausible chest X-ray (or a flip in disguise:
# a scale <= 0 would mirror), so larger values are refused rather than silently used.
MAX_LIMITS = {"shift": 0.25, "scale": 0.5, "rotation": 30.0, "brightness": 0.5,
              "contrast": 0.5}


def check_limits(limits):
    """A complete, validated copy of `limits` (missing keys take LIMITS' value); ValueError
    naming the key and the allowed range otherwise."""
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; allowed: {', '.join(LIMITS)}")
    checked = dict(LIMITS, **limits)
    for key, value in checked.items():
        value = float(value)
        if not 0 <= value < MAX_LIMITS[key] or math.isnan(value):
            raise ValueError(f"invalid augmentation {key} {value}: must be in "
                             f"[0, {MAX_LIMITS[key]})")
        checked[key] = value
    return checked


def image_rng(seed, epoch, index):
    """The generator of one image's transform in one epoch (independent of batch order)."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def sample(rng, limits=LIMITS):
    """One image's parameters: dx, dy (fraction of the side), scale, rotation (degrees),
    brightness (fraction of 255), contrast (factor)."""
    def uniform(key):
        return float(rng.uniform(-limits[key], limits[key]))

    return {"dx": uniform("shift"), "dy": uniform("shift"), "scale": 1.0 + uniform("scale"),
            "rotation": uniform("rotation"), "brightness": uniform("brightness"),
            "contrast": 1.0 + uniform("contrast")}


def forward_matrix(params, size):
    """(2, 3) affine map of pixel coordinates (x right, y down) of the input to the output:
    p_out = linear @ p_in + offset, a rotation about the centre, scaled, then shifted."""
    angle = math.radians(params["rotation"])
    linear = params["scale"] * np.array([[math.cos(angle), -math.sin(angle)],
                                         [math.sin(angle), math.cos(angle)]])
    centre = np.array([size / 2.0, size / 2.0])
    shift = np.array([params["dx"], params["dy"]]) * size
    offset = centre + shift - linear @ centre
    return np.column_stack([linear, offset])


def apply(image, params):
    """uint8 (S, S, 3) -> float32 (S, S, 3) in 0..255: geometry (bilinear, black outside the
    film), then contrast about the image mean and brightness, clipped to 0..255."""
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    if height != width:
        raise ValueError(f"expected a square image, got {width} x {height}")
    forward = np.vstack([forward_matrix(params, width), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]  # PIL maps each OUTPUT pixel back to the input
    moved = Image.fromarray(image).transform(
        (width, height), Image.Transform.AFFINE, data=tuple(inverse.ravel()),
        resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    pixels = np.asarray(moved, np.float32)
    mean = float(pixels.mean())
    pixels = (pixels - mean) * params["contrast"] + mean + params["brightness"] * 255.0
    return np.clip(pixels, 0.0, 255.0, out=pixels)


def augment(image, rng, limits=LIMITS):
    """One random anatomy-respecting variant of `image` (see the module docstring)."""
    return apply(image, sample(rng, limits))
