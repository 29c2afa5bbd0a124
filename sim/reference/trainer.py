"""The fixed-point golden trainer: integer SGD at batch 1, the oracle of the on-chip trainer.

One training step (image ``x`` uint8, label ``y``), all integers, every width in
:class:`cnnforge.hw.params.TrainFormat`:

1. forward exactly as :func:`cnnforge.sim.reference.golden.infer_int` with the int8 weights read from the
   int16 masters (``w = (M + 2**(frac-1)) >> frac``), keeping the pooled activations, the pool
   argmax positions and the image; the ReLU mask needs no extra storage: only argmax positions
   get a gradient, and there the activation *is* the pooled value;
2. ``delta = sat16(p - 2**15 * one_hot(y))`` from the Q15 softmax;
3. dense: ``g_W[j, i] = delta[j] * pooled[i]``, ``g_b = delta``;
4. error: ``e[i] = sum_j delta[j] * W[j, i]`` with the weights the forward pass used (one
   read-modify-write pass over the dense weights computes ``e`` and updates them), then
   ``e = sat(round(e >> err_shift))`` and masked by ``0 < pooled < 255`` (ReLU, and the clip at
   255 of the requantizer, which has zero slope too);
5. conv: each pooled error goes to the window position that won the max;
   ``g_K[c, t] = sum_{pooled (py, px)} e[py, px, c] * x[window of the winner, tap t]``,
   ``g_bc[c] = sum e[.., c]``. The requantization multipliers are not applied: with the
   random-init network they are one value for all channels (a constant folded into the shift);
   for fine-tuning they make a per-channel learning rate in int8 units (documented in
   :func:`format_for_model`);
6. SGD: ``M <- sat(M - R(g, s))``, ``R`` round-to-nearest (half up) or stochastic rounding with
   a leap-forward LFSR; biases are updated in place (no fraction) and clipped to their bounds.

Requantization multipliers, shift and the softmax constants stay fixed during training.
"""

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np

from ...hw.model import TrainState
from ...hw.params import NetworkConfig, TrainFormat, Widths
from .golden import SOFTMAX, im2col, requantize, maxpool, softmax_int
from .quantize import mult_shift


__all__ = ["TrainFormat", "LFSR", "TrainState", "Step", "init_random", "init_from_model",
           "format_for_model", "forward", "backward", "apply_update", "train_step", "train",
           "float_twin", "train_float_sgd", "weights_sha256", "initial_state", "data_order"]


# ---------------------------------------------------------------------------------------------
# LFSR: 32-bit Galois, leap-forward by 32 steps per draw, vectorized with GF(2) matrices.

def _lfsr_step(state, taps):
    lsb = state & 1
    state = state >> 1
    return state ^ (taps * lsb) if isinstance(state, int) else state ^ (np.uint32(taps) * lsb)


def _gf2_apply(cols, x):
    """Apply the GF(2) matrix with column images ``cols`` (32 uint32) to uint32 array ``x``."""
    x = np.asarray(x, np.uint32)
    out = np.zeros_like(x)
    for b in range(32):
        out ^= cols[b] * ((x >> np.uint32(b)) & np.uint32(1))
    return out


class LFSR:
    """A 32-bit Galois LFSR (taps ``TrainFormat.lfsr_taps``) that leaps ``lfsr_leap`` single
    steps per draw, so each draw is 32 fresh bits: the k-th draw is the state after
    ``lfsr_leap * k`` steps. Hardware: one leap-forward LFSR (a fixed XOR network) per
    update unit, stepped once per weight update, in the update order of :func:`apply_update`.
    """

    def __init__(self, seed, fmt=TrainFormat()):
        if not 0 < int(seed) < 1 << 32:
            raise ValueError(f"LFSR seed must be in 1..2**32-1, not {seed!r}")
        self.state = int(seed)
        self._taps = fmt.lfsr_taps
        cols = np.array([1 << b for b in range(32)], np.uint32)
        for _ in range(fmt.lfsr_leap):
            cols = _lfsr_step(cols, self._taps)
        self._leap = cols            # the matrix of one draw
        self._tables = {}            # count -> (32, count) column images of leap**1..count

    def _table(self, count):
        table = self._tables.get(count)
        if table is None:
            # table[b, k] = A^(k+1) e_b, by doubling: A^(k+1+n) e_b = A^n (A^(k+1) e_b).
            table = np.zeros((32, count), np.uint32)
            table[:, 0] = self._leap
            power, filled = self._leap, 1    # power = A^filled
            while filled < count:
                n = min(filled, count - filled)
                table[:, filled:filled + n] = _gf2_apply(power, table[:, :n])
                power = _gf2_apply(power, power)
                filled += n
            self._tables[count] = table
        return table

    def draw(self, count):
        """The next ``count`` states as uint32 (advances the LFSR)."""
        table = self._table(count)
        out = np.zeros(count, np.uint32)
        s = self.state
        for b in range(32):
            if (s >> b) & 1:
                out ^= table[b]
        self.state = int(out[-1])
        return out


