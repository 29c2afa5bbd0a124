"""The float reference network in numpy, with its backward pass and Adam.

Conv2D(F, KxK, valid, ReLU) -> MaxPool(p) -> Flatten -> Dense(classes) -> softmax, trained with
cross-entropy. Inputs are raw uint8 pixels scaled to [0, 1]. Layouts as in ``golden.py``
(channels last; dense features flattened as ``(y, x, c)``). Vectorized with im2col and BLAS
matrix products in float32.
"""

from dataclasses import dataclass

import numpy as np

from ...hw.params import NetworkConfig
from .golden import im2col


__all__ = ["FloatParams", "init_params", "forward", "softmax", "loss_and_grads", "Adam", "predict"]


@dataclass
class FloatParams:
    conv_w: np.ndarray   # (F, K, K, Cin)
    conv_b: np.ndarray   # (F,)
    dense_w: np.ndarray  # (classes, features)
    dense_b: np.ndarray  # (classes,)

    def arrays(self):
        return [self.conv_w, self.conv_b, self.dense_w, self.dense_b]


def init_params(config: NetworkConfig, rng):
    """Glorot-uniform kernels and zero biases (the Keras defaults)."""
    def glorot(shape, fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)
    k, f = config.kernel, config.filters
    conv_w = glorot((f, k, k, config.in_channels), config.taps, k * k * f)
    dense_w = glorot((config.classes, config.features), config.features, config.classes)
    return FloatParams(conv_w, np.zeros(f, np.float32), dense_w,
                       np.zeros(config.classes, np.float32))


def _images_float(images, config):
    x = np.asarray(images, np.float32) / np.float32(255)
    return x.reshape(len(x), config.input_size, config.input_size, config.in_channels)


def forward(params, config, images, keep=False):
    """Logits ``(N, classes)``; with ``keep`` also the tensors backward needs."""
    x = _images_float(images, config)
    cols = im2col(x, config.kernel)                                  # (N, H', W', taps)
    z = cols @ params.conv_w.reshape(config.filters, -1).T + params.conv_b
    a = np.maximum(z, 0)
    n, h, w, c = a.shape
    p = config.pool
    win = a.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4).reshape(
        n, h // p, w // p, c, p * p)
    arg = np.argmax(win, axis=-1)
    pooled = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    flat = pooled.reshape(n, -1)
    logits = flat @ params.dense_w.T + params.dense_b
    if keep:
        return logits, (cols, z, arg, flat)
    return logits


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(params, config, images, labels):
    """Mean cross-entropy and its gradients (a :class:`FloatParams` of gradients)."""
    logits, (cols, z, arg, flat) = forward(params, config, images, keep=True)
    n = len(labels)
    prob = softmax(logits)
    loss = -np.mean(np.log(prob[np.arange(n), labels] + 1e-12))
    dlogits = prob
    dlogits[np.arange(n), labels] -= 1
    dlogits /= n
    g_dense_w = dlogits.T @ flat
    g_dense_b = dlogits.sum(axis=0)
    dflat = dlogits @ params.dense_w                               # (N, features)
    p = config.pool
    ph = config.pool_size
    dpooled = dflat.reshape(n, ph, ph, config.filters)
    # Route each pooled gradient to the window position that won the max.
    dwin = np.zeros((n, ph, ph, config.filters, p * p), np.float32)
    np.put_along_axis(dwin, arg[..., None], dpooled[..., None], axis=-1)
    da = dwin.reshape(n, ph, ph, config.filters, p, p).transpose(0, 1, 4, 2, 5, 3).reshape(z.shape)
    dz = da * (z > 0)
    g_conv_w = (dz.reshape(-1, config.filters).T @ cols.reshape(-1, config.taps)).reshape(
        params.conv_w.shape)
    g_conv_b = dz.sum(axis=(0, 1, 2))
    return loss, FloatParams(g_conv_w, g_conv_b, g_dense_w, g_dense_b)


class Adam:
    """Adam (Kingma & Ba) with the Keras defaults: beta1 0.9, beta2 0.999, eps 1e-7."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = [np.zeros_like(a) for a in params.arrays()]
        self.v = [np.zeros_like(a) for a in params.arrays()]
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        lr_t = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        for a, g, m, v in zip(params.arrays(), grads.arrays(), self.m, self.v):
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            a -= (lr_t * m / (np.sqrt(v) + self.eps)).astype(a.dtype)


def predict(params, config, images, batch=2000):
    out = []
    for i in range(0, len(images), batch):
        out.append(np.argmax(forward(params, config, images[i:i + batch]), axis=1))
    return np.concatenate(out)
