"""The bit-exact integer model: the oracle every RTL block is checked against.

Pure integer arithmetic on numpy arrays (matrix products run in float64, which is exact here:
every partial sum is far below 2**53 — see :class:`cnnforge.hw.params.Widths`).

Layouts (channels last, as the RTL streams them):

* images ``(N, H, W)`` or ``(N, H, W, Cin)`` uint8, raw pixels 0..255;
* ``conv_w`` ``(F, K, K, Cin)`` int8, ``conv_b`` ``(F,)`` int32;
* ``requant_mult`` ``(F,)`` uint16 and one ``requant_shift``;
* ``dense_w`` ``(classes, features)`` int8 with features flattened as ``(y, x, c)``,
  ``dense_b`` ``(classes,)`` int32.

Rules shared with the RTL:

* requantization: ``clip((acc * mult + 2**(shift-1)) >> shift, 0, 255)`` — rounding half up
  (towards +inf), ReLU fused as the lower clip;
* max-pool and argmax: the first maximum in raster order wins (strictly greater replaces);
* softmax: :func:`softmax_int`.
"""

from dataclasses import dataclass

import numpy as np

from ...hw.model import QuantLayer, QuantModel, QuantNetwork
from ...hw.params import Conv2D, Flatten, MaxPool, SoftmaxFormat, Widths


__all__ = ["QuantModel", "QuantLayer", "QuantNetwork", "Inference", "NetworkInference",
           "LayerResult", "as_images", "pad", "im2col", "requantize", "conv_acc", "conv_layer_acc",
           "maxpool", "dense", "softmax_int", "infer_int", "infer_network", "predict_int",
           "SOFTMAX"]


SOFTMAX = SoftmaxFormat()


@dataclass
class LayerResult:
    """What one layer of :func:`infer_int` computed."""
    out: np.ndarray                   # uint8 activations (N, H, W, C) or (N, units); the logits
                                      # (int64) of the last layer
    acc: np.ndarray = None            # int64 accumulators with bias (conv and dense layers)
    argmax: np.ndarray = None         # uint8 raster position of the maximum in each pool window


@dataclass
class NetworkInference:
    """Every intermediate tensor of :func:`infer_int`, per layer."""
    layers: list              # one LayerResult per layer of the network
    logits: np.ndarray        # (N, classes) int64
    probs: np.ndarray         # (N, classes) int64, Q15
    cls: np.ndarray           # (N,) int64


@dataclass
class Inference(NetworkInference):
    """:class:`NetworkInference` of a :class:`QuantModel` (Conv -> MaxPool -> Dense), with the
    tensors under the names the accelerator's blocks use."""
    conv_acc: np.ndarray = None      # (N, H', W', F) int64, bias included
    act: np.ndarray = None           # (N, H', W', F) uint8, requantized + ReLU
    pooled: np.ndarray = None        # (N, P, P, F) uint8
    pool_argmax: np.ndarray = None   # (N, P, P, F) uint8, raster position inside the window


def as_images(images, shape):
    """``images`` as ``(N, H, W, C)`` uint8 for an input ``shape`` ``(H, W, C)``; one image or a
    batch, the channel axis optional when ``C`` is 1."""
    images = np.asarray(images)
    h, w, c = shape
    if images.ndim == 2 or (images.ndim == 3 and images.shape == (h, w, c) and c != 1):
        images = images[None]
    if images.ndim == 3 and c == 1:
        images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (h, w, c):
        raise ValueError(f"images must have shape (N, {h}, {w}{', 1' if c == 1 else ''}) or "
                         f"(N, {h}, {w}, {c}), not {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, not {images.dtype}")
    return images


def _as_images(images, config):
    return as_images(images, (config.input_size, config.input_size, config.in_channels))


def _exact_matmul(a, b):
    """Integer matrix product via float64 (exact: all sums here stay below 2**53)."""
    return np.rint(np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.int64)


