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

from ...hw.params import ConfigError, Conv2D, MaxPool, Widths
from .golden import QuantLayer, QuantModel, QuantNetwork, SOFTMAX, predict_int


__all__ = ["quantize", "mult_shift", "calibrate", "fold_input", "quantize_network",
           "relu_activations", "calibrate_network"]


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


# --- Layer-list networks ------------------------------------------------------------------------


def fold_input(params):
    """The first layer's float weights and bias with the input mapping ``pixel * scale + offset``
    folded in, so that the integer network reads raw pixels.

    A nonzero offset folds exactly only where the first layer never sees padding: zero padding
    of a mean-subtracted input is a padding with ``offset``, not with pixel 0.
    """
    net = params.network
    index = net.param_layers()[0]
    layer = net.layers[index]
    w = params.weights[index].astype(np.float64)
    b = params.biases[index].astype(np.float64)
    scale, offset = params.input_scale, params.input_offset
    if index > 0 and any(isinstance(l, MaxPool) for l in net.layers[:index]) and \
            (np.any(scale <= 0)):
        raise ConfigError("input: a max-pool before the first weights needs a positive input "
                          "scale")
    if isinstance(layer, Conv2D):
        if np.any(offset != 0) and layer.pads(*net.input[:2]) != (0, 0, 0, 0):
            raise ConfigError(f"layer {index} (conv2d): its zero padding of the offset input "
                              f"(pixel * scale + offset, offset {offset.tolist()}) is not a pad "
                              f"of pixel 0; the integer network cannot fold it")
        wf = w * scale                              # (F, K, K, Cin) * (Cin,)
        bf = b + (w * offset).sum(axis=(1, 2, 3))
    else:
        c = net.input[2]
        per_feature_scale = np.resize(scale, w.shape[1])   # flatten order (y, x, c)
        per_feature_offset = np.resize(offset, w.shape[1])
        assert w.shape[1] % c == 0
        wf = w * per_feature_scale
        bf = b + w @ per_feature_offset
    return index, wf, bf


def quantize_network(params, act_scales):
    """The :class:`QuantNetwork` of the float network ``params`` with activation scale
    ``act_scales[i]`` after each conv or hidden dense layer ``i``.

    Per-output-channel symmetric int8 weights (per tensor on the last layer, whose logits share
    one scale); biases in the accumulator's scale, clipped to the layer's bound; one requantization
    shift per layer with per-channel uint16 multipliers; the input mapping folded into the first
    layer (:func:`fold_input`), so the integer input is the raw pixel (scale 1).
    """
    net = params.network
    first, w0, b0 = fold_input(params)
    s_in = 1.0
    layers = [None] * len(net.layers)
    for index in net.param_layers():
        layer = net.layers[index]
        widths = net.layer_widths(index)
        w = w0 if index == first else params.weights[index].astype(np.float64)
        b = b0 if index == first else params.biases[index].astype(np.float64)
        last = index == len(net.layers) - 1
        if last:
            q, s_w = _sym_int8(w)
            s_w = np.full(len(w), float(s_w))
        else:
            q, s_w = _sym_int8(w, axis=tuple(range(1, w.ndim)))
            s_w = s_w.reshape(-1)
        bias = np.clip(np.rint(b / (s_in * s_w)), -widths.bias_max, widths.bias_max)
        if last:
            layers[index] = QuantLayer(q, bias.astype(np.int32))
            sm_ratio = s_in * float(s_w[0]) * math.log2(math.e) * (1 << SOFTMAX.frac_bits)
            sm_mult, sm_shift = mult_shift(sm_ratio, SOFTMAX.mult_bits, 62)
            return QuantNetwork(network=net, layers=layers, softmax_mult=int(sm_mult[0]),
                                softmax_shift=sm_shift)
        s_act = act_scales[index]
        try:
            mult, shift = mult_shift(s_in * s_w / s_act, Widths.requant_mult,
                                     Widths.requant_shift_max)
        except ValueError as e:
            raise ConfigError(f"layer {index} ({layer.kind}): {e}") from None
        layers[index] = QuantLayer(q, bias.astype(np.int32), mult.astype(np.uint16), shift)
        s_in = s_act


def relu_activations(params, images):
    """``{layer index: float ReLU outputs, flattened}`` of every conv and hidden dense layer."""
    from .float_network import forward
    net = params.network
    _, cache = forward(params, images, keep=True, dtype=np.float64)
    out = {}
    for index in net.param_layers()[:-1]:
        z = cache[index][-1]
        out[index] = np.maximum(z, 0).reshape(-1)
    return out


def calibrate_network(params, images, labels=None, percentiles=PERCENTILES):
    """Activation scales from ``images`` (a percentile of each layer's ReLU outputs / 255).

    With ``labels``, each percentile is tried and the one whose integer network classifies
    ``images`` best is kept; without, the 99.99th. Returns ``(model, act_scales, percentile,
    accuracy or None)``.
    """
    acts = relu_activations(params, images[:1000])
    best = None
    for pct in percentiles if labels is not None else (99.99,):
        scales = {}
        for index, a in acts.items():
            top = float(np.percentile(a, pct)) if a.size else 0.0
            scales[index] = (top if top > 0 else 1.0) / Widths.act_max
        model = quantize_network(params, scales)
        if labels is None:
            return model, scales, pct, None
        acc = float(np.mean(predict_int(model, images) == labels))
        if best is None or acc > best[3]:
            best = (model, scales, pct, acc)
    return best