def _constants(config, fmt, act_scale, dense_scale, conv_scales):
    """Requantization and softmax constants of a network with the given float scales."""
    widths = Widths(config)
    ratios = (1.0 / widths.pixel_max) * np.asarray(conv_scales, np.float64) / act_scale
    mult, shift = mult_shift(ratios, widths.requant_mult, widths.requant_shift_max)
    sm = act_scale * dense_scale * math.log2(math.e) * (1 << SOFTMAX.frac_bits)
    sm_mult, sm_shift = mult_shift(sm, SOFTMAX.mult_bits, 62)
    return mult.astype(np.uint16), int(shift), int(sm_mult[0]), int(sm_shift)


def _signed_draws(lfsr, count, bits):
    """``count`` uniform integers in ``[-2**(bits-1), 2**(bits-1))``: the top bits of draws."""
    top = (lfsr.draw(count) >> np.uint32(32 - bits)).astype(np.int64)
    return top - ((top >> (bits - 1)) << bits)


def init_random(config=NetworkConfig(), fmt=TrainFormat()):
    """The random-init network: masters uniform from the LFSR (seed ``fmt.seed``), conv
    weights first (raster order of ``(F, K, K, Cin)``), then dense ``(classes, features)``;
    zero biases; constants from the fixed scales in ``fmt``."""
    lfsr = LFSR(fmt.seed, fmt)
    conv_m = _signed_draws(lfsr, config.filters * config.taps, fmt.conv_init_bits).reshape(
        config.filters, config.kernel, config.kernel, config.in_channels)
    dense_m = _signed_draws(lfsr, config.classes * config.features,
                            fmt.dense_init_bits).reshape(config.classes, config.features)
    mult, shift, sm_mult, sm_shift = _constants(
        config, fmt, 2.0 ** fmt.act_scale_log2, 2.0 ** fmt.dense_scale_log2,
        np.full(config.filters, 2.0 ** fmt.conv_scale_log2))
    return TrainState(config=config, fmt=fmt, conv_m=conv_m, conv_b=np.zeros(config.filters, np.int64),
                      dense_m=dense_m, dense_b=np.zeros(config.classes, np.int64),
                      requant_mult=mult, requant_shift=shift, softmax_mult=sm_mult,
                      softmax_shift=sm_shift, lfsr=lfsr)


def format_for_model(model, lr_shift, base=TrainFormat(), act_scale=None):
    """A :class:`TrainFormat` whose scales are those of ``model`` rounded to powers of two.

    ``act_scale * dense_scale`` comes from the softmax constant; ``act_scale`` from the model
    file's info (or is given); the conv scale is the geometric mean over channels of
    ``requant_mult / 2**requant_shift * act_scale * 255`` (channels differ by up to 6x in the
    committed model: their learning rates in float terms differ by that, which fine-tuning
    tolerates).
    """
    prod = model.softmax_mult / 2.0 ** model.softmax_shift / (math.log2(math.e) * (1 << SOFTMAX.frac_bits))
    dense_scale = prod / act_scale
    conv_scales = np.asarray(model.requant_mult, np.float64) / 2.0 ** model.requant_shift * act_scale * 255
    conv_scale = float(np.exp(np.mean(np.log(conv_scales))))
    return replace(base, lr_shift=lr_shift, act_scale_log2=round(math.log2(act_scale)),
                   dense_scale_log2=round(math.log2(dense_scale)),
                   conv_scale_log2=round(math.log2(conv_scale)))


def init_from_model(model, fmt):
    """Masters from an int8 model (``M = w << frac``) with its constants kept."""
    f = fmt.master_frac
    return TrainState(config=model.config, fmt=fmt,
                      conv_m=model.conv_w.astype(np.int64) << f, conv_b=model.conv_b.astype(np.int64),
                      dense_m=model.dense_w.astype(np.int64) << f,
                      dense_b=model.dense_b.astype(np.int64),
                      requant_mult=np.asarray(model.requant_mult, np.uint16),
                      requant_shift=int(model.requant_shift), softmax_mult=int(model.softmax_mult),
                      softmax_shift=int(model.softmax_shift), lfsr=LFSR(fmt.seed, fmt))


