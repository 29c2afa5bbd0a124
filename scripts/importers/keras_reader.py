"""Keras models as cnnforge float networks: Keras 3 native ``.keras`` files and legacy HDF5
``.h5`` files (written by Keras 3 or Keras 2), read with h5py and the saved JSON config only:
neither TensorFlow nor Keras is needed.

File layouts
------------
``.keras``
    A zip of ``config.json`` (the model's config: ``{"class_name": "Sequential" | "Functional",
    "config": {"layers": [...], ...}}``), ``metadata.json`` and ``model.weights.h5``. The
    weights of the model's ``i``-th layer are ``layers/<key>/vars/0``, ``1``, ... in the order
    the layer created them (kernel, bias; gamma, beta, moving mean, moving variance). ``<key>``
    is not the layer's name but its class name in snake case, numbered per class in the model's
    layer order (``conv2d``, ``conv2d_1``, ...; a Sequential model's InputLayer does not count):
    the rule Keras' own loader follows (newer versions also write the layer's name as the
    ``vars`` group's ``name`` attribute, which is not needed). Optimizer state
    (``optimizer/vars``) is not read.
``.h5``
    The JSON config is the file's ``model_config`` attribute; the weights of layer ``name`` are
    in ``model_weights/<name>``, whose ``weight_names`` attribute lists them in creation order as
    paths inside the group (Keras 3: ``<model>/<layer>/kernel`` or ``<layer>/kernel``; Keras 2:
    ``<layer>/kernel:0``). ``optimizer_weights`` is not read.

The model is a Sequential model, or a Functional one whose layers form a single chain from one
input to one output, of the layers in :data:`SUPPORTED_LAYERS`; everything else is refused with
one line naming the layer, its class and the field that cannot be mapped.
"""

import io
import json
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..errors import UnsupportedModel
from ..hw.params import Conv2D
from .builder import NetworkBuilder


__all__ = ["SUPPORTED_LAYERS", "read_keras"]

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_EPSILON = 1e-7            # keras.config.epsilon(): Normalization's floor on the std
_MISSING = object()


def read_keras(path, input_scale, input_offset):
    """The :class:`~cnnforge.sim.reference.float_network.FloatNetwork` of the Keras model file
    ``path`` (``.keras`` or legacy ``.h5``).

    Parameters
    ----------
    path : str or Path
        The model file; its format is told by its first bytes, not its suffix.
    input_scale, input_offset : float or per-channel arrays
        How a raw pixel becomes the model's input (``pixel * scale + offset``); the model's own
        preprocessing layers (Rescaling, Normalization, a leading BatchNormalization) compose
        onto it.

    Raises
    ------
    UnsupportedModel
        With one line: ``"<path>: not a readable Keras model (<reason>)"`` for a missing,
        truncated or foreign file, or naming the layer, its class and the field that cannot be
        mapped.
    """
    source = str(path)
    with _open_model(source) as (config, store):
        model = _Model(source, config)
        builder = _Builder(source, model.input_shape, input_scale, input_offset)
        weights = store(model.saved_layers)
        for spec in model.layers:
            layer = _Layer(source, spec, model.data_format, weights)
            convert = _CONVERTERS.get(layer.class_name)
            if convert is None:
                layer.refuse("not supported")
            convert(layer, builder)
        return builder.network()


def _refusal(source, name, class_name, what):
    return UnsupportedModel(f"{source}: layer {name!r} ({class_name}): {what} (supported "
                            f"layers: {', '.join(SUPPORTED_LAYERS)})")


class _Builder(NetworkBuilder):
    """The builder, its messages in this reader's form."""

    def fail(self, name, op, what):
        raise _refusal(self.source, name, op, what)


# --- the file ----------------------------------------------------------------------------------

