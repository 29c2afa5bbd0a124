"""The versioned model file: every integer tensor of a network plus its description.

A zip (``.npz``) of ``.npy`` tensors and ``meta.json`` (format version, network description,
requantization and softmax constants, the accuracies it achieved and the recipe that made it).
Loading validates version, every field's type and range, shapes, dtypes and (float weights)
finiteness.

* **Version 2** (written now): any layer list (:class:`~cnnforge.hw.params.Network`). Meta
  ``network`` (its ``to_dict``), ``layers`` (``{"shift": s}`` for each conv or hidden dense layer,
  ``{}`` for the last layer, ``null`` for max-pool and flatten), ``softmax_mult``,
  ``softmax_shift``, ``info``, and with the float network ``float_input`` (per-channel
  ``scale`` and ``offset`` of the input mapping); tensors ``layer<i>_w``, ``layer<i>_b``,
  ``layer<i>_mult`` and ``float_layer<i>_w``, ``float_layer<i>_b``.
* **Version 1** (read only): the seed network, meta ``config`` (:class:`NetworkConfig` fields),
  ``requant_shift``, ``softmax_mult``, ``softmax_shift``; tensors ``conv_w``, ``conv_b``,
  ``requant_mult``, ``dense_w``, ``dense_b`` and ``float_`` copies of the float ones.
"""

import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ...fsutil import atomic_open
from ...hw.params import ConfigError, Network, NetworkConfig, SoftmaxFormat, Widths
from .golden import QuantLayer, QuantModel, QuantNetwork


__all__ = ["FORMAT_VERSION", "DEFAULT_PATH", "save", "load", "load_network", "load_float",
           "load_float_network", "export_json"]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_PATH = Path(__file__).parent / "models" / "mnist_cnn.npz"

_ARRAYS = ("conv_w", "conv_b", "requant_mult", "dense_w", "dense_b")
_FLOAT_ARRAYS = ("conv_w", "conv_b", "dense_w", "dense_b")


def _expected(config):
    return {
        "conv_w": ((config.filters, config.kernel, config.kernel, config.in_channels), np.int8),
        "conv_b": ((config.filters,), np.int32),
        "requant_mult": ((config.filters,), np.uint16),
        "dense_w": ((config.classes, config.features), np.int8),
        "dense_b": ((config.classes,), np.int32),
    }


