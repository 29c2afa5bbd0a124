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


__all__ = ["ConfigError", "NetworkConfig", "StageConfig", "Widths", "signed_bits", "unsigned_bits",
           "Conv2D", "MaxPool", "Flatten", "Dense", "Network", "LayerWidths", "LAYER_TYPES",
           "PRESETS", "preset"]


class ConfigError(ValueError):
    """An impossible or malformed network description."""


def _json_doc(what, text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON: {e}") from None


def unsigned_bits(max_value):
    """Bits needed to hold ``0..max_value``."""
    return max(1, int(max_value).bit_length())


def signed_bits(max_magnitude):
    """Bits of a two's complement number holding ``-max_magnitude..max_magnitude``."""
    return int(max_magnitude).bit_length() + 1


class _Sizes:
    """Sizes derived from the fields :class:`NetworkConfig` and :class:`StageConfig` share."""

    @property
    def conv_size(self):
        """Side of the conv output ('valid' convolution of the input, windows every ``stride``)."""
        return (self.input_size - self.kernel) // self.stride + 1

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


@dataclass(frozen=True)
class NetworkConfig(_Sizes):
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

    #: The seed's convolution has stride 1 (a class attribute, not a field: the engines read
    #: ``config.stride`` of a :class:`StageConfig` or of this).
    stride = 1

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
        try:
            self.network()          # the layer list's size limits
        except ConfigError as e:
            raise ConfigError(f"network config: {str(e).removeprefix('network: ')}") from None

    @property
    def macs(self):
        """Multiply-accumulates per image."""
        return self.conv_macs + self.dense_macs

    def network(self):
        """This network as a layer list (:class:`Network`)."""
        return _seed_network(self)

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
        return cls.from_dict(_json_doc("network config", text))


@dataclass(frozen=True)
class StageConfig(_Sizes):
    """The geometry one engine of a layer-list accelerator works on, in :class:`NetworkConfig`'s
    terms, so that the engines and :class:`Widths` take either.

    A conv stage: a square ``input_size`` x ``input_size`` map of ``in_channels`` (padding
    already inserted, rows and columns no window reaches already dropped), ``filters`` kernels of
    ``kernel`` x ``kernel`` every ``stride`` pixels; the fan-in (``taps``) is ``kernel**2 *
    in_channels``. A max-pool stage: ``input_size`` the conv output's side (``kernel`` 1),
    ``filters`` its channels, windows of ``pool``. A dense stage: ``features`` (the flattened
    ``input_size**2 * filters`` of ``kernel`` 1, ``pool`` 1) in, ``classes`` out. The
    requantization of a hidden dense layer: ``input_size`` 1, ``kernel`` 1, ``in_channels`` the
    fan-in, ``filters`` the units (its accumulators are ``taps`` products wide).
    :func:`cnnforge.hw.network.stages` derives them from a :class:`Network`.
    """
    input_size: int = 1
    in_channels: int = 1
    filters: int = 1
    kernel: int = 1
    stride: int = 1
    pool: int = 1
    classes: int = 2

    def __post_init__(self):
        for f in fields(self):
            _pos_int("stage", f.name, getattr(self, f.name))
        if self.kernel > self.input_size:
            raise ConfigError(f"stage: kernel {self.kernel} is larger than input_size "
                              f"{self.input_size}")
        if (self.input_size - self.kernel) % self.stride:
            raise ConfigError(f"stage: the windows of stride {self.stride} do not end on the "
                              f"input's last row (crop it first)")
        if self.conv_size % self.pool:
            raise ConfigError(f"stage: pool {self.pool} does not divide the conv output size "
                              f"{self.conv_size}")


# --- Layer-list networks ------------------------------------------------------------------------
#
# A network is an input (height, width, channels of uint8 pixels) and a list of layers; a final
# softmax follows the last layer. Every hidden activation is uint8 after a fused ReLU, so every
# conv layer has a ReLU, every dense layer but the last one too, and the last one gives the
# logits. Layouts are channels last; Flatten orders features (y, x, c).

_LAYER_KINDS = {}


def _layer(kind):
    def register(cls):
        cls.kind = kind
        _LAYER_KINDS[kind] = cls
        return cls
    return register


def _pos_int(where, name, value, minimum=1):
    try:
        index = operator.index(value)
    except TypeError:
        raise ConfigError(f"{where}: {name} must be an integer, not {value!r}") from None
    if isinstance(value, bool) or index < minimum:
        raise ConfigError(f"{where}: {name} must be an integer >= {minimum}, not {value!r}")
    return index


@_layer("conv2d")
@dataclass(frozen=True)
class Conv2D:
    """``filters`` square ``kernel`` x ``kernel`` convolutions with bias and ReLU.

    ``padding`` is ``"valid"`` (none), ``"same"`` (Keras/TensorFlow: output ``ceil(size /
    stride)``, the odd pixel of padding at the bottom/right) or explicit zero rows/columns
    ``(top, left, bottom, right)`` (what an ONNX ``pads`` attribute or PyTorch's ``padding``
    gives; PyTorch's ``padding=1`` with stride 2 is not Keras' ``"same"``).
    """
    filters: int
    kernel: int
    stride: int = 1
    padding: object = "valid"

    def __post_init__(self):
        if isinstance(self.padding, list):     # from JSON: hashable like every layer
            object.__setattr__(self, "padding", tuple(self.padding))

    def pads(self, height, width):
        """``(top, left, bottom, right)`` zero rows/columns around a ``height`` x ``width`` input."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            def split(size):
                out = -(-size // self.stride)
                total = max((out - 1) * self.stride + self.kernel - size, 0)
                return total // 2, total - total // 2
            (top, bottom), (left, right) = split(height), split(width)
            return (top, left, bottom, right)
        return tuple(self.padding)

    def to_dict(self):
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"type": self.kind, "filters": self.filters, "kernel": self.kernel,
                "stride": self.stride, "padding": pad}


@_layer("maxpool")
@dataclass(frozen=True)
class MaxPool:
    """Max over ``size`` x ``size`` windows every ``stride`` (default ``size``) pixels, no padding;
    rows and columns the last window does not reach are dropped (as Keras and PyTorch do)."""
    size: int
    stride: int = None

    def __post_init__(self):
        if self.stride is None:
            object.__setattr__(self, "stride", self.size)

    def to_dict(self):
        return {"type": self.kind, "size": self.size, "stride": self.stride}


@_layer("flatten")
@dataclass(frozen=True)
class Flatten:
    """A feature map ``(H, W, C)`` as ``H*W*C`` features in ``(y, x, c)`` order."""

    def to_dict(self):
        return {"type": self.kind}


@_layer("dense")
@dataclass(frozen=True)
class Dense:
    """``units`` outputs of a fully connected layer with bias; ``relu`` on every hidden one, none on
    the last (the logits)."""
    units: int
    relu: bool = False

    def to_dict(self):
        return {"type": self.kind, "units": self.units, "relu": self.relu}


LAYER_TYPES = tuple(_LAYER_KINDS)
MAX_REQUANT_PRODUCT_BITS = 63   # the golden model's int64 arithmetic
MAX_EXACT_SUM = 1 << 53         # sums computed through float64 matrix products stay exact
#: Values of one tensor per image (a layer's output, weights, or conv windows) that the models
#: hold: 67 M (512 MB in float64); far beyond any FPGA's memory (an ECP5-85F holds 3.8 Mbit).
MAX_TENSOR_VALUES = 1 << 26


@dataclass(frozen=True)
class LayerWidths:
    """Bit widths of one conv or dense layer (see the table at the top of this module)."""
    fan_in: int            # products summed per output: K*K*Cin or the dense fan-in
    bias_max: int          # |bias| bound: fan_in * 255 * 128
    bias: int              # signed bits of the bias
    acc: int               # signed accumulator: fan_in products plus the bias
    requant_product: int   # accumulator times the uint16 multiplier


@dataclass(frozen=True)
class Network:
    """An input ``(height, width, channels)`` of uint8 pixels, a list of layers, then softmax.

    Raises
    ------
    ConfigError
        Naming the layer index, its type, the field and the value for any network that cannot
        be built: a window larger than its input, a layer that needs a feature map after
        Flatten (or a flat vector before it), an activation that is not uint8 after ReLU, widths
        that overflow the formats.
    """
    input: tuple
    layers: tuple

    def __post_init__(self):
        inp = self.input
        if not isinstance(inp, (tuple, list)) or len(inp) != 3:
            raise ConfigError(f"network: input must be [height, width, channels], not {inp!r}")
        inp = tuple(_pos_int("network input", name, v)
                    for name, v in zip(("height", "width", "channels"), inp))
        object.__setattr__(self, "input", inp)
        if not isinstance(self.layers, (tuple, list)):
            raise ConfigError(f"network: layers must be a list, not {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise ConfigError("network: no layers (the last layer must be a dense layer)")
        shapes = []
        shape = inp
        for index, layer in enumerate(self.layers):
            shape = self._check_layer(index, layer, shape)
            shapes.append(shape)
        object.__setattr__(self, "_shapes", tuple(shapes))
        for index, layer in enumerate(self.layers):
            sizes = [("output values", int(np.prod(shapes[index], dtype=object)))]
            if isinstance(layer, (Conv2D, Dense)):
                sizes.append(("weights", int(np.prod(self.weight_shape(index), dtype=object))))
            if isinstance(layer, Conv2D):
                sizes.append(("window values", sizes[0][1] // layer.filters
                              * self.fan_in(index)))
            for what, n in sizes:
                if n > MAX_TENSOR_VALUES:
                    raise ConfigError(f"network: layer {index} ({layer.kind}): {n:,} {what} per "
                                      f"image, more than the {MAX_TENSOR_VALUES:,} a tensor of "
                                      f"cnnforge's models may hold")
        last = self.layers[-1]
        where = f"network: layer {len(self.layers) - 1} ({last.kind})"
        if not isinstance(last, Dense):
            raise ConfigError(f"{where}: the last layer must be dense (it gives the logits)")
        if last.relu:
            raise ConfigError(f"{where}: the last layer gives the logits: relu must be false")
        if last.units < 2:
            raise ConfigError(f"{where}: units must be at least 2 classes, not {last.units}")

    def _check_layer(self, index, layer, shape):
        where = f"network: layer {index} ({getattr(layer, 'kind', type(layer).__name__)})"
        if type(layer) not in _LAYER_KINDS.values():
            raise ConfigError(f"network: layer {index}: {layer!r} is not a layer (one of "
                              f"{', '.join(LAYER_TYPES)})")
        spatial = len(shape) == 3
        if isinstance(layer, Dense):
            _pos_int(where, "units", layer.units)
            if type(layer.relu) is not bool:
                raise ConfigError(f"{where}: relu must be true or false, not {layer.relu!r}")
            if spatial:
                raise ConfigError(f"{where}: needs a flat input, not a {_fmt(shape)} feature map "
                                  f"(put a flatten before it)")
            if layer.relu is False and index != len(self.layers) - 1:
                raise ConfigError(f"{where}: a hidden dense layer needs relu (activations are "
                                  f"uint8 after ReLU)")
            return (layer.units,)
        if not spatial:
            raise ConfigError(f"{where}: needs a feature map, not the {shape[0]} flat features "
                              f"of an earlier flatten")
        h, w, c = shape
        if isinstance(layer, Flatten):
            return (h * w * c,)
        if isinstance(layer, Conv2D):
            _pos_int(where, "filters", layer.filters)
            _pos_int(where, "kernel", layer.kernel)
            if _pos_int(where, "stride", layer.stride) not in (1, 2):
                raise ConfigError(f"{where}: stride must be 1 or 2, not {layer.stride!r}")
            pad = layer.padding
            if isinstance(pad, str):
                if pad not in ("valid", "same"):
                    raise ConfigError(f"{where}: padding must be 'valid', 'same' or "
                                      f"[top, left, bottom, right], not {pad!r}")
            else:
                if not isinstance(pad, (tuple, list)) or len(pad) != 4:
                    raise ConfigError(f"{where}: padding must be 'valid', 'same' or "
                                      f"[top, left, bottom, right], not {pad!r}")
                for name, v in zip(("top", "left", "bottom", "right"), pad):
                    if _pos_int(where, f"padding {name}", v, minimum=0) >= layer.kernel:
                        raise ConfigError(f"{where}: padding {name} {v} is not smaller than "
                                          f"the kernel {layer.kernel}")
            top, left, bottom, right = layer.pads(h, w)
            ph, pw = h + top + bottom, w + left + right
            if layer.kernel > min(ph, pw):
                raise ConfigError(f"{where}: kernel {layer.kernel} is larger than its "
                                  f"{_fmt((ph, pw))} (padded) input")
            return ((ph - layer.kernel) // layer.stride + 1,
                    (pw - layer.kernel) // layer.stride + 1, layer.filters)
        # MaxPool
        _pos_int(where, "size", layer.size)
        _pos_int(where, "stride", layer.stride)
        if layer.stride > layer.size:
            raise ConfigError(f"{where}: stride {layer.stride} is larger than the window "
                              f"{layer.size} (inputs between windows would be skipped)")
        if layer.size > min(h, w):
            raise ConfigError(f"{where}: window {layer.size} is larger than its {_fmt(shape)} "
                              f"input")
        return ((h - layer.size) // layer.stride + 1, (w - layer.size) // layer.stride + 1, c)

    # Shapes and sizes.
    def output_shape(self, index):
        """Output of layer ``index``: ``(H, W, C)`` or ``(features,)``."""
        return self._shapes[index]

    def input_shape(self, index):
        return self.input if index == 0 else self._shapes[index - 1]

    @property
    def classes(self):
        return self.layers[-1].units

    def param_layers(self):
        """Indices of the layers with weights (conv and dense), in order."""
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, (Conv2D, Dense))]

    def weight_shape(self, index):
        """``(F, K, K, Cin)`` of a conv layer, ``(units, fan_in)`` of a dense one."""
        layer, shape = self.layers[index], self.input_shape(index)
        if isinstance(layer, Conv2D):
            return (layer.filters, layer.kernel, layer.kernel, shape[2])
        return (layer.units, shape[0])

    def fan_in(self, index):
        return int(np.prod(self.weight_shape(index)[1:]))

    def macs(self, index):
        """Multiply-accumulates of layer ``index`` per image (0 for pool and flatten)."""
        if index not in self.param_layers():
            return 0
        return int(np.prod(self.output_shape(index))) * self.fan_in(index)

    @property
    def total_macs(self):
        return sum(self.macs(i) for i in range(len(self.layers)))

    def layer_widths(self, index):
        """:class:`LayerWidths` of conv or dense layer ``index``."""
        fan_in = self.fan_in(index)
        bias_max = fan_in * Widths.act_max * 128
        acc = signed_bits(2 * bias_max)
        return LayerWidths(fan_in=fan_in, bias_max=bias_max, bias=signed_bits(bias_max), acc=acc,
                           requant_product=acc + Widths.requant_mult)

    # Serialization.
    def to_dict(self):
        return {"input": list(self.input), "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigError(f"network must be a mapping, not {type(d).__name__}")
        unknown = sorted(set(d) - {"input", "layers"})
        if unknown:
            raise ConfigError(f"network: unknown field {unknown[0]!r}")
        for key in ("input", "layers"):
            if key not in d:
                raise ConfigError(f"network: no {key!r}")
        if not isinstance(d["layers"], list):
            raise ConfigError(f"network: layers must be a list, not {d['layers']!r}")
        layers = []
        for index, item in enumerate(d["layers"]):
            if not isinstance(item, dict) or item.get("type") not in _LAYER_KINDS:
                kind = item.get("type") if isinstance(item, dict) else item
                raise ConfigError(f"network: layer {index}: type must be one of "
                                  f"{', '.join(LAYER_TYPES)}, not {kind!r}")
            cls_ = _LAYER_KINDS[item["type"]]
            args = {k: v for k, v in item.items() if k != "type"}
            names = {f.name for f in fields(cls_)}
            unknown = sorted(set(args) - names)
            if unknown:
                raise ConfigError(f"network: layer {index} ({item['type']}): unknown field "
                                  f"{unknown[0]!r}")
            try:
                layers.append(cls_(**args))
            except TypeError as e:
                raise ConfigError(f"network: layer {index} ({item['type']}): {e}") from None
        return cls(d["input"], layers)

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(_json_doc("network description", text))

    # The accelerator of today.
    def seed_config(self):
        """The :class:`NetworkConfig` of a network the accelerator's RTL builds today, or
        :class:`ConfigError` saying why this one is not such a network."""
        why = None
        kinds = [layer.kind for layer in self.layers]
        if kinds != ["conv2d", "maxpool", "flatten", "dense"]:
            why = f"its layers are {' -> '.join(kinds)}"
        else:
            conv, pool = self.layers[0], self.layers[1]
            if self.input[0] != self.input[1]:
                why = f"its input is {_fmt(self.input[:2])}, not square"
            elif conv.stride != 1 or conv.pads(*self.input[:2]) != (0, 0, 0, 0):
                why = "its convolution has a stride or padding"
            elif pool.stride != pool.size or self.output_shape(0)[0] % pool.size:
                why = "its max-pool windows do not tile the conv output"
        if why is not None:
            raise ConfigError(f"the accelerator builds Conv2D (valid, stride 1) -> MaxPool -> "
                              f"Flatten -> Dense networks so far; {why}")
        return NetworkConfig(input_size=self.input[0], in_channels=self.input[2],
                             filters=self.layers[0].filters, kernel=self.layers[0].kernel,
                             pool=self.layers[1].size, classes=self.classes)


def _fmt(shape):
    return "x".join(str(s) for s in shape)


def _seed_network(config):
    return Network((config.input_size, config.input_size, config.in_channels),
                   (Conv2D(config.filters, config.kernel), MaxPool(config.pool), Flatten(),
                    Dense(config.classes)))


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
    lr_shift_max = 32
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
        if not 0 <= self.lr_shift <= self.lr_shift_max:
            raise ConfigError(f"train format: lr_shift must be in 0..{self.lr_shift_max} (the "
                              f"learning rate 2**-lr_shift; below 2**-{self.lr_shift_max} no "
                              f"update changes a master), not {self.lr_shift!r}")
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


# A fan-in is at most MAX_TENSOR_VALUES (the weights of one output), so every accumulator (the
# products and the clipped bias) is exact in float64 and its requantization product fits int64.
assert 2 * MAX_TENSOR_VALUES * Widths.act_max * 128 < MAX_EXACT_SUM
assert (signed_bits(2 * MAX_TENSOR_VALUES * Widths.act_max * 128) + Widths.requant_mult
        <= MAX_REQUANT_PRODUCT_BITS)


#: Named networks: ``mnist-seed`` (the reference Keras MNIST CNN the accelerator was built for),
#: ``lenet`` (two conv layers, a hidden dense layer: >= 99 % int8 on MNIST), ``mnist-small``
#: (two small conv layers, 5.2 k weights: for boards whose block RAM cannot hold the seed's
#: 54 k dense weights, the Tang Nano 9K) and ``rgb-shapes`` (3-channel 32x32 input, stride-2 and
#: same-padded convolutions).
PRESETS = {
    "mnist-seed": _seed_network(NetworkConfig()),
    "lenet": Network((28, 28, 1), (
        Conv2D(16, 5, padding="same"), MaxPool(2),
        Conv2D(32, 5), MaxPool(2),
        Flatten(), Dense(64, relu=True), Dense(10))),
    "mnist-small": Network((28, 28, 1), (
        Conv2D(8, 3), MaxPool(2),
        Conv2D(16, 3), MaxPool(2),
        Flatten(), Dense(10))),
    "rgb-shapes": Network((32, 32, 3), (
        Conv2D(8, 3, stride=2, padding="same"),
        Conv2D(16, 3, padding="same"), MaxPool(2),
        Flatten(), Dense(4))),
}


def preset(name):
    """The :class:`Network` named ``name``; :class:`ConfigError` listing the names otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown network {name!r} (one of {', '.join(PRESETS)})")
    return PRESETS[name]
