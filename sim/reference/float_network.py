"""The float model of any layer-list network (:class:`~cnnforge.hw.params.Network`) in numpy:
forward, backward and the parameters Adam trains.

Layouts as in the integer oracle (``golden.py``): channels last, conv weights ``(F, K, K, Cin)``,
dense weights ``(units, fan_in)``, Flatten in ``(y, x, c)`` order. The input is raw uint8 pixels
mapped per channel to ``pixel * input_scale + input_offset`` (``1/255`` and ``0`` unless an
imported model says otherwise); zero padding is applied after that mapping, as the frameworks
do. Matrix products in float32 (float64 with ``dtype=np.float64``, for import checks).
"""

from dataclasses import dataclass, field

import numpy as np

from ...hw.params import Conv2D, Dense, Flatten, MaxPool, Network
from .float_model import softmax
from .golden import im2col, pad


__all__ = ["FloatNetwork", "init_network", "forward", "loss_and_grads", "predict"]


@dataclass
class FloatNetwork:
    """Float weights of a :class:`Network`: ``weights[i]``/``biases[i]`` for each conv or dense
    layer ``i`` (``None`` for the others), and the per-channel input mapping."""
    network: Network
    weights: list
    biases: list
    input_scale: np.ndarray = None
    input_offset: np.ndarray = None

    def __post_init__(self):
        c = self.network.input[2]
        if self.input_scale is None:
            self.input_scale = np.full(c, 1 / 255, np.float64)
        if self.input_offset is None:
            self.input_offset = np.zeros(c, np.float64)
        self.input_scale = np.asarray(self.input_scale, np.float64).reshape(c)
        self.input_offset = np.asarray(self.input_offset, np.float64).reshape(c)

    def arrays(self):
        """The trainable arrays, in a fixed order (what :class:`~.float_model.Adam` updates)."""
        out = []
        for w, b in zip(self.weights, self.biases):
            if w is not None:
                out += [w, b]
        return out

    def copy(self):
        return FloatNetwork(self.network, [None if w is None else w.copy() for w in self.weights],
                            [None if b is None else b.copy() for b in self.biases],
                            self.input_scale.copy(), self.input_offset.copy())

    def astype(self, dtype):
        return FloatNetwork(self.network,
                            [None if w is None else w.astype(dtype) for w in self.weights],
                            [None if b is None else b.astype(dtype) for b in self.biases],
                            self.input_scale, self.input_offset)


@dataclass
class _Grads:
    arrays_: list = field(default_factory=list)

    def arrays(self):
        return self.arrays_


def init_network(network, rng):
    """Glorot-uniform kernels and zero biases (the Keras defaults), in layer order."""
    weights, biases = [], []
    for index, layer in enumerate(network.layers):
        if not isinstance(layer, (Conv2D, Dense)):
            weights.append(None)
            biases.append(None)
            continue
        shape = network.weight_shape(index)
        fan_in = network.fan_in(index)
        fan_out = shape[0] * (layer.kernel ** 2 if isinstance(layer, Conv2D) else 1)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        biases.append(np.zeros(shape[0], np.float32))
    return FloatNetwork(network, weights, biases)


def _input(params, images, dtype):
    net = params.network
    x = np.asarray(images).reshape(len(images), *net.input).astype(dtype)
    return x * params.input_scale.astype(dtype) + params.input_offset.astype(dtype)


def _pool_windows(x, layer):
    n, h, w, c = x.shape
    s, k = layer.stride, layer.size
    if s == k and h % k == 0 and w % k == 0:
        win = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 5, 2, 4)
        return win.reshape(n, h // k, w // k, c, k * k)
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s]
    return win.reshape(*win.shape[:4], k * k)