# ---------------------------------------------------------------------------------------------
# One step.

@dataclass
class Step:
    """What the forward pass keeps for backward, and the gradients."""
    image: np.ndarray        # (H, W, Cin) uint8
    cols: np.ndarray         # (H', W', taps) windows of the image
    pooled: np.ndarray       # (P, P, F) uint8
    pool_argmax: np.ndarray  # (P, P, F) uint8
    logits: np.ndarray       # (classes,) int64
    probs: np.ndarray        # (classes,) int64 Q15
    dense_w: np.ndarray      # int8 weights the forward pass used (int64)
    delta: np.ndarray = None     # (classes,) int64, Q15 saturated
    err: np.ndarray = None       # (P, P, F) int64, narrowed and masked
    g_dense_w: np.ndarray = None
    g_dense_b: np.ndarray = None
    g_conv_w: np.ndarray = None  # (F, taps)
    g_conv_b: np.ndarray = None


def forward(state, image):
    """The integer forward pass of one image, bit-exact with :func:`golden.infer_int`."""
    cfg = state.config
    image = np.asarray(image, np.uint8).reshape(cfg.input_size, cfg.input_size, cfg.in_channels)
    conv_w = state.read(state.conv_m).reshape(cfg.filters, cfg.taps)
    dense_w = state.read(state.dense_m)
    cols = im2col(image[None], cfg.kernel)[0]
    acc = np.rint(cols.astype(np.float64) @ conv_w.T.astype(np.float64)).astype(np.int64) + state.conv_b
    act = requantize(acc, state.requant_mult, state.requant_shift)
    pooled, arg = maxpool(act[None], cfg.pool)
    pooled, arg = pooled[0], arg[0]
    logits = np.rint(dense_w.astype(np.float64) @ pooled.reshape(-1).astype(np.float64)).astype(np.int64)
    logits += state.dense_b
    probs = softmax_int(logits, state.softmax_mult, state.softmax_shift)
    return Step(image=image, cols=cols, pooled=pooled, pool_argmax=arg, logits=logits,
                probs=probs, dense_w=dense_w)


def _round_shift(g, s):
    """Round half up: ``(g + 2**(s-1)) >> s``."""
    return g if s == 0 else (g + (1 << s - 1)) >> s


def backward(state, step, label):
    """Fill ``step`` with delta, the back-propagated error and all gradients."""
    cfg, fmt = state.config, state.fmt
    onehot = np.zeros(cfg.classes, np.int64)
    onehot[label] = SOFTMAX.one
    delta = np.clip(step.probs - onehot, fmt.delta_min, fmt.delta_max)
    flat = step.pooled.reshape(-1).astype(np.int64)
    step.delta = delta
    step.g_dense_w = delta[:, None] * flat[None, :]
    step.g_dense_b = delta.copy()
    # Back through the dense weights the forward pass used (exact: |e| < 2**26 << 2**53).
    e = np.rint(delta.astype(np.float64) @ step.dense_w.astype(np.float64)).astype(np.int64)
    e = np.clip(_round_shift(e, fmt.err_shift), fmt.err_min, fmt.err_max)
    e = e.reshape(step.pooled.shape)
    e = e * ((step.pooled > 0) & (step.pooled < Widths.act_max))
    step.err = e
    # Route to the argmax positions and correlate with the image windows there.
    p, n = cfg.pool, cfg.pool_size
    py = np.arange(n)[:, None, None] * p + step.pool_argmax // p
    px = np.arange(n)[None, :, None] * p + step.pool_argmax % p
    windows = step.cols[py, px].astype(np.int64)                 # (P, P, F, taps)
    step.g_conv_w = np.einsum("yxc,yxct->ct", e, windows)
    step.g_conv_b = e.sum(axis=(0, 1))
    return step


def _update(master, grad, s, lo, hi, state):
    if state.fmt.rounding == "stochastic" and s > 0:
        r = (state.lfsr.draw(grad.size) & np.uint32((1 << s) - 1)).astype(np.int64)
        d = (grad.reshape(-1) + r).reshape(grad.shape) >> s
    else:
        d = _round_shift(grad, s)
    return np.clip(master - d, lo, hi)