def pad(images, pads):
    """Zero rows/columns ``(top, left, bottom, right)`` around ``(N, H, W, C)`` maps."""
    top, left, bottom, right = pads
    if not any(pads):
        return images
    return np.pad(images, ((0, 0), (top, bottom), (left, right), (0, 0)))


def im2col(images, kernel, stride=1):
    """``(N, H, W, C)`` -> ``(N, H', W', K*K*C)`` windows every ``stride`` pixels, tap order
    ``(ky, kx, c)``."""
    n, h, w, c = images.shape
    view = np.lib.stride_tricks.sliding_window_view(images, (kernel, kernel), axis=(1, 2))
    view = view[:, ::stride, ::stride]
    # view: (N, H', W', C, K, K) -> (N, H', W', K, K, C)
    return view.transpose(0, 1, 2, 4, 5, 3).reshape(*view.shape[:3], kernel * kernel * c)


def conv_layer_acc(images, layer, w, b):
    """Accumulators with bias ``(N, H', W', F)`` int64 of a :class:`Conv2D` ``layer`` with int8
    weights ``w`` ``(F, K, K, Cin)`` and bias ``b`` on uint8 maps ``(N, H, W, Cin)``."""
    x = pad(images, layer.pads(*images.shape[1:3]))
    cols = im2col(x, layer.kernel, layer.stride)
    return _exact_matmul(cols, w.reshape(len(w), -1).T) + b.astype(np.int64)


def conv_acc(model, images):
    """Conv accumulators with bias: ``(N, H', W', F)`` int64."""
    cfg = model.config
    images = _as_images(images, cfg)
    cols = im2col(images, cfg.kernel)
    w = model.conv_w.reshape(cfg.filters, cfg.taps).T
    return _exact_matmul(cols, w) + model.conv_b.astype(np.int64)


def requantize(acc, mult, shift):
    """``clip((acc * mult + 2**(shift-1)) >> shift, 0, 255)`` as uint8 (ReLU fused)."""
    acc = np.asarray(acc, np.int64)
    mult = np.asarray(mult, np.int64)
    rounded = (acc * mult + (1 << (shift - 1))) >> shift
    return np.clip(rounded, 0, Widths.act_max).astype(np.uint8)


