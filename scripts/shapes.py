"""A small synthetic colour data set for 3-channel networks: 32x32 RGB images of one filled
shape each — square, disk, triangle or plus — in a random colour, size and place on a random
background, with noise. Generated from a seed (no download); the same seed gives the same
images on every machine (integer arithmetic after numpy's PCG64 draws).
"""

import numpy as np

__all__ = ["CLASSES", "SIZE", "COUNTS", "load"]

CLASSES = ("square", "disk", "triangle", "plus")
SIZE = 32
COUNTS = {"train": 20_000, "test": 4_000}
_SEEDS = {"train": 2024, "test": 7}


def _masks(kind, cy, cx, r):
    """Boolean ``(N, SIZE, SIZE)`` masks of shape ``kind`` centred at ``(cy, cx)``, half-size
    ``r``."""
    y, x = np.mgrid[:SIZE, :SIZE]
    dy, dx = y[None] - cy[:, None, None], x[None] - cx[:, None, None]
    r = r[:, None, None]
    if kind == 0:
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if kind == 1:
        return dy * dy + dx * dx <= r * r
    if kind == 2:                                   # apex up, base at dy = r
        return (dy <= r) & (2 * np.abs(dx) <= dy + r)
    arm = np.maximum(r // 3, 1)
    return ((np.abs(dy) <= r) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= r) & (np.abs(dy) <= arm))


def load(split):
    """``(images (N, 32, 32, 3) uint8, labels (N,) uint8)`` of ``split`` ("train" or "test")."""
    if split not in COUNTS:
        raise ValueError(f"split must be one of {', '.join(COUNTS)}, not {split!r}")
    rng = np.random.default_rng(_SEEDS[split])
    n = COUNTS[split]
    labels = rng.integers(0, len(CLASSES), n).astype(np.uint8)
    r = rng.integers(4, 10, n)
    cy = rng.integers(0, SIZE, n) % (SIZE - 2 * r) + r
    cx = rng.integers(0, SIZE, n) % (SIZE - 2 * r) + r
    background = rng.integers(0, 256, (n, 3))
    # The shape's colour differs from the background by at least 96 in some channel.
    delta = rng.integers(96, 160, (n, 3)) * rng.choice([-1, 1], (n, 3))
    foreground = np.where((background + delta >= 0) & (background + delta <= 255),
                          background + delta, background - delta)
    noise = rng.integers(-24, 25, (n, SIZE, SIZE, 3))
    mask = np.zeros((n, SIZE, SIZE), bool)
    for kind in range(len(CLASSES)):
        sel = labels == kind
        mask[sel] = _masks(kind, cy[sel], cx[sel], r[sel])
    images = np.where(mask[..., None], foreground[:, None, None], background[:, None, None])
    return np.clip(images + noise, 0, 255).astype(np.uint8), labels