def _unreadable(source, reason):
    reason = " ".join(str(reason).split())
    return UnsupportedModel(f"{source}: not a readable Keras model ({reason})")


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@contextmanager
def _open_model(source):
    """``(config, store)`` of the file: its JSON config and a function that, given the model's
    saved layers as ``(name, class_name)``, returns a ``name -> [arrays]`` lookup."""
    if not Path(source).is_file():
        raise _unreadable(source, "no such file")
    with open(source, "rb") as f:
        magic = f.read(8)
    if magic.startswith(_ZIP_MAGIC):
        read = _read_native
    elif magic == _HDF5_MAGIC:
        read = _read_legacy
    else:
        raise _unreadable(source, "neither a .keras zip nor an HDF5 file")
    try:
        h5, config, store = read(source)
    except (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as e:
        # h5py: OSError; a damaged zip: BadZipFile, EOFError or zlib.error (an OSError);
        # JSON: ValueError.
        raise _unreadable(source, f"{type(e).__name__}: {e}") from None
    with h5:
        if not (isinstance(config, dict) and isinstance(config.get("config"), dict)):
            raise _unreadable(source, "its config is not a Keras model config")
        try:
            yield config, store
        except (OSError, KeyError, IndexError, TypeError) as e:
            # a config missing what Keras always writes, or a damaged weights dataset
            raise _unreadable(source, f"{type(e).__name__}: {e}") from None


def _read_native(source):
    with zipfile.ZipFile(source) as archive:
        members = archive.namelist()
        for member in ("config.json", "model.weights.h5"):
            if member not in members:
                raise _unreadable(source, f"the zip has no {member}")
        config = json.loads(archive.read("config.json"))
        weights = io.BytesIO(archive.read("model.weights.h5"))
    h5 = h5py.File(weights, "r")
    return h5, config, _native_store(h5)


def _read_legacy(source):
    h5 = h5py.File(source, "r")
    try:
        if "model_config" not in h5.attrs:
            raise _unreadable(source, "an HDF5 file without a model_config attribute "
                                      "(weights only?)")
        if "model_weights" not in h5:
            raise _unreadable(source, "an HDF5 file without a model_weights group")
        config = json.loads(_text(h5.attrs["model_config"]))
        return h5, config, _legacy_store(h5["model_weights"])
    except BaseException:
        h5.close()
        raise


def _snake_case(name):
    """``keras.src.utils.naming.to_snake_case``: ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _native_store(h5):
    """The weights of a ``.keras`` file's ``model.weights.h5`` (see the module docstring)."""
    def store(saved_layers):
        root = h5.get("layers")
        if root is None:        # a file written by Keras 2.13
            root = h5.get("_layer_checkpoint_dependencies")
        groups = {}             # layer name -> its vars group
        if root is not None:
            counts = {}
            for name, class_name in saved_layers:
                key = _snake_case(class_name)
                counts[key] = counts.get(key, -1) + 1
                if counts[key]:
                    key = f"{key}_{counts[key]}"
                if isinstance(root.get(key), h5py.Group) and "vars" in root[key]:
                    groups[name] = root[key]["vars"]

        def arrays(name):
            group = groups.get(name)
            if group is None:
                return []
            return [group[key][()] for key in sorted(group, key=lambda k: (len(k), k))]
        return arrays
    return store


def _legacy_store(model_weights):
    """The weights of a legacy ``.h5`` file's ``model_weights`` group."""
    def arrays(name):
        if name not in model_weights:
            return []
        group = model_weights[name]
        return [group[_text(weight)][()] for weight in group.attrs.get("weight_names", [])]
    return lambda saved_layers: arrays


# --- the model's layers ------------------------------------------------------------------------

class _Model:
    """The layers of a Sequential model, or of a Functional model that is one chain, in order.

    Members
    -------
    input_shape : (H, W, C)
    data_format : "channels_last" or "channels_first" (of the model's conv and pooling layers)
    layers : list of layer configs after the input, in order
    saved_layers : ``(name, class_name)`` of the layers in the order Keras saves their weights
    """

    def __init__(self, source, config):
        self.source = source
        kind, body = config.get("class_name"), config["config"]
        specs = body.get("layers")
        if not isinstance(specs, list) or not specs \
                or not all(isinstance(s, dict) and isinstance(s.get("config"), dict)
                           for s in specs):
            raise _unreadable(source, f"the {kind} model config has no list of layers")
        if kind == "Sequential":
            first = specs[0]
            if first.get("class_name") == "InputLayer":
                shape = _batch_shape(first["config"])
                specs = specs[1:]
            else:               # Keras 2: the input shape is an argument of the first layer
                shape = _batch_shape(first["config"], body.get("build_input_shape"))
            self.layers = specs
            self.saved_layers = [(_name(s), s.get("class_name")) for s in specs]
        elif kind in ("Functional", "Model"):
            chain = self._chain(specs, body)
            shape = _batch_shape(chain[0]["config"])
            self.layers = chain[1:]
            self.saved_layers = [(_name(s), s.get("class_name")) for s in specs]
        else:
            raise UnsupportedModel(f"{source}: a {kind!r} model (cnnforge reads Sequential "
                                   f"models and Functional models that are one chain of layers)")
        self.data_format = self._data_format()
        self.input_shape = self._image_shape(shape)

    def _refuse(self, spec, what):
        _Layer(self.source, spec, None, None).refuse(what)

    def _chain(self, specs, body):
        """The layers from the model's one input to its one output; refuses inputs, outputs,
        layers with several inputs and layers whose output feeds several layers."""
        by_name = {_name(s): s for s in specs}
        ends = {}
        for key in ("input_layers", "output_layers"):
            value = body.get(key)
            if isinstance(value, list) and value and isinstance(value[0], str):
                value = [value]     # Keras 3 writes a single input or output unnested
            if not isinstance(value, list) or not value \
                    or not all(isinstance(v, list) and v and v[0] in by_name for v in value):
                raise _unreadable(self.source, f"the Functional model config has no valid {key}")
            ends[key] = [v[0] for v in value]
        for key, what in (("input_layers", "inputs"), ("output_layers", "outputs")):
            if len(ends[key]) > 1:
                names = ", ".join(map(repr, ends[key]))
                self._refuse(by_name[ends[key][1]], f"the model has {len(ends[key])} {what} "
                             f"({names}); cnnforge reads one chain of layers from one input to "
                             f"one output")
        consumers = {name: [] for name in by_name}
        for spec in specs:
            calls = _inbound(spec)
            if spec.get("class_name") == "InputLayer" and not calls:
                continue
            if len(calls) != 1:
                self._refuse(spec, f"is called {len(calls)} times (a shared layer); cnnforge "
                                   f"reads one chain of layers")
            sources = calls[0]
            if len(sources) != 1:
                names = ", ".join(map(repr, sources))
                self._refuse(spec, f"takes {len(sources)} inputs ({names}); cnnforge reads one "
                                   f"chain of layers")
            if sources[0] not in consumers:
                raise _unreadable(self.source, f"layer {_name(spec)!r} reads an unknown layer "
                                               f"{sources[0]!r}")
            consumers[sources[0]].append(_name(spec))
        chain, name = [], ends["input_layers"][0]
        while True:
            chain.append(by_name[name])
            following = consumers[name]
            if not following:
                break
            if len(following) > 1:
                self._refuse(by_name[name], f"its output feeds {len(following)} layers "
                             f"({', '.join(map(repr, following))}): the model branches; "
                             f"cnnforge reads one chain of layers")
            if len(chain) == len(specs):
                raise _unreadable(self.source, "the Functional model's layers form a cycle")
            name = following[0]
        output = ends["output_layers"][0]
        stray = [s for s in specs if all(s is not c for c in chain)]
        if stray or name != output:
            self._refuse(stray[0] if stray else by_name[output], "is not on the chain of layers "
                         "from the model's input to its output")
        return chain

    def _data_format(self):
        """The conv and pooling layers' data_format (a model mixing both is refused)."""
        found = None
        for spec in self.layers:
            if spec.get("class_name") not in ("Conv2D", "MaxPooling2D"):
                continue
            fmt = spec["config"].get("data_format") or "channels_last"
            if fmt not in ("channels_last", "channels_first"):
                self._refuse(spec, f"data_format {fmt!r} (channels_last or channels_first)")
            if found is not None and fmt != found:
                self._refuse(spec, f"data_format {fmt!r} differs from the earlier layers' "
                                   f"{found!r}")
            found = fmt
        return found or "channels_last"

    def _image_shape(self, shape):
        """``(H, W, C)`` from the Keras input shape ``[batch, ...]``."""
        ok = isinstance(shape, list) and len(shape) == 4 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape[1:])
        if not ok:
            raise UnsupportedModel(f"{self.source}: input shape {shape!r} is not an image "
                                   f"(batch, height, width, channels) of known size")
        if self.data_format == "channels_first":
            return (shape[2], shape[3], shape[1])
        return tuple(shape[1:])


