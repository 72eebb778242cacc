"""A procedurally generated 10-class 32x32 RGB image set, deterministic in its seed.

Class = shape x fill: five shapes (circle, ring, square, triangle, cross), each solid or striped.
Everything else is a nuisance a classifier must learn to ignore: position, size, rotation,
colours (drawn independently of the class), a background gradient, small clutter blobs and
pixel noise. That keeps the set learnable by a small CNN in a few epochs without being trivial.
"""

import numpy as np

SHAPES = ("circle", "ring", "square", "triangle", "cross")
FILLS = ("solid", "striped")
CLASS_NAMES = tuple(f"{shape}-{fill}" for shape in SHAPES for fill in FILLS)
SIZE = 32

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5


def _contrasting_colour(rng, other, min_distance=90.0):
    # Rejection sampling keeps the shape visible; a few tries always suffice in RGB space.
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - other) >= min_distance:
            return colour
    return 255.0 - other


def _shape_mask(shape, u, v, radius):
    d2 = u * u + v * v
    if shape == "circle":
        return d2 <= radius**2
    if shape == "ring":
        return (d2 <= radius**2) & (d2 >= (0.55 * radius) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if shape == "triangle":
        # Three half-planes whose normals are 120 degrees apart: an equilateral triangle
        # with circumradius `radius`.
        mask = np.ones_like(u, dtype=bool)
        for k in range(3):
            angle = 2.0 * np.pi * k / 3.0
            mask &= u * np.cos(angle) + v * np.sin(angle) <= 0.5 * radius
        return mask
    if shape == "cross":
        arm = 0.3 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= radius)
        )
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def render(label, rng):
    """One (32, 32, 3) uint8 RGB image of class `label`, drawn with the numpy Generator `rng`."""
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label {label} out of range 0..{len(CLASS_NAMES) - 1}")
    shape, striped = SHAPES[label // len(FILLS)], FILLS[label % len(FILLS)] == "striped"

    base = rng.uniform(0, 255, 3)
    gradient = rng.normal(0.0, 2.0, (2, 3))
    image = (
        base + (_X - SIZE / 2)[..., None] * gradient[0] + (_Y - SIZE / 2)[..., None] * gradient[1]
    )

    for _ in range(rng.integers(0, 3)):
        cx, cy, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(1.0, 2.5)
        image[(_X - cx) ** 2 + (_Y - cy) ** 2 <= r * r] = rng.uniform(0, 255, 3)

    radius = rng.uniform(8.0, 13.0)
    cx, cy = rng.uniform(0.6 * radius, SIZE - 0.6 * radius, 2)
    theta = rng.uniform(-0.4, 0.4)
    u = (_X - cx) * np.cos(theta) + (_Y - cy) * np.sin(theta)
    v = -(_X - cx) * np.sin(theta) + (_Y - cy) * np.cos(theta)
    mask = _shape_mask(shape, u, v, radius)

    colour = _contrasting_colour(rng, base)
    fill = np.broadcast_to(colour, image.shape)
    if striped:
        second = _contrasting_colour(rng, colour)
        phi, period, phase = rng.uniform(0.0, np.pi), rng.uniform(4.0, 6.0), rng.uniform()
        band = ((_X * np.cos(phi) + _Y * np.sin(phi)) / period + phase) % 1.0 < 0.5
        fill = np.where(band[..., None], colour, second)
    image = np.where(mask[..., None], fill, image)

    image += rng.normal(0.0, rng.uniform(3.0, 12.0), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate(count, seed):
    """`count` images with balanced labels in random order: (images (N,32,32,3) uint8 RGB,
    labels (N,) int64)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASS_NAMES))
    images = np.empty((count, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = render(int(label), rng)
    return images, labels