def apply_update(state, step):
    """SGD on masters and biases, saturating. Update order (the stochastic-rounding LFSR draws
    in this order): dense weights (class-major), dense biases, conv weights, conv biases."""
    fmt, w = state.fmt, Widths(state.config)
    state.dense_m = _update(state.dense_m, step.g_dense_w, fmt.dense_w_shift,
                            fmt.master_min, fmt.master_max, state)
    state.dense_b = _update(state.dense_b, step.g_dense_b, fmt.dense_b_shift,
                            -w.dense_bias_max, w.dense_bias_max, state)
    g = step.g_conv_w.reshape(state.conv_m.shape)
    state.conv_m = _update(state.conv_m, g, fmt.conv_w_shift, fmt.master_min, fmt.master_max, state)
    state.conv_b = _update(state.conv_b, step.g_conv_b, fmt.conv_b_shift,
                           -w.conv_bias_max, w.conv_bias_max, state)
    state.steps += 1


def train_step(state, image, label):
    """Forward, backward and update for one image; returns the :class:`Step`."""
    step = backward(state, forward(state, image), int(label))
    apply_update(state, step)
    return step


def train(state, images, labels, order, progress=False, desc="train"):
    """Batch-1 SGD over ``images[order]``, in place."""
    from tqdm import tqdm
    for i in tqdm(order, desc=desc, disable=not progress, unit="img", mininterval=1.0):
        train_step(state, images[i], labels[i])
    return state


def weights_sha256(state_or_model):
    """Hash of the weights (masters for a state, int8 tensors for a model)."""
    h = hashlib.sha256()
    if isinstance(state_or_model, TrainState):
        arrays = (state_or_model.conv_m, state_or_model.conv_b, state_or_model.dense_m,
                  state_or_model.dense_b)
    else:
        arrays = (state_or_model.conv_w, state_or_model.conv_b, state_or_model.dense_w,
                  state_or_model.dense_b)
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, np.int64)).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The float twin: the same network, init, data order and learning rate, in float32.

def float_twin(state):
    """Float parameters equal to the state's masters (at full master precision)."""
    from .float_model import FloatParams
    fmt = state.fmt
    s_w, s_d = 2.0 ** fmt.conv_scale_log2, 2.0 ** fmt.dense_scale_log2
    s_x, s_a = 1.0 / Widths.pixel_max, 2.0 ** fmt.act_scale_log2
    frac = 2.0 ** fmt.master_frac
    return FloatParams(conv_w=(state.conv_m / frac * s_w).astype(np.float32),
                       conv_b=(state.conv_b * s_x * s_w).astype(np.float32),
                       dense_w=(state.dense_m / frac * s_d).astype(np.float32),
                       dense_b=(state.dense_b * s_a * s_d).astype(np.float32))


def train_float_sgd(params, config, images, labels, order, lr, progress=False):
    """Plain float SGD at batch 1 (cross-entropy), in place."""
    from tqdm import tqdm
    from .float_model import loss_and_grads
    lr = np.float32(lr)
    for i in tqdm(order, desc="float", disable=not progress, unit="img", mininterval=1.0):
        _, g = loss_and_grads(params, config, images[i:i + 1], labels[i:i + 1])
        for a, ga in zip(params.arrays(), g.arrays()):
            a -= lr * ga
    return params


# ---------------------------------------------------------------------------------------------
# Starting points and data order.

FINE_TUNE_LR_SHIFT = 10  # eta = 2**-10 in float terms of the committed model's scales (2**-8: 97.49 %)


def data_order(n, epochs, seed=1):
    """Host-side data order: one numpy permutation per epoch (``default_rng(seed)``)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)]) if epochs else np.zeros(0, int)


def initial_state(init="random", fmt=None):
    """The trainer's starting point: ``"random"`` (:func:`init_random`, ``TrainFormat()``) or
    ``"model"`` (the committed model file, :func:`format_for_model` with
    ``FINE_TUNE_LR_SHIFT``); ``fmt`` replaces the format."""
    from . import model_file
    if init == "random":
        return init_random(NetworkConfig(), fmt or TrainFormat())
    if init == "model":
        qmodel, info = model_file.load(with_info=True)
        fmt = fmt or format_for_model(qmodel, FINE_TUNE_LR_SHIFT, act_scale=info["act_scale"])
        return init_from_model(qmodel, fmt)
    raise ValueError(f"init must be 'random' or 'model', not {init!r}")