def _name(spec):
    return spec["config"].get("name", spec.get("name"))


def _batch_shape(config, default=None):
    """An InputLayer's (or a Keras 2 first layer's) ``[batch, ...]`` shape."""
    for key in ("batch_shape", "batch_input_shape"):
        if config.get(key) is not None:
            return config[key]
    return default


def _inbound(spec):
    """The layers a Functional model's layer reads, one list per call of the layer."""
    calls = []
    for node in spec.get("inbound_nodes") or []:
        if isinstance(node, dict):      # Keras 3: {"args": [...], "kwargs": {...}}
            calls.append(list(_history(node)))
        else:                           # Keras 2: [[name, node_index, tensor_index, kwargs]]
            calls.append([entry[0] for entry in node])
    return calls


def _history(value):
    """The source layer of every ``__keras_tensor__`` in a Keras 3 call's arguments."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value["config"]["keras_history"][0]
            return
        for item in value.values():
            yield from _history(item)
    elif isinstance(value, list):
        for item in value:
            yield from _history(item)


# --- one layer -----------------------------------------------------------------------------------

class _Layer:
    """One layer's config, its weights and the refusals that name it."""

    def __init__(self, source, spec, data_format, weights):
        self.source = source
        self.class_name = spec.get("class_name")
        self.config = spec["config"]
        self.name = _name(spec)
        self.data_format = data_format
        self._weights = weights

    def _where(self):
        return f"{self.source}: layer {self.name!r} ({self.class_name})"

    def refuse(self, what):
        raise _refusal(self.source, self.name, self.class_name, what)

    def get(self, key, default=_MISSING):
        if key in self.config:
            return self.config[key]
        if default is _MISSING:
            raise UnsupportedModel(f"{self._where()}: its config has no {key!r}")
        return default

    def require(self, key, allowed, default=_MISSING):
        """The config value ``key``, refused unless it is one of ``allowed``."""
        value = self.get(key, default)
        if value not in allowed:
            self.refuse(f"{key} {value!r} (only {' or '.join(map(repr, allowed))})")
        return value

    def side(self, key, default=_MISSING):
        """A square window's side from ``[n, n]`` (or ``n``)."""
        value = self.get(key, default)
        pair = value if isinstance(value, list) else [value, value]
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                     for v in pair):
            self.refuse(f"{key} {value!r} is not a pair of positive integers")
        if pair[0] != pair[1]:
            self.refuse(f"{key} {value!r} (cnnforge needs the same value for height and width)")
        return pair[0]

    def constant(self, key, default=_MISSING):
        """A number or per-channel list (Keras 3 writes arrays as ``__numpy__`` objects)."""
        value = self.get(key, default)
        if isinstance(value, dict) and value.get("class_name") in ("__numpy__", "__tensor__"):
            value = value["config"]["value"]
        try:
            array = np.squeeze(np.asarray(value, np.float64))    # (1, 1, 1, C) -> (C,)
        except (TypeError, ValueError):
            array = None
        if array is None or array.ndim > 1 or not np.isfinite(array).all():
            self.refuse(f"{key} {value!r} is not a number or one number per channel")
        return array

    def activation(self, allowed):
        value = self.get("activation", "linear")
        value = "linear" if value is None else value
        if value not in allowed:
            self.refuse(f"activation {value!r} (only {', '.join(map(repr, allowed))})")
        return value

    def channel_axis(self, key, shape):
        """Check that ``key`` (an axis, or a list of one) is the channel axis of a tensor of
        ``shape`` (without the batch axis)."""
        value = self.get(key, -1)
        axes = value if isinstance(value, list) else [value]
        rank = len(shape) + 1
        channel = 1 if len(shape) == 3 and self.data_format == "channels_first" else rank - 1
        if len(axes) != 1 or not isinstance(axes[0], int) or axes[0] % rank != channel:
            self.refuse(f"{key} {value!r} (only the channel axis, {channel} or "
                        f"{channel - rank}, of its {rank}-D input)")

    def weights(self, *names, counts=()):
        """The layer's arrays, in the order Keras created them (``names`` for messages); all
        floats but those named in ``counts``."""
        arrays = self._weights(self.name)
        if len(arrays) != len(names):
            raise UnsupportedModel(f"{self._where()}: the file holds {len(arrays)} weight "
                                   f"arrays for it, not {len(names)} ({', '.join(names)})")
        for name, array in zip(names, arrays):
            if name in counts:
                continue
            if array.dtype.kind != "f":
                self.refuse(f"its {name} is {array.dtype} (quantized layers are not supported)")
            if not np.isfinite(array).all():
                raise UnsupportedModel(f"{self._where()}: its {name} has values that are not "
                                       f"finite")
        return [np.asarray(array, np.float64) for array in arrays]

    def then(self, builder, activation):
        """The layer's own activation, after it."""
        if activation == "relu":
            builder.relu(self.name, self.class_name)
        elif activation == "softmax":
            builder.softmax(self.name, self.class_name)


