"""``cnnforge import``: a trained model file (ONNX, Keras) to a cnnforge model file.

1. The reader for the file's format builds the float network (:class:`NetworkBuilder`):
   layouts, BatchNorm and input preprocessing folded; anything unsupported fails here, before
   any output exists.
2. Post-training quantization: per-output-channel int8 weights (per tensor on the logits
   layer), activation scales of each ReLU layer calibrated on N training images (the percentile
   whose integer network classifies them best), per-layer requantization multipliers.
3. The integer and float networks, the source and the calibration go into the model file (an
   atomic write), with the float and int8 accuracy on the test set.
"""

import hashlib
from pathlib import Path

import numpy as np

from .. import datasets
from ..errors import CnnforgeError, UnsupportedModel
from ..hw.params import ConfigError
from ..sim.reference import float_network, model_file, quantize
from ..sim.reference.golden import predict_int


__all__ = ["FORMATS", "input_mapping", "read_model", "import_model"]

#: File suffix -> format name.
FORMATS = {".onnx": "onnx", ".keras": "keras", ".h5": "keras", ".hdf5": "keras"}


def input_mapping(scale=None, mean=None, std=None):
    """``(scale, offset)`` of ``model input = (pixel * scale - mean) / std`` (per channel when
    given as lists), the options ``--input-scale --input-mean --input-std``."""
    scale = np.asarray(1 / 255 if scale is None else scale, np.float64)
    mean = np.asarray(0.0 if mean is None else mean, np.float64)
    std = np.asarray(1.0 if std is None else std, np.float64)
    if np.any(std == 0) or not (np.isfinite(scale).all() and np.isfinite(mean).all()
                                 and np.isfinite(std).all()):
        raise CnnforgeError("--input-std must be nonzero and every input option finite")
    return scale / std, -mean / std


def read_model(path, scale, offset):
    """The float network of the model file ``path`` (:class:`FloatNetwork`)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UnsupportedModel(f"{path}: unknown model format {path.suffix!r} (cnnforge imports "
                               f"{', '.join(sorted(FORMATS))})")
    if not path.is_file():
        raise UnsupportedModel(f"{path}: model file not found")
    try:
        if fmt == "onnx":
            from .onnx_reader import read_onnx as read
        else:
            from .keras_reader import read_keras as read
    except ImportError as e:           # onnx or h5py missing
        raise CnnforgeError(f"{path}: importing {fmt} needs the package {e.name!r} "
                            f"(pip install {e.name})") from None
    try:
        return read(path, scale, offset), fmt
    except ConfigError as e:
        raise UnsupportedModel(f"{path}: {e}") from None


def import_model(path, out, *, calibration_images=2000, scale=None, mean=None, std=None,
                 mnist_dir=None, calibration=None, log=print):
    """Import ``path`` into the model file ``out``; returns ``(QuantNetwork, info)``.

    The calibration images are the first ``calibration_images`` training images of the data set
    the network's input fits (MNIST for 28x28x1), or the ``.npy`` file ``calibration`` of uint8
    images ``(N, H, W, C)``; the test set, when there is one, gives the accuracies recorded.
    """
    path = Path(path)
    params, fmt = read_model(path, *input_mapping(scale, mean, std))
    net = params.network
    try:
        quantize.fold_input(params)      # an input mapping the integer network cannot take:
    except ConfigError as e:             # refused before any data is read
        raise UnsupportedModel(f"{path}: {e}") from None
    if calibration is not None:
        try:
            images = np.load(calibration, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CnnforgeError(f"{calibration}: not a .npy file of images ({e})") from None
        if images.dtype != np.uint8 or images.shape[1:] != net.input:
            raise CnnforgeError(f"{calibration}: needs uint8 images of shape (N, "
                                f"{', '.join(map(str, net.input))}), not {images.dtype} "
                                f"{images.shape}")
        labels, data = None, None
    else:
        data = datasets.for_input(net.input)
        images, labels = datasets.load(data, "train", mnist_dir)
    images = images[:calibration_images]
    labels = None if labels is None else labels[:calibration_images]
    try:
        qnet, scales, pct, cal_acc = quantize.calibrate_network(params, images, labels)
    except ConfigError as e:
        raise UnsupportedModel(f"{path}: {e}") from None
    info = {
        "name": path.stem,
        "source": {"file": path.name, "format": fmt,
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
        "input": {"scale": params.input_scale.tolist(), "offset": params.input_offset.tolist()},
        "calibration": {"images": len(images), "percentile": pct,
                        "act_scales": {str(k): v for k, v in scales.items()}},
    }
    if data is not None:
        info["dataset"] = data
        test_x, test_y = datasets.load(data, "test", mnist_dir)
        float_acc = float(np.mean(float_network.predict(params, test_x) == test_y))
        int_acc = float(np.mean(predict_int(qnet, test_x) == test_y))
        info.update(test_accuracy_float=round(float_acc, 6), test_accuracy_int8=round(int_acc, 6),
                    test_images=len(test_x))
        log(f"{path.name}: float {100 * float_acc:.2f} %, int8 {100 * int_acc:.2f} % on "
            f"{len(test_x)} {data} test images")
    model_file.save(qnet, out, info=info, float_params=params)
    log(f"wrote {out}")
    return qnet, info
