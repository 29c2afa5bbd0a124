"""The network description and every bit width derived from it.

This is the one place that decides widths. The golden models in ``cnnforge.sim`` and the RTL in
``cnnforge.hw`` both import :class:`NetworkConfig` and :class:`Widths`; nothing else hard-codes a
width of the datapath.

Number formats (see ``sim/reference/golden.py`` for the arithmetic):

========================  ======================  ===========================================
stage                     format                  worst case
========================  ======================  ===========================================
input pixel               uint8                   0..255 (raw MNIST, no preprocessing)
conv weight               int8, per out channel   -127..127 (symmetric quantization)
conv product              uint8 x int8            |255 * 128| = 32,640 -> signed 16
conv bias                 int, clipped            |b| <= K*K*Cin*255*128
conv accumulator          signed                  2 * K*K*Cin*255*128 (+1 sign bit)
requant multiplier        uint16, per channel     < 2**16
requant product           signed                  acc_bits + 16
activation (ReLU out)     uint8                   0..255
pooled activation         uint8                   0..255
dense weight              int8, per tensor        -127..127
dense product             uint8 x int8            signed 16
dense bias                int, clipped            |b| <= F*255*128
dense accumulator/logit   signed                  2 * F*255*128 (+1 sign bit)
========================  ======================  ===========================================
"""

from dataclasses import dataclass, asdict, fields
import json
import operator

import numpy as np


__all__ = ["ConfigError", "NetworkConfig", "Widths", "signed_bits", "unsigned_bits"]


class ConfigError(ValueError):
    """An impossible or malformed network description."""


def unsigned_bits(max_value):
    """Bits needed to hold ``0..max_value``."""
    return max(1, int(max_value).bit_length())


def signed_bits(max_magnitude):
    """Bits of a two's complement number holding ``-max_magnitude..max_magnitude``."""
    return int(max_magnitude).bit_length() + 1


@dataclass(frozen=True)
class NetworkConfig:
    """Conv2D(filters, kernel x kernel, valid, ReLU) -> MaxPool(pool) -> Flatten -> Dense(classes).

    Parameters
    ----------
    input_size : int
        Height and width of the square input image.
    in_channels : int
        Channels of the input image.
    filters : int
        Output channels of the convolution.
    kernel : int
        Side of the square convolution kernel (stride 1, no padding).
    pool : int
        Side and stride of the square max-pool window.
    classes : int
        Outputs of the dense layer.

    Raises
    ------
    ConfigError
        Naming the field and the value, for any impossible description.
    """
    input_size: int = 28
    in_channels: int = 1
    filters: int = 32
    kernel: int = 3
    pool: int = 2
    classes: int = 10

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                index = operator.index(value)
            except TypeError:
                raise ConfigError(f"network config: {f.name} must be an integer, not {value!r}") from None
            if isinstance(value, bool) or index < 1:
                raise ConfigError(f"network config: {f.name} must be a positive integer, not {value!r}")
        if self.kernel > self.input_size:
            raise ConfigError(f"network config: kernel {self.kernel} is larger than input_size "
                              f"{self.input_size}")
        if self.conv_size % self.pool != 0:
            raise ConfigError(f"network config: pool {self.pool} does not divide the conv output size "
                              f"{self.conv_size}")
        if self.classes < 2:
            raise ConfigError(f"network config: classes must be at least 2, not {self.classes!r}")

    # Derived sizes.
    @property
    def conv_size(self):
        """Side of the conv output ('valid' convolution, stride 1)."""
        return self.input_size - self.kernel + 1

    @property
    def pool_size(self):
        """Side of the max-pool output."""
        return self.conv_size // self.pool

    @property
    def taps(self):
        """Multiplications per conv output: kernel * kernel * in_channels."""
        return self.kernel * self.kernel * self.in_channels

    @property
    def features(self):
        """Length of the flattened pooled activation (the dense layer's fan-in)."""
        return self.pool_size * self.pool_size * self.filters

    @property
    def conv_macs(self):
        return self.conv_size * self.conv_size * self.filters * self.taps

    @property
    def dense_macs(self):
        return self.features * self.classes

    @property
    def macs(self):
        """Multiply-accumulates per image."""
        return self.conv_macs + self.dense_macs

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigError(f"network config must be a mapping, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"network config: unknown field {unknown[0]!r}")
        return cls(**d)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"network config is not valid JSON: {e}") from None
        return cls.from_dict(d)