def _zip_bytes(meta, tensors):
    """The file's bytes: fixed zip timestamps, so the same content gives the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        def put(name, data):
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
        put("meta.json", json.dumps(meta, sort_keys=True, indent=1).encode())
        for name, value in tensors.items():
            arr = io.BytesIO()
            np.save(arr, np.ascontiguousarray(value), allow_pickle=False)
            put(f"{name}.npy", arr.getvalue())
    return buf.getvalue()


def _float_network(float_params, network):
    """``float_params`` as a ``FloatNetwork`` (the seed's ``FloatParams`` converted)."""
    from .float_network import FloatNetwork
    if float_params is None or isinstance(float_params, FloatNetwork):
        return float_params
    return FloatNetwork(network, [float_params.conv_w, None, None, float_params.dense_w],
                        [float_params.conv_b, None, None, float_params.dense_b])


def save(model, path=DEFAULT_PATH, info=None, float_params=None):
    """Write ``model`` (a :class:`QuantNetwork` or :class:`QuantModel`) and free-form ``info``
    (accuracies, recipe) atomically, in the current format version.

    ``float_params`` (a ``FloatNetwork``, or the seed's ``FloatParams``) keeps the float network
    the integer one was quantized from, for float evaluation and fine-tuning.

    The bytes depend only on the model and ``info``: no timestamps, so the same training run
    gives the same file hash.
    """
    qnet = model.to_network() if isinstance(model, QuantModel) else model
    net = qnet.network
    fnet = _float_network(float_params, net)
    layers_meta, tensors = [], {}
    for index, layer in enumerate(net.layers):
        p = qnet.layers[index]
        if p is None:
            layers_meta.append(None)
            continue
        tensors[f"layer{index}_w"] = np.asarray(p.w, np.int8)
        tensors[f"layer{index}_b"] = np.asarray(p.b, np.int32)
        if p.mult is None:
            layers_meta.append({})
        else:
            tensors[f"layer{index}_mult"] = np.asarray(p.mult, np.uint16)
            layers_meta.append({"shift": int(p.shift)})
    meta = {
        "format": "cnnforge-model",
        "version": FORMAT_VERSION,
        "network": net.to_dict(),
        "layers": layers_meta,
        "softmax_mult": int(qnet.softmax_mult),
        "softmax_shift": int(qnet.softmax_shift),
        "info": info or {},
    }
    if fnet is not None:
        meta["float_input"] = {"scale": [float(v) for v in fnet.input_scale],
                               "offset": [float(v) for v in fnet.input_offset]}
        for index in net.param_layers():
            tensors[f"float_layer{index}_w"] = np.asarray(fnet.weights[index], np.float32)
            tensors[f"float_layer{index}_b"] = np.asarray(fnet.biases[index], np.float32)
    data = _zip_bytes(meta, tensors)
    with atomic_open(path, "wb") as f:
        f.write(data)


def _read(path, names, *, required=True):
    """``(meta, {name: array})`` of the model file's ``meta.json`` and ``<name>.npy`` entries
    (``required=False``: ``None`` for the arrays if one is absent); :class:`ModelError` for a
    file that is missing or not a readable zip of them."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found (run `make train` to make one)")
    try:
        with zipfile.ZipFile(path) as zf:
            entries = set(zf.namelist())
            if "meta.json" not in entries:
                raise ModelError(f"{path}: not a cnnforge model file (no meta.json)")
            meta = json.loads(zf.read("meta.json"))
            missing = [name for name in names if f"{name}.npy" not in entries]
            if missing:
                if not required:
                    return meta, None
                raise ModelError(f"{path}: missing array {missing[0]!r}")
            arrays = {name: np.load(io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False)
                      for name in names}
    # zlib.error: a damaged deflate stream; RuntimeError: an encrypted entry;
    # NotImplementedError: an unknown compression method.
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, RuntimeError,
            NotImplementedError) as e:
        raise ModelError(f"{path}: corrupt model file ({e})") from None
    return meta, arrays


def _meta_int(path, meta, name, minimum, maximum):
    """``meta[name]``, an integer in ``minimum .. maximum``; :class:`ModelError` naming the
    file, the field and the value otherwise."""
    if name not in meta:
        raise ModelError(f"{path}: meta.json has no {name!r}")
    value = meta[name]
    if type(value) is not int:      # JSON numbers only: no bool, no float
        raise ModelError(f"{path}: {name} must be an integer, not {value!r}")
    if not minimum <= value <= maximum:
        raise ModelError(f"{path}: {name} must be in {minimum}..{maximum}, not {value!r}")
    return value


def _check_array(path, name, arr, shape, dtype):
    if arr.shape != shape:
        raise ModelError(f"{path}: {name} has shape {arr.shape}, expected {shape}")
    if arr.dtype != dtype:
        raise ModelError(f"{path}: {name} has dtype {arr.dtype}, expected {np.dtype(dtype)}")


def _check_layer_tensors(path, name, w, b, bias_max):
    if w.min(initial=0) < -Widths.weight_max:
        raise ModelError(f"{path}: {name} weights hold -128 (weights are symmetric, -127..127)")
    if np.abs(b.astype(np.int64)).max(initial=0) > bias_max:
        raise ModelError(f"{path}: {name} bias exceeds its bound {bias_max}")


def _meta_header(path, meta):
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: meta.json must be a JSON object, not {type(meta).__name__}")
    if meta.get("format") != "cnnforge-model":
        raise ModelError(f"{path}: not a cnnforge model file")
    version = meta.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ModelError(f"{path}: model format version {version!r} is not supported "
                         f"(this cnnforge reads {', '.join(map(str, READABLE_VERSIONS))})")
    info = meta.get("info", {})
    if not isinstance(info, dict):
        raise ModelError(f"{path}: info must be a JSON object, not {type(info).__name__}")
    return version, info


def _softmax_constants(path, meta, logit_bits):
    mult_bits = SoftmaxFormat.mult_bits
    return (_meta_int(path, meta, "softmax_mult", 1, (1 << mult_bits) - 1),
            _meta_int(path, meta, "softmax_shift", 1, logit_bits + mult_bits))


def _load_v1(path):
    """A version 1 file (the seed network) as a :class:`QuantModel`."""
    meta, arrays = _read(path, _ARRAYS)
    if "config" not in meta:
        raise ModelError(f"{path}: meta.json has no 'config'")
    try:
        config = NetworkConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as e:
        raise ModelError(f"{path}: {e}") from None
    for name, (shape, dtype) in _expected(config).items():
        _check_array(path, name, arrays[name], shape, dtype)
    widths = Widths(config)
    for name in ("conv_w", "dense_w"):
        if arrays[name].min(initial=0) < -widths.weight_max:
            raise ModelError(f"{path}: {name} holds -128 (weights are symmetric, -127..127)")
    if np.abs(arrays["conv_b"]).max(initial=0) > widths.conv_bias_max:
        raise ModelError(f"{path}: conv_b exceeds the conv bias bound {widths.conv_bias_max}")
    if np.abs(arrays["dense_b"]).max(initial=0) > widths.dense_bias_max:
        raise ModelError(f"{path}: dense_b exceeds the dense bias bound {widths.dense_bias_max}")
    softmax_mult, softmax_shift = _softmax_constants(path, meta, widths.dense_acc)
    return QuantModel(config=config, softmax_mult=softmax_mult, softmax_shift=softmax_shift,
                      requant_shift=_meta_int(path, meta, "requant_shift", 1,
                                              widths.requant_shift_max),
                      **arrays)


def _network_of(path, meta):
    if "network" not in meta:
        raise ModelError(f"{path}: meta.json has no 'network'")
    try:
        return Network.from_dict(meta["network"])
    except (ConfigError, TypeError) as e:
        raise ModelError(f"{path}: {e}") from None


def _tensor_names(net, prefix=""):
    names = []
    for index in net.param_layers():
        names += [f"{prefix}layer{index}_w", f"{prefix}layer{index}_b"]
        if prefix == "" and index != len(net.layers) - 1:
            names.append(f"layer{index}_mult")
    return names


def _load_v2(path):
    """A version 2 file as a :class:`QuantNetwork`."""
    meta, _ = _read(path, [])
    net = _network_of(path, meta)
    _, arrays = _read(path, _tensor_names(net))
    layers_meta = meta.get("layers")
    if not isinstance(layers_meta, list) or len(layers_meta) != len(net.layers):
        raise ModelError(f"{path}: meta 'layers' must be a list of {len(net.layers)} entries, "
                         f"not {layers_meta!r}")
    layers = [None] * len(net.layers)
    last = len(net.layers) - 1
    for index in net.param_layers():
        name = f"layer {index} ({net.layers[index].kind})"
        w, b = arrays[f"layer{index}_w"], arrays[f"layer{index}_b"]
        out = net.weight_shape(index)[0]
        _check_array(path, f"layer{index}_w", w, net.weight_shape(index), np.int8)
        _check_array(path, f"layer{index}_b", b, (out,), np.int32)
        _check_layer_tensors(path, name, w, b, net.layer_widths(index).bias_max)
        entry = layers_meta[index]
        if not isinstance(entry, dict):
            raise ModelError(f"{path}: meta 'layers' entry {index} must be an object, "
                             f"not {entry!r}")
        if index == last:
            layers[index] = QuantLayer(w, b)
            continue
        mult = arrays[f"layer{index}_mult"]
        _check_array(path, f"layer{index}_mult", mult, (out,), np.uint16)
        shift = _meta_int(path, entry, "shift", 1, Widths.requant_shift_max)
        layers[index] = QuantLayer(w, b, mult, shift)
    softmax_mult, softmax_shift = _softmax_constants(path, meta, net.layer_widths(last).acc)
    return QuantNetwork(network=net, layers=layers, softmax_mult=softmax_mult,
                        softmax_shift=softmax_shift)


def load_network(path=None, with_info=False):
    """Read and validate a model file of any network: a :class:`QuantNetwork` (and its ``info``
    with ``with_info``); :class:`ModelError` naming the problem otherwise.

    Every field is checked against the range the accelerator's engines take (those of
    :class:`~cnnforge.hw.requant.Requantize` and :class:`~cnnforge.hw.softmax.Softmax`), so a
    model that loads can be built and simulated.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    meta, _ = _read(path, [])
    version, info = _meta_header(path, meta)
    qnet = _load_v1(path).to_network() if version == 1 else _load_v2(path)
    return (qnet, info) if with_info else qnet


