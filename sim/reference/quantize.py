"""Float network -> integer network (post-training quantization).

* pixels: uint8 as they come (scale 1/255);
* conv weights: symmetric int8 per output channel, ``s_w[c] = max|w[c]| / 127``;
* conv bias: ``round(b / (s_x * s_w[c]))``, clipped to the bound in :class:`Widths`;
* activations: uint8 with scale ``s_a`` calibrated on held-out images; the requantization
  factor ``s_x * s_w[c] / s_a`` becomes ``requant_mult[c] / 2**requant_shift`` (uint16, one
  shift for all channels);
* dense weights: symmetric int8 per tensor; dense bias ``round(b / (s_a * s_d))``;
* softmax: ``s_a * s_d * log2(e) * 2**frac_bits`` becomes ``softmax_mult / 2**softmax_shift``.
"""

import math

import numpy as np

from ...hw.params import Widths
from .golden import QuantModel, SOFTMAX, predict_int


__all__ = ["quantize", "mult_shift", "calibrate"]


def mult_shift(ratios, mult_bits, shift_max):
    """Largest shift with ``round(max(ratios) * 2**shift) < 2**mult_bits``; the multipliers."""
    ratios = np.atleast_1d(np.asarray(ratios, np.float64))
    top = float(ratios.max())
    if not top > 0:
        raise ValueError(f"scale ratios must be positive, not {top!r}")
    shift = int(math.floor(math.log2(((1 << mult_bits) - 1) / top)))
    while np.rint(top * 2.0 ** shift) >= (1 << mult_bits):
        shift -= 1
    shift = min(shift, shift_max)
    if shift < 1:
        raise ValueError(f"scale ratio {top!r} too large for a {mult_bits}-bit multiplier")
    return np.rint(ratios * 2.0 ** shift).astype(np.int64), shift


def _sym_int8(w, axis=None):
    scale = np.abs(w).max(axis=axis, keepdims=axis is not None) / Widths.weight_max
    scale = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(w / scale), -Widths.weight_max, Widths.weight_max).astype(np.int8)
    return q, scale


def quantize(params, config, act_scale):
    """The integer network for float ``params`` with activation scale ``act_scale``."""
    widths = Widths(config)
    s_x = 1.0 / widths.pixel_max
    conv_w, s_w = _sym_int8(params.conv_w.astype(np.float64), axis=(1, 2, 3))
    s_w = s_w.reshape(-1)
    conv_b = np.clip(np.rint(params.conv_b / (s_x * s_w)), -widths.conv_bias_max,
                     widths.conv_bias_max).astype(np.int32)
    mult, shift = mult_shift(s_x * s_w / act_scale, widths.requant_mult, widths.requant_shift_max)
    dense_w, s_d = _sym_int8(params.dense_w.astype(np.float64))
    s_d = float(s_d)
    dense_b = np.clip(np.rint(params.dense_b / (act_scale * s_d)), -widths.dense_bias_max,
                      widths.dense_bias_max).astype(np.int32)
    sm_ratio = act_scale * s_d * math.log2(math.e) * (1 << SOFTMAX.frac_bits)
    sm_mult, sm_shift = mult_shift(sm_ratio, SOFTMAX.mult_bits, 62)
    return QuantModel(config=config, conv_w=conv_w, conv_b=conv_b,
                      requant_mult=mult.astype(np.uint16), requant_shift=shift,
                      dense_w=dense_w, dense_b=dense_b,
                      softmax_mult=int(sm_mult[0]), softmax_shift=sm_shift)


def relu_outputs(params, config, images):
    """Float conv+ReLU outputs of ``images`` (for calibration), flattened."""
    x = np.asarray(images, np.float32) / 255
    x = x.reshape(len(x), config.input_size, config.input_size, config.in_channels)
    from .golden import im2col
    z = im2col(x, config.kernel) @ params.conv_w.reshape(config.filters, -1).T + params.conv_b
    return np.maximum(z, 0).reshape(-1)


PERCENTILES = (100.0, 99.999, 99.99, 99.95, 99.9)


def calibrate(params, config, images, labels):
    """Pick the activation scale (a percentile of ReLU outputs / 255) that classifies ``images``
    best as integers. Returns ``(act_scale, model, accuracy, percentile)``."""
    acts = relu_outputs(params, config, images[:1000])
    best = None
    for pct in PERCENTILES:
        scale = float(np.percentile(acts, pct)) / Widths.act_max
        model = quantize(params, config, scale)
        acc = float(np.mean(predict_int(model, images) == labels))
        if best is None or acc > best[2]:
            best = (scale, model, acc, pct)
    return best