def _input_layer(layer, builder):
    layer.refuse("a second InputLayer inside the model")


def _conv2d(layer, builder):
    filters = layer.get("filters")
    kernel_size = layer.side("kernel_size")
    stride = layer.side("strides", [1, 1])
    if stride not in (1, 2):
        layer.refuse(f"strides {layer.get('strides')!r} (cnnforge convolutions have stride 1 "
                     f"or 2)")
    if layer.side("dilation_rate", [1, 1]) != 1:
        layer.refuse(f"dilation_rate {layer.get('dilation_rate')!r} (only 1)")
    layer.require("groups", (1,), 1)
    padding = layer.require("padding", ("valid", "same"))
    activation = layer.activation(("relu", "linear"))
    use_bias = layer.require("use_bias", (True, False), True)
    kernel, *bias = layer.weights("kernel", "bias") if use_bias else layer.weights("kernel")
    if kernel.ndim != 4 or kernel.shape[:2] != (kernel_size, kernel_size) \
            or kernel.shape[3] != filters:
        layer.refuse(f"kernel of shape {kernel.shape}, not ({kernel_size}, {kernel_size}, "
                     f"channels, {filters})")
    pads = (0, 0, 0, 0)
    if padding == "same" and len(builder.shape) == 3:
        pads = Conv2D(filters, kernel_size, stride, "same").pads(*builder.shape[:2])
    builder.conv(layer.name, layer.class_name, kernel.transpose(3, 0, 1, 2),
                 bias[0] if bias else None, stride, pads)
    layer.then(builder, activation)