def load(path=None, with_info=False):
    """Read and validate a model file of a network the accelerator builds today (Conv ->
    MaxPool -> Flatten -> Dense): a :class:`QuantModel`; :class:`ModelError` naming the problem
    (or why the network is not such a network) otherwise."""
    path = Path(path) if path is not None else DEFAULT_PATH
    qnet, info = load_network(path, with_info=True)
    try:
        model = qnet.seed_model()
    except ConfigError as e:
        raise ModelError(f"{path}: {e}") from None
    return (model, info) if with_info else model


def load_float_network(path=None):
    """The float network stored beside the integer one (a ``FloatNetwork``), or
    :class:`ModelError` if absent or not finite float arrays of the integer network's shapes."""
    from .float_network import FloatNetwork
    path = Path(path) if path is not None else DEFAULT_PATH
    meta, _ = _read(path, [])
    version, _ = _meta_header(path, meta)
    qnet = load_network(path)
    net = qnet.network
    if version == 1:
        names = [f"float_{name}" for name in _FLOAT_ARRAYS]
        _, floats = _read(path, names, required=False)
        if floats is None:
            raise ModelError(f"{path}: holds no float weights")
        v1 = {2 * i + j: f"float_{name}" for i, j, name in
              ((0, 0, "conv_w"), (0, 1, "conv_b"), (3, 0, "dense_w"), (3, 1, "dense_b"))}
        floats = {f"float_layer{k // 2}_{'wb'[k % 2]}": floats[v] for k, v in v1.items()}
        scale, offset = None, None
    else:
        _, floats = _read(path, _tensor_names(net, "float_"), required=False)
        if floats is None or "float_input" not in meta:
            raise ModelError(f"{path}: holds no float weights")
        fin = meta["float_input"]
        c = net.input[2]
        try:
            scale = np.asarray(fin["scale"], np.float64)
            offset = np.asarray(fin["offset"], np.float64)
            ok = scale.shape == (c,) and offset.shape == (c,)
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok or not (np.isfinite(scale).all() and np.isfinite(offset).all()):
            raise ModelError(f"{path}: float_input must hold {c} finite scales and offsets, "
                             f"not {fin!r}")
    weights, biases = [None] * len(net.layers), [None] * len(net.layers)
    for index in net.param_layers():
        for kind, shape, store in (("w", net.weight_shape(index), weights),
                                   ("b", (net.weight_shape(index)[0],), biases)):
            name = f"float_layer{index}_{kind}"
            arr = floats[name]
            shown = name if version == 2 else {"float_layer0_w": "float_conv_w",
                                               "float_layer0_b": "float_conv_b",
                                               "float_layer3_w": "float_dense_w",
                                               "float_layer3_b": "float_dense_b"}[name]
            if arr.shape != shape:
                raise ModelError(f"{path}: {shown} has shape {arr.shape}, expected {shape}")
            if not np.issubdtype(arr.dtype, np.floating):
                raise ModelError(f"{path}: {shown} has dtype {arr.dtype}, expected float32")
            if not np.isfinite(arr).all():
                bad = arr[~np.isfinite(arr)][0]
                raise ModelError(f"{path}: {shown} holds {bad} (float weights must be finite)")
            store[index] = arr
    return FloatNetwork(net, weights, biases, scale, offset)


