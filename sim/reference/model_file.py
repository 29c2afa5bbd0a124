"""The versioned model file: every integer tensor of the accelerator plus its description.

An ``.npz`` holding the int8/int32 tensors and a ``meta`` JSON string (format version, network
description, requantization and softmax constants, float scales for reference, the accuracies
it achieved and the recipe that made it). Loading validates version, every field's type and
range, shapes, dtypes and (float weights) finiteness.
"""

import io
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ...fsutil import atomic_open
from ...hw.params import ConfigError, NetworkConfig, SoftmaxFormat, Widths
from .golden import QuantModel


__all__ = ["FORMAT_VERSION", "DEFAULT_PATH", "save", "load", "load_float", "export_json"]

FORMAT_VERSION = 1
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


def save(model: QuantModel, path=DEFAULT_PATH, info=None, float_params=None):
    """Write ``model`` (and free-form ``info``: accuracies, recipe) atomically.

    ``float_params`` (a :class:`~cnnforge.sim.reference.float_model.FloatParams`) keeps the float network
    the integer one was quantized from, for float evaluation and fine-tuning.

    The bytes depend only on the model and ``info``: no timestamps, so the same training run
    gives the same file hash.
    """
    meta = {
        "format": "cnnforge-model",
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "requant_shift": int(model.requant_shift),
        "softmax_mult": int(model.softmax_mult),
        "softmax_shift": int(model.softmax_shift),
        "info": info or {},
    }
    buf = io.BytesIO()
    # Written by hand with fixed zip timestamps so the file is reproducible byte for byte.
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        def put(name, data):
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
        put("meta.json", json.dumps(meta, sort_keys=True, indent=1).encode())
        tensors = {name: getattr(model, name) for name in _ARRAYS}
        if float_params is not None:
            tensors.update({f"float_{name}": np.asarray(getattr(float_params, name), np.float32)
                            for name in _FLOAT_ARRAYS})
        for name, value in tensors.items():
            arr = io.BytesIO()
            np.save(arr, np.ascontiguousarray(value), allow_pickle=False)
            put(f"{name}.npy", arr.getvalue())
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


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


def load(path=None, with_info=False):
    """Read and validate a model file; :class:`ModelError` naming the problem otherwise.

    Every field is checked against the range the accelerator's engines take (those of
    :class:`~cnnforge.hw.requant.Requantize` and :class:`~cnnforge.hw.softmax.Softmax`), so a
    model that loads can be built and simulated.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    meta, arrays = _read(path, _ARRAYS)
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: meta.json must be a JSON object, not {type(meta).__name__}")
    if meta.get("format") != "cnnforge-model":
        raise ModelError(f"{path}: not a cnnforge model file")
    version = meta.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {version!r} is not supported "
                         f"(expected {FORMAT_VERSION})")
    if "config" not in meta:
        raise ModelError(f"{path}: meta.json has no 'config'")
    try:
        config = NetworkConfig.from_dict(meta["config"])
    except (ConfigError, TypeError) as e:
        raise ModelError(f"{path}: {e}") from None
    for name, (shape, dtype) in _expected(config).items():
        arr = arrays[name]
        if arr.shape != shape:
            raise ModelError(f"{path}: {name} has shape {arr.shape}, expected {shape}")
        if arr.dtype != dtype:
            raise ModelError(f"{path}: {name} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    widths = Widths(config)
    for name in ("conv_w", "dense_w"):
        if arrays[name].min(initial=0) < -widths.weight_max:
            raise ModelError(f"{path}: {name} holds -128 (weights are symmetric, -127..127)")
    if np.abs(arrays["conv_b"]).max(initial=0) > widths.conv_bias_max:
        raise ModelError(f"{path}: conv_b exceeds the conv bias bound {widths.conv_bias_max}")
    if np.abs(arrays["dense_b"]).max(initial=0) > widths.dense_bias_max:
        raise ModelError(f"{path}: dense_b exceeds the dense bias bound {widths.dense_bias_max}")
    mult_bits = SoftmaxFormat.mult_bits
    constants = {
        "requant_shift": _meta_int(path, meta, "requant_shift", 1, widths.requant_shift_max),
        "softmax_mult": _meta_int(path, meta, "softmax_mult", 1, (1 << mult_bits) - 1),
        "softmax_shift": _meta_int(path, meta, "softmax_shift", 1,
                                   widths.dense_acc + mult_bits),
    }
    info = meta.get("info", {})
    if not isinstance(info, dict):
        raise ModelError(f"{path}: info must be a JSON object, not {type(info).__name__}")
    model = QuantModel(config=config, **constants, **arrays)
    return (model, info) if with_info else model


def load_float(path=None):
    """The float network stored beside the integer one, or :class:`ModelError` if absent or
    not finite float arrays of the integer network's shapes."""
    from .float_model import FloatParams
    path = Path(path) if path is not None else DEFAULT_PATH
    model = load(path)
    names = [f"float_{name}" for name in _FLOAT_ARRAYS]
    _, floats = _read(path, names, required=False)
    if floats is None:
        raise ModelError(f"{path}: holds no float weights")
    expect = _expected(model.config)
    for name in _FLOAT_ARRAYS:
        arr = floats[f"float_{name}"]
        if arr.shape != expect[name][0]:
            raise ModelError(f"{path}: float_{name} has shape {arr.shape}, "
                             f"expected {expect[name][0]}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ModelError(f"{path}: float_{name} has dtype {arr.dtype}, expected float32")
        if not np.isfinite(arr).all():
            bad = arr[~np.isfinite(arr)][0]
            raise ModelError(f"{path}: float_{name} holds {bad} (float weights must be finite)")
    return FloatParams(**{name: floats[f"float_{name}"] for name in _FLOAT_ARRAYS})


def export_json(model: QuantModel, path):
    """The model as one JSON document (integers only), for tools outside Python."""
    doc = {
        "format": "cnnforge-model", "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "requant_shift": model.requant_shift,
        "softmax_mult": model.softmax_mult, "softmax_shift": model.softmax_shift,
    }
    for name in _ARRAYS:
        doc[name] = getattr(model, name).tolist()
    with atomic_open(path, "w") as f:
        json.dump(doc, f)
