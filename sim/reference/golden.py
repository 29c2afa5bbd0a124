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

from ...hw.model import QuantModel
from ...hw.params import SoftmaxFormat, Widths


__all__ = ["QuantModel", "Inference", "requantize", "conv_acc", "maxpool", "dense",
           "softmax_int", "infer_int", "SOFTMAX"]


SOFTMAX = SoftmaxFormat()


@dataclass
class Inference:
    """Every intermediate tensor of :func:`infer_int`, for block-level comparison."""
    conv_acc: np.ndarray      # (N, H', W', F) int64, bias included
    act: np.ndarray           # (N, H', W', F) uint8, requantized + ReLU
    pooled: np.ndarray        # (N, P, P, F) uint8
    pool_argmax: np.ndarray   # (N, P, P, F) uint8, raster position inside the window
    logits: np.ndarray        # (N, classes) int64
    probs: np.ndarray         # (N, classes) int64, Q15
    cls: np.ndarray           # (N,) int64


def _as_images(images, config):
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 3:
        images = images[..., None]
    expect = (config.input_size, config.input_size, config.in_channels)
    if images.ndim != 4 or images.shape[1:] != expect:
        raise ValueError(f"images must have shape (N, {expect[0]}, {expect[1]}[, {expect[2]}]), "
                         f"not {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, not {images.dtype}")
    return images


def _exact_matmul(a, b):
    """Integer matrix product via float64 (exact: all sums here stay below 2**53)."""
    return np.rint(np.asarray(a, np.float64) @ np.asarray(b, np.float64)).astype(np.int64)


def im2col(images, kernel):
    """``(N, H, W, C)`` -> ``(N, H', W', K*K*C)`` windows, tap order ``(ky, kx, c)``."""
    n, h, w, c = images.shape
    out = h - kernel + 1
    view = np.lib.stride_tricks.sliding_window_view(images, (kernel, kernel), axis=(1, 2))
    # view: (N, H', W', C, K, K) -> (N, H', W', K, K, C)
    return view.transpose(0, 1, 2, 4, 5, 3).reshape(n, out, out, kernel * kernel * c)


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


def maxpool(act, pool):
    """``(N, H, W, C)`` -> pooled ``(N, H/p, W/p, C)`` and argmax position ``dy*p + dx``.

    The first maximum in raster order inside the window wins.
    """
    n, h, w, c = act.shape
    win = act.reshape(n, h // pool, pool, w // pool, pool, c).transpose(0, 1, 3, 5, 2, 4)
    win = win.reshape(n, h // pool, w // pool, c, pool * pool)
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


def infer_int(model, images):
    """Run the integer network on ``images`` (one ``(H, W)`` image or a batch).

    Returns
    -------
    :class:`Inference`
        Logits, class and probabilities, and every intermediate tensor.
    """
    cfg = model.config
    acc = conv_acc(model, images)
    act = requantize(acc, model.requant_mult, model.requant_shift)
    pooled, arg = maxpool(act, cfg.pool)
    logits = dense(model, pooled)
    probs = softmax_int(logits, model.softmax_mult, model.softmax_shift)
    return Inference(conv_acc=acc, act=act, pooled=pooled, pool_argmax=arg, logits=logits,
                     probs=probs, cls=np.argmax(logits, axis=1))


def predict_int(model, images, batch=1000):
    """Classes only, batched to bound memory."""
    images = _as_images(images, model.config)
    out = []
    for i in range(0, len(images), batch):
        out.append(infer_int(model, images[i:i + batch]).cls)
    return np.concatenate(out) if out else np.zeros(0, np.int64)