def _max_pooling2d(layer, builder):
    size = layer.side("pool_size")
    stride = layer.side("strides") if layer.get("strides", None) is not None else size
    layer.require("padding", ("valid",), "valid")
    builder.maxpool(layer.name, layer.class_name, size, stride)


def _flatten(layer, builder):
    fmt = layer.get("data_format", None) or "channels_last"
    # Keras' channels_first Flatten moves the channels last before flattening: (y, x, c)
    # order; a channels_last Flatten of a channels-first feature map gives (c, y, x).
    order = "chw" if layer.data_format == "channels_first" and fmt == "channels_last" else "hwc"
    if fmt != layer.data_format and len(builder.shape) == 3 and order != "chw":
        layer.refuse(f"data_format {fmt!r} of a {layer.data_format} feature map")
    builder.flatten(layer.name, layer.class_name, order)


def _dense(layer, builder):
    units = layer.get("units")
    activation = layer.activation(("relu", "linear", "softmax"))
    use_bias = layer.require("use_bias", (True, False), True)
    kernel, *bias = layer.weights("kernel", "bias") if use_bias else layer.weights("kernel")
    if kernel.ndim != 2 or kernel.shape[1] != units:
        layer.refuse(f"kernel of shape {kernel.shape}, not (inputs, {units})")
    builder.dense(layer.name, layer.class_name, kernel.T, bias[0] if bias else None)
    layer.then(builder, activation)