def load_float(path=None):
    """The float seed network (``FloatParams``) stored beside the integer one; see
    :func:`load_float_network`."""
    from .float_model import FloatParams
    path = Path(path) if path is not None else DEFAULT_PATH
    load(path)
    fnet = load_float_network(path)
    if not (np.allclose(fnet.input_scale, 1 / 255) and not fnet.input_offset.any()):
        raise ModelError(f"{path}: its float network maps pixels otherwise than pixel / 255")
    return FloatParams(conv_w=fnet.weights[0], conv_b=fnet.biases[0], dense_w=fnet.weights[3],
                       dense_b=fnet.biases[3])


def export_json(model, path):
    """The model (a :class:`QuantNetwork` or :class:`QuantModel`) as one JSON document of the
    current format version (integers only), for tools outside Python."""
    qnet = model.to_network() if isinstance(model, QuantModel) else model
    layers = []
    for p in qnet.layers:
        if p is None:
            layers.append(None)
            continue
        entry = {"w": p.w.tolist(), "b": p.b.tolist()}
        if p.mult is not None:
            entry.update(mult=p.mult.tolist(), shift=int(p.shift))
        layers.append(entry)
    doc = {
        "format": "cnnforge-model", "version": FORMAT_VERSION,
        "network": qnet.network.to_dict(), "layers": layers,
        "softmax_mult": int(qnet.softmax_mult), "softmax_shift": int(qnet.softmax_shift),
    }
    with atomic_open(path, "w") as f:
        json.dump(doc, f)