@dataclass(frozen=True)
class Widths:
    """Worst-case bit widths of every stage, derived from a :class:`NetworkConfig`.

    Signed widths hold the worst case of their stage with no possibility of overflow; the
    quantizer clips biases to the bounds given here so that the bound is a real bound.
    """
    config: NetworkConfig

    pixel = 8            # uint8 input
    weight = 8           # int8 weights (conv and dense)
    act = 8              # uint8 activations after ReLU/requantization
    requant_mult = 16    # uint16 per-channel requantization multiplier
    requant_shift_max = 40

    weight_max = 127     # symmetric int8 quantization
    act_max = 255
    pixel_max = 255

    @property
    def product(self):
        """uint8 x int8 product, signed."""
        return signed_bits(self.pixel_max * 128)

    @property
    def conv_bias_max(self):
        return self.config.taps * self.pixel_max * 128

    @property
    def conv_bias(self):
        return signed_bits(self.conv_bias_max)

    @property
    def conv_acc(self):
        """Conv accumulator: taps products plus the (clipped) bias."""
        return signed_bits(2 * self.conv_bias_max)

    @property
    def requant_product(self):
        return self.conv_acc + self.requant_mult

    @property
    def dense_bias_max(self):
        return self.config.features * self.act_max * 128

    @property
    def dense_bias(self):
        return signed_bits(self.dense_bias_max)

    @property
    def dense_acc(self):
        """Dense accumulator and logits: features products plus the (clipped) bias."""
        return signed_bits(2 * self.dense_bias_max)

    @property
    def pool_index(self):
        """Bits of the argmax position inside a pool window."""
        return unsigned_bits(self.config.pool * self.config.pool - 1)

    @property
    def class_index(self):
        return unsigned_bits(self.config.classes - 1)

    def table(self):
        """``(stage, bits, signed)`` rows, for docs and reports."""
        return [
            ("pixel", self.pixel, False),
            ("weight", self.weight, True),
            ("product", self.product, True),
            ("conv_bias", self.conv_bias, True),
            ("conv_acc", self.conv_acc, True),
            ("requant_mult", self.requant_mult, False),
            ("requant_product", self.requant_product, True),
            ("act", self.act, False),
            ("pool_index", self.pool_index, False),
            ("dense_bias", self.dense_bias, True),
            ("dense_acc", self.dense_acc, True),
            ("class_index", self.class_index, False),
        ]


@dataclass(frozen=True)
class SoftmaxFormat:
    """Fixed-point formats of the integer softmax approximation (``sim/reference/golden.py: softmax_int``).

    ``t = round((max - logit) * mult / 2**shift)`` is the logit distance in base 2 with
    ``frac_bits`` fractional bits; ``exp2(-t)`` comes from a ``2**frac_bits``-entry table of
    ``one * 2**(-f / 2**frac_bits)`` shifted right by the integer part; the sum is normalized to
    ``[1, 2)`` and inverted by a ``2**recip_index_bits``-entry table and one Newton step.
    """
    frac_bits = 6          # exp2 table: 64 entries
    exp_bits = 16          # exp2 values: Q15, 0..32768
    one = 1 << 15          # 1.0 in the exp2 table and in the probabilities
    prob_bits = 16         # probabilities: Q15, 0..32768
    mult_bits = 16         # logit-distance multiplier (uint16)
    recip_index_bits = 6   # reciprocal seed table: 64 entries
    recip_bits = 16        # reciprocal: Q15 in (0.5, 1]

    @property
    def t_max(self):
        """Distances at or above this underflow the Q15 exponential to zero."""
        return self.exp_bits << self.frac_bits

    def exp2_table(self):
        """``round(one * 2**(-f / 2**frac_bits))`` for ``f`` in ``0..2**frac_bits-1``."""
        f = np.arange(1 << self.frac_bits)
        return np.rint(self.one * np.exp2(-f / (1 << self.frac_bits))).astype(np.int64)

    def recip_table(self):
        """Reciprocal seeds: Q15 of ``1/m`` at the middle of each ``m`` bucket of ``[1, 2)``."""
        k = np.arange(1 << self.recip_index_bits)
        mid = 1 + (k + 0.5) / (1 << self.recip_index_bits)
        return np.rint(self.one / mid).astype(np.int64)