def _relu(layer, builder):
    for key in ("max_value", "negative_slope", "threshold"):
        default = None if key == "max_value" else 0
        value = layer.get(key, default)
        if value != default:
            layer.refuse(f"{key} {value!r} (only the plain ReLU: max_value None, "
                         f"negative_slope 0, threshold 0)")
    builder.relu(layer.name, layer.class_name)


def _activation(layer, builder):
    layer.then(builder, layer.activation(("relu", "softmax", "linear")))


def _softmax(layer, builder):
    layer.channel_axis("axis", builder.shape)
    builder.softmax(layer.name, layer.class_name)


def _batch_normalization(layer, builder):
    layer.channel_axis("axis", builder.shape)
    scale = layer.require("scale", (True, False), True)
    center = layer.require("center", (True, False), True)
    names = ("gamma",) * scale + ("beta",) * center + ("moving_mean", "moving_variance")
    arrays = dict(zip(names, layer.weights(*names)))
    mean = arrays["moving_mean"]
    gamma = arrays.get("gamma", np.ones_like(mean))
    beta = arrays.get("beta", np.zeros_like(mean))
    epsilon = float(layer.constant("epsilon", 1e-3))
    builder.batchnorm(layer.name, layer.class_name, gamma, beta, mean,
                      arrays["moving_variance"], epsilon)


def _dropout(layer, builder):
    """Identity at inference."""


def _rescaling(layer, builder):
    builder.affine(layer.name, layer.class_name, layer.constant("scale"),
                   layer.constant("offset", 0.0))


def _normalization(layer, builder):
    """``(x - mean) / max(sqrt(variance), epsilon)``; mean and variance from the config, or
    (after ``adapt``) the layer's weights ``mean, variance, count``."""
    layer.channel_axis("axis", builder.shape)
    layer.require("invert", (False,), False)
    if layer.get("mean", None) is not None:
        mean, variance = layer.constant("mean"), layer.constant("variance")
    else:
        mean, variance, _ = layer.weights("mean", "variance", "count", counts=("count",))
    if mean.ndim > 1 or variance.ndim > 1 or np.any(variance < 0):
        layer.refuse(f"mean of shape {mean.shape}, variance of shape {variance.shape}: not "
                     f"one non-negative value per channel")
    std = np.maximum(np.sqrt(variance), _KERAS_EPSILON)
    builder.affine(layer.name, layer.class_name, 1 / std, -mean / std)


_CONVERTERS = {
    "InputLayer": _input_layer,
    "Conv2D": _conv2d,
    "MaxPooling2D": _max_pooling2d,
    "Flatten": _flatten,
    "Dense": _dense,
    "ReLU": _relu,
    "Activation": _activation,
    "Softmax": _softmax,
    "BatchNormalization": _batch_normalization,
    "Dropout": _dropout,
    "Rescaling": _rescaling,
    "Normalization": _normalization,
}

#: The Keras layer classes this reader maps onto cnnforge layers.
SUPPORTED_LAYERS = tuple(_CONVERTERS)