def forward(params, images, keep=False, dtype=np.float32):
    """Logits ``(N, classes)``; with ``keep`` also what :func:`loss_and_grads` needs."""
    net = params.network
    x = _input(params, images, dtype)
    cache = []
    for index, layer in enumerate(net.layers):
        w, b = params.weights[index], params.biases[index]
        if isinstance(layer, Conv2D):
            cols = im2col(pad(x, layer.pads(*x.shape[1:3])), layer.kernel, layer.stride)
            z = cols @ w.reshape(len(w), -1).T.astype(dtype) + b.astype(dtype)
            cache.append((x.shape, cols, z))
            x = np.maximum(z, 0)
        elif isinstance(layer, MaxPool):
            win = _pool_windows(x, layer)
            arg = np.argmax(win, axis=-1)
            cache.append((x.shape, arg))
            x = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
        elif isinstance(layer, Flatten):
            cache.append((x.shape,))
            x = x.reshape(len(x), -1)
        else:
            z = x @ w.T.astype(dtype) + b.astype(dtype)
            cache.append((x, z))
            x = np.maximum(z, 0) if layer.relu else z
    return (x, cache) if keep else x


def _unpool(dy, shape, arg, layer):
    """Route each pooled gradient to the input that won its window."""
    n, h, w, c = shape
    s, k = layer.stride, layer.size
    ho, wo = dy.shape[1:3]
    if s == k and h % k == 0 and w % k == 0:
        dwin = np.zeros((n, ho, wo, c, k * k), dy.dtype)
        np.put_along_axis(dwin, arg[..., None], dy[..., None], axis=-1)
        return dwin.reshape(n, ho, wo, c, k, k).transpose(0, 1, 4, 2, 5, 3).reshape(shape)
    dx = np.zeros(shape, dy.dtype)
    nn, oy, ox, cc = np.indices(arg.shape)
    np.add.at(dx, (nn, oy * s + arg // k, ox * s + arg % k, cc), dy)
    return dx


def _col2im(dcols, shape, layer):
    """The gradient of ``im2col(pad(x))`` with respect to ``x`` of ``shape``."""
    n, h, w, c = shape
    top, left, bottom, right = layer.pads(h, w)
    k, s = layer.kernel, layer.stride
    ho, wo = dcols.shape[1:3]
    dcols = dcols.reshape(n, ho, wo, k, k, c)
    dxp = np.zeros((n, h + top + bottom, w + left + right, c), dcols.dtype)
    for ky in range(k):
        for kx in range(k):
            dxp[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s] += dcols[:, :, :, ky, kx]
    return dxp[:, top:top + h, left:left + w]


def loss_and_grads(params, images, labels):
    """Mean cross-entropy and its gradients (an object whose ``arrays()`` follow
    :meth:`FloatNetwork.arrays`)."""
    net = params.network
    logits, cache = forward(params, images, keep=True)
    n = len(labels)
    prob = softmax(logits)
    loss = -np.mean(np.log(prob[np.arange(n), labels] + 1e-12))
    dy = prob
    dy[np.arange(n), labels] -= 1
    dy /= n
    grads = [None] * len(net.layers)
    first_param = net.param_layers()[0]
    for index in range(len(net.layers) - 1, -1, -1):
        layer, c = net.layers[index], cache[index]
        if isinstance(layer, Dense):
            x, z = c
            dz = dy * (z > 0) if layer.relu else dy
            grads[index] = (dz.T @ x, dz.sum(axis=0))
            if index > first_param:
                dy = dz @ params.weights[index]
        elif isinstance(layer, Flatten):
            dy = dy.reshape(c[0])
        elif isinstance(layer, MaxPool):
            dy = _unpool(dy, c[0], c[1], layer)
        else:
            shape, cols, z = c
            dz = dy * (z > 0)
            f = layer.filters
            grads[index] = ((dz.reshape(-1, f).T @ cols.reshape(-1, cols.shape[-1])).reshape(
                params.weights[index].shape), dz.sum(axis=(0, 1, 2)))
            if index > first_param:
                dy = _col2im(dz @ params.weights[index].reshape(f, -1), shape, layer)
        if index <= first_param and grads[first_param] is not None:
            break
    out = []
    for g in grads:
        if g is not None:
            out += [g[0].astype(np.float32), g[1].astype(np.float32)]
    return loss, _Grads(out)


def predict(params, images, batch=1000):
    out = [np.argmax(forward(params, images[i:i + batch]), axis=1)
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.int64)