def maxpool(act, size, stride=None):
    """``(N, H, W, C)`` -> pooled ``(N, H', W', C)`` and argmax position ``dy*size + dx`` of
    ``size`` x ``size`` windows every ``stride`` (default ``size``) pixels.

    The first maximum in raster order inside the window wins.
    """
    stride = size if stride is None else stride
    n, h, w, c = act.shape
    if stride == size and h % size == 0 and w % size == 0:
        win = act.reshape(n, h // size, size, w // size, size, c).transpose(0, 1, 3, 5, 2, 4)
        win = win.reshape(n, h // size, w // size, c, size * size)
    else:
        win = np.lib.stride_tricks.sliding_window_view(act, (size, size), axis=(1, 2))
        win = win[:, ::stride, ::stride]
        win = win.reshape(*win.shape[:4], size * size)
    arg = np.argmax(win, axis=-1)   # numpy returns the first maximum
    pooled = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    return pooled.astype(np.uint8), arg.astype(np.uint8)


def dense(model, pooled):
    """Logits ``(N, classes)`` int64 from pooled ``(N, P, P, F)`` uint8."""
    flat = pooled.reshape(pooled.shape[0], -1)
    return _exact_matmul(flat, model.dense_w.T) + model.dense_b.astype(np.int64)


def softmax_int(logits, mult, shift, fmt=SOFTMAX):
    """Integer softmax approximation: Q15 probabilities from integer logits.

    1. ``d = max(logits) - logit`` (>= 0);
    2. ``t = (d * mult + 2**(shift-1)) >> shift``: ``d`` in base 2, ``frac_bits`` fraction bits;
    3. ``e = exp2_table[t mod 2**frac_bits] >> (t >> frac_bits)`` (0 once ``t >= t_max``);
    4. ``S = sum(e)``; ``n = bitlength(S) - 1`` (>= 15); ``m = S >> (n - 15)`` in ``[2**15, 2**16)``;
    5. ``x0 = recip_table[(m >> (15 - recip_index_bits)) mod 2**recip_index_bits]``;
       ``x1 = (x0 * (2**31 - m * x0)) >> 30`` (one Newton step);
    6. ``p = (e * x1 + 2**(n-1)) >> n``.
    """
    logits = np.asarray(logits, np.int64)
    squeeze = logits.ndim == 1
    logits = np.atleast_2d(logits)
    d = logits.max(axis=1, keepdims=True) - logits
    t = (d * int(mult) + (1 << (int(shift) - 1))) >> int(shift)
    t = np.minimum(t, fmt.t_max)
    frac_mask = (1 << fmt.frac_bits) - 1
    e = fmt.exp2_table()[t & frac_mask] >> np.minimum(t >> fmt.frac_bits, fmt.exp_bits)
    total = e.sum(axis=1, keepdims=True)
    n = np.frexp(total.astype(np.float64))[1].astype(np.int64) - 1   # bit length - 1, exact
    m = total >> (n - 15)
    idx = (m >> (15 - fmt.recip_index_bits)) & ((1 << fmt.recip_index_bits) - 1)
    x0 = fmt.recip_table()[idx]
    x1 = (x0 * ((1 << 31) - m * x0)) >> 30
    p = (e * x1 + (1 << (n - 1))) >> n
    return p[0] if squeeze else p


def infer_network(qnet, images):
    """Run the integer layer-list network :class:`QuantNetwork` ``qnet`` on ``images``."""
    net = qnet.network
    x = as_images(images, net.input)
    results = []
    for index, layer in enumerate(net.layers):
        p = qnet.layers[index]
        if isinstance(layer, Conv2D):
            acc = conv_layer_acc(x, layer, p.w, p.b)
            x = requantize(acc, p.mult, p.shift)
            results.append(LayerResult(out=x, acc=acc))
        elif isinstance(layer, MaxPool):
            x, arg = maxpool(x, layer.size, layer.stride)
            results.append(LayerResult(out=x, argmax=arg))
        elif isinstance(layer, Flatten):
            x = x.reshape(len(x), -1)
            results.append(LayerResult(out=x))
        else:
            acc = _exact_matmul(x, p.w.T) + p.b.astype(np.int64)
            x = acc if p.mult is None else requantize(acc, p.mult, p.shift)
            results.append(LayerResult(out=x, acc=acc))
    logits = results[-1].acc
    probs = softmax_int(logits, qnet.softmax_mult, qnet.softmax_shift)
    return NetworkInference(layers=results, logits=logits, probs=probs,
                            cls=np.argmax(logits, axis=1))


def infer_int(model, images):
    """Run the integer network on ``images`` (one image or a batch).

    ``model`` is a :class:`QuantNetwork` (any layer list) or a :class:`QuantModel` (the network
    the accelerator builds today: its result also names the conv, ReLU and pool tensors).

    Returns
    -------
    :class:`NetworkInference` or :class:`Inference`
        Logits, class and probabilities, and every intermediate tensor.
    """
    if isinstance(model, QuantNetwork):
        return infer_network(model, images)
    images = _as_images(images, model.config)
    r = infer_network(model.to_network(), images)
    conv, pool = r.layers[0], r.layers[1]
    return Inference(layers=r.layers, logits=r.logits, probs=r.probs, cls=r.cls,
                     conv_acc=conv.acc, act=conv.out, pooled=pool.out, pool_argmax=pool.argmax)


def predict_int(model, images, batch=500):
    """Classes only, batched to bound memory."""
    shape = model.network.input if isinstance(model, QuantNetwork) else (
        model.config.input_size, model.config.input_size, model.config.in_channels)
    images = as_images(images, shape)
    out = []
    for i in range(0, len(images), batch):
        out.append(infer_int(model, images[i:i + batch]).cls)
    return np.concatenate(out) if out else np.zeros(0, np.int64)
