"""The versioned model file: every integer tensor of the accelerator plus its description.

An ``.npz`` holding the int8/int32 tensors and a ``meta`` JSON string (format version, network
description, requantization and softmax constants, float scales for reference, the accuracies
it achieved and the recipe that made it). Loading validates version, shapes and dtypes.
"""

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ...fsutil import atomic_open
from ...hw.params import ConfigError, NetworkConfig, Widths
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


def load(path=None, with_info=False):
    """Read and validate a model file; :class:`ModelError` naming the problem otherwise."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.exists():
        raise ModelError(f"{path}: model file not found (run `make train` to make one)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "meta.json" not in names:
                raise ModelError(f"{path}: not a cnnforge model file (no meta.json)")
            meta = json.loads(zf.read("meta.json"))
            arrays = {}
            for name in _ARRAYS:
                if f"{name}.npy" not in names:
                    raise ModelError(f"{path}: missing array {name!r}")
                arrays[name] = np.load(io.BytesIO(zf.read(f"{name}.npy")), allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ModelError(f"{path}: corrupt model file ({e})") from None
    if meta.get("format") != "cnnforge-model":
        raise ModelError(f"{path}: not a cnnforge model file")
    if meta.get("version") != FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {meta.get('version')!r} is not supported "
                         f"(expected {FORMAT_VERSION})")
    try:
        config = NetworkConfig.from_dict(meta["config"])
    except (ConfigError, TypeError, KeyError) as e:
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
    shift = meta.get("requant_shift")
    if not isinstance(shift, int) or not 1 <= shift <= widths.requant_shift_max:
        raise ModelError(f"{path}: requant_shift {shift!r} out of range")
    model = QuantModel(config=config, requant_shift=shift,
                       softmax_mult=int(meta["softmax_mult"]), softmax_shift=int(meta["softmax_shift"]),
                       **arrays)
    return (model, meta.get("info", {})) if with_info else model


def load_float(path=None):
    """The float network stored beside the integer one, or :class:`ModelError` if absent."""
    from .float_model import FloatParams
    path = Path(path) if path is not None else DEFAULT_PATH
    model = load(path)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if not all(f"float_{name}.npy" in names for name in _FLOAT_ARRAYS):
            raise ModelError(f"{path}: holds no float weights")
        floats = {name: np.load(io.BytesIO(zf.read(f"float_{name}.npy")), allow_pickle=False)
                  for name in _FLOAT_ARRAYS}
    params = FloatParams(**floats)
    expect = _expected(model.config)
    for name in _FLOAT_ARRAYS:
        if floats[name].shape != expect[name][0]:
            raise ModelError(f"{path}: float_{name} has shape {floats[name].shape}, "
                             f"expected {expect[name][0]}")
    return params


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
