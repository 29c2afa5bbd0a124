"""The data sets a network is trained and evaluated on: MNIST (28x28x1) and the synthetic
colour shapes (32x32x3, :mod:`cnnforge.shapes`)."""

from .errors import CnnforgeError

__all__ = ["NAMES", "for_input", "count", "load"]

NAMES = {"mnist": (28, 28, 1), "shapes": (32, 32, 3)}


def for_input(shape):
    """The data set whose images have ``shape`` (H, W, C); :class:`CnnforgeError` if none has."""
    for name, s in NAMES.items():
        if tuple(shape) == s:
            return name
    raise CnnforgeError(f"no data set has {'x'.join(map(str, shape))} images (MNIST: 28x28x1, "
                        f"shapes: 32x32x3)")


def count(name, split):
    """Images in data set ``name``'s ``split`` (known before any file is read)."""
    if name == "mnist":
        from .mnist import COUNTS
    else:
        from .shapes import COUNTS
    return COUNTS[split]


def load(name, split, mnist_dir=None):
    """``(images (N, H, W, C) uint8, labels)`` of data set ``name``'s ``split``."""
    if name == "mnist":
        from . import mnist
        images, labels = mnist.load(split, mnist_dir)
        return images[..., None], labels
    if name == "shapes":
        from . import shapes
        return shapes.load(split)
    raise CnnforgeError(f"unknown data set {name!r} (one of {', '.join(NAMES)})")