@dataclass(frozen=True)
class TrainFormat:
    """Fixed-point formats of the on-chip SGD trainer (``sim/reference/trainer.py``, the golden trainer).

    Batch 1: one image + label -> forward, backward, update. Every update is
    ``M <- sat(M - R(g >> s))`` with ``g`` an integer gradient, ``s`` a per-tensor shift and
    ``R`` round-to-nearest (half up: ``(g + 2**(s-1)) >> s``) or stochastic rounding
    (``(g + r) >> s``, ``r`` the low ``s`` bits of a 32-bit leap-forward LFSR state).

    =====================  ==========================  ==========================================
    quantity               format                      notes
    =====================  ==========================  ==========================================
    weight master          int16, ``master_frac``      forward reads ``(M + 2**(frac-1)) >> frac``
                           fraction bits               (int8, no clip: ``M`` saturates at
                                                       ``master_min..master_max``)
    bias                   int, no fraction            updated in place, clipped to the
                                                       :class:`Widths` bias bounds
    output error delta     int16, Q15                  ``p - one_hot`` saturated to int16
    dense gradient         delta x uint8 act           ``dense_grad_bits`` (24)
    back-propagated error  sum delta x int8 weight     ``err_acc_bits``, then ``>> err_shift``
                                                       rounded, saturated to ``err_bits``
    conv gradient          sum err x uint8 pixel       over the pooled positions of one channel
    =====================  ==========================  ==========================================

    The learning rate is ``2**-lr_shift`` in float terms (the float network with the fixed
    scales ``2**conv_scale_log2`` (conv weight LSB), ``2**dense_scale_log2`` (dense weight LSB),
    ``2**act_scale_log2`` (activation LSB) and pixels / 255); the per-tensor shifts follow from
    it (255 is taken as 2**8 there: the conv learning rate is 0.4 % above the float one).
    """
    master_bits: int = 16        # int16 master weights (conv and dense)
    master_frac: int = 8         # fraction bits below the int8 forward weight
    delta_bits: int = 16         # output error, Q15 saturated to int16
    err_shift: int = 8           # back-propagated error: drop this many LSBs (rounded)
    err_bits: int = 16           # ... and saturate to this many bits
    lr_shift: int = 6            # eta = 2**-6 (float-equivalent)
    rounding: str = "nearest"    # "nearest" (half up) or "stochastic" (LFSR)
    seed: int = 0xACE1           # LFSR seed: random init and stochastic rounding
    # Fixed scales of the random-init network (log2); requantization and softmax constants
    # follow from them and stay fixed during training.
    conv_scale_log2: int = -8
    dense_scale_log2: int = -9
    act_scale_log2: int = -7
    # Random init: masters uniform on [-2**(bits-1), 2**(bits-1)) from the LFSR.
    conv_init_bits: int = 14     # +-32 int8 LSB = +-0.125 (Glorot limit: 0.142)
    dense_init_bits: int = 13    # +-16 int8 LSB = +-0.031 (Glorot limit: 0.033)

    weight_max = 127
    lfsr_bits = 32
    lfsr_taps = 0x80200003       # Galois, x^32 + x^22 + x^2 + x + 1 (maximal length)
    lfsr_leap = 32               # states advance 32 steps per draw: 32 fresh bits each

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rounding":
                if value not in ("nearest", "stochastic"):
                    raise ConfigError(f"train format: rounding must be 'nearest' or "
                                      f"'stochastic', not {value!r}")
                continue
            try:
                operator.index(value)
            except TypeError:
                raise ConfigError(f"train format: {f.name} must be an integer, "
                                  f"not {value!r}") from None
        if not 1 <= self.seed < (1 << self.lfsr_bits):
            raise ConfigError(f"train format: seed must be in 1..2**32-1, not {self.seed!r}")
        if self.master_bits - self.master_frac < 8:
            raise ConfigError(f"train format: master_bits - master_frac must be at least 8, "
                              f"not {self.master_bits - self.master_frac!r}")
        for name in ("dense_w_shift", "dense_b_shift", "conv_w_shift", "conv_b_shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train format: {name} is negative "
                                  f"({getattr(self, name)}); raise lr_shift")

    # Master range: the rounded read (M + 2**(frac-1)) >> frac stays within +-127.
    @property
    def master_max(self):
        return (self.weight_max << self.master_frac) + max(0, (1 << self.master_frac >> 1) - 1)

    @property
    def master_min(self):
        return -(self.weight_max << self.master_frac) - (1 << self.master_frac >> 1)

    @property
    def delta_max(self):
        return (1 << self.delta_bits - 1) - 1

    @property
    def delta_min(self):
        return -(1 << self.delta_bits - 1)

    @property
    def err_max(self):
        return (1 << self.err_bits - 1) - 1

    @property
    def err_min(self):
        return -(1 << self.err_bits - 1)

    # Per-tensor update shifts (see the class docstring for the float equivalence).
    @property
    def dense_w_shift(self):
        return self.lr_shift + 15 - self.master_frac - (self.act_scale_log2 - self.dense_scale_log2)

    @property
    def dense_b_shift(self):
        return self.lr_shift + 15 + self.act_scale_log2 + self.dense_scale_log2

    @property
    def conv_w_shift(self):
        return (self.lr_shift - self.dense_scale_log2 + 8 + self.conv_scale_log2 - self.err_shift
                + 15 - self.master_frac)

    @property
    def conv_b_shift(self):
        return self.lr_shift - self.dense_scale_log2 - 8 + self.conv_scale_log2 - self.err_shift + 15

    # Datapath widths.
    @property
    def dense_grad_bits(self):
        """delta (signed) x uint8 activation."""
        return self.delta_bits + 8

    def err_acc_bits(self, config):
        """sum over classes of delta x int8 dense weight."""
        return signed_bits(config.classes * (1 << self.delta_bits - 1) * 128)

    def conv_grad_bits(self, config):
        """sum over the pooled positions of one channel of err x uint8 pixel."""
        return signed_bits(config.pool_size ** 2 * (1 << self.err_bits - 1) * 255)

    def conv_bias_grad_bits(self, config):
        return signed_bits(config.pool_size ** 2 * (1 << self.err_bits - 1))
