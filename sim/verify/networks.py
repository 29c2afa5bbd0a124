"""Integer layer-list networks with seeded random tensors, for the RTL tests: weights and
biases drawn at random, each layer's requantization shift chosen on the images it will see so
that its activations spread over 0..255 (neither all zero nor all saturated)."""

import numpy as np

from ...hw.model import QuantLayer, QuantNetwork
from ...hw.params import Conv2D, Dense, Flatten, MaxPool
from ..reference import golden


__all__ = ["random_qnet", "random_images"]


def random_images(network, count, seed):
    """``count`` uint8 images for ``network``'s input: smooth random blobs over noise."""
    rng = np.random.default_rng(seed)
    h, w, c = network.input
    yy, xx = np.mgrid[0:h, 0:w]
    images = rng.integers(0, 40, (count, h, w, c)).astype(np.float64)
    for image in images:
        for _ in range(3):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(3, h / 3))
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            image += 215 * blob[..., None] * rng.uniform(0.3, 1, c)
    return np.clip(images, 0, 255).astype(np.uint8)


def _shift_for(acc, mult):
    """The shift that puts the 95th percentile of ``acc * mult`` near 200."""
    top = max(1.0, float(np.percentile(acc * mult.astype(np.float64), 95)))
    return int(np.clip(np.round(np.log2(top / 200)), 1, 40))


def random_qnet(network, seed, images=None):
    """A :class:`QuantNetwork` for ``network`` with random int8 weights and random biases and
    multipliers; shifts set on ``images`` (default: :func:`random_images`, 16 of them)."""
    rng = np.random.default_rng(seed)
    x = random_images(network, 16, seed + 1) if images is None else images
    x = golden.as_images(x, network.input)
    layers = []
    for index, layer in enumerate(network.layers):
        if isinstance(layer, (Conv2D, Dense)):
            shape = network.weight_shape(index)
            w = rng.integers(-127, 128, shape).astype(np.int64)
            fan_in = network.fan_in(index)
            # Logits vary from image to image more than the last layer's biases do.
            spread = 300 if isinstance(layer, Conv2D) or layer.relu else 10
            b = rng.integers(-fan_in * spread, fan_in * spread + 1, shape[0]).astype(np.int64)
            if isinstance(layer, Conv2D) or layer.relu:
                mult = rng.integers(1 << 14, 1 << 16, shape[0]).astype(np.int64)
                if isinstance(layer, Conv2D):
                    acc = golden.conv_layer_acc(x, layer, w, b)
                else:
                    acc = x.astype(np.int64) @ w.T + b
                shift = _shift_for(acc, mult)
                x = golden.requantize(acc, mult, shift)
                layers.append(QuantLayer(w, b, mult, shift))
            else:
                layers.append(QuantLayer(w, b))
        elif isinstance(layer, MaxPool):
            x, _ = golden.maxpool(x, layer.size, layer.stride)
            layers.append(None)
        elif isinstance(layer, Flatten):
            x = x.reshape(len(x), -1)
            layers.append(None)
    return QuantNetwork(network=network, layers=layers, softmax_mult=int(rng.integers(200, 4000)),
                        softmax_shift=int(rng.integers(12, 20)))
