"""Bad input on the command line: one line ``cnnforge <cmd>: error: ...`` naming the problem,
exit status 1, no traceback, nothing half-written (issue 19).

Every refusal happens before any simulation, and the counts are refused before any data is
read (the MNIST folder given is one that does not exist).
"""

import io
import json
from pathlib import Path
import re
import struct
import zipfile
import zlib

import numpy as np
import pytest

from cnnforge.boards.board import BOARDS
from cnnforge import cli
from cnnforge.hw.accel import PRESETS, Accelerator, Parallelism
from cnnforge.hw.params import NetworkConfig
from cnnforge.sim.reference import model_file
from helpers import needs_mnist, reference_model


def refused(capsys, argv, message):
    """Run ``cnnforge argv`` (the subcommand first): exit 1 and exactly one line on stderr,
    ``cnnforge <subcommand>: error: <message>``."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert (code, err) == (1, f"cnnforge {argv[0]}: error: {message}\n")
    assert "Traceback" not in out + err


# ---- counts and indices ------------------------------------------------------------------------

MNIST_TEST = "MNIST has 10000 test images"
MNIST_TRAIN = "MNIST has 60000 training images"


@pytest.mark.parametrize("argv, message", [
    (["eval", "--limit", "-5"], f"--limit must be in 1..10000 ({MNIST_TEST}), not -5"),
    (["eval", "--limit", "0"], f"--limit must be in 1..10000 ({MNIST_TEST}), not 0"),
    (["eval", "--limit", "10001"], f"--limit must be in 1..10000 ({MNIST_TEST}), not 10001"),
    (["sim-full", "--images", "-1"], f"--images must be in 1..10000 ({MNIST_TEST}), not -1"),
    (["sim-full", "--images", "0"], f"--images must be in 1..10000 ({MNIST_TEST}), not 0"),
    (["sim-full", "--images", "10001"],
     f"--images must be in 1..10000 ({MNIST_TEST}), not 10001"),
    (["sim-full", "--preset", "nope"], "unknown preset 'nope' (one of up5k, ecp5-25f, ecp5-85f, "
                                       "gw2a-18, gw1n-9)"),
    (["sim-full", "--multipliers", "0"], "--multipliers must be in 1..100000, not 0"),
    (["train-fixed", "--limit", "-59990"],
     f"--limit must be in 1..60000 (1 epoch(s); {MNIST_TRAIN}), not -59990"),
    (["train-fixed", "--limit", "0"],
     f"--limit must be in 1..60000 (1 epoch(s); {MNIST_TRAIN}), not 0"),
    (["train-fixed", "--epochs", "2", "--limit", "120001"],
     f"--limit must be in 1..120000 (2 epoch(s); {MNIST_TRAIN}), not 120001"),
    (["train-fixed", "--epochs", "-1"], "--epochs must be in 1..1000, not -1"),
    (["train-fixed", "--epochs", "0"], "--epochs must be in 1..1000, not 0"),
    (["train-fixed", "--epochs", "100000"], "--epochs must be in 1..1000, not 100000"),
    (["train-fixed", "--lr-shift", "4000"],
     "train format: lr_shift must be in 0..32 (the learning rate 2**-lr_shift; below 2**-32 no "
     "update changes a master), not 4000"),
    (["train-fixed", "--test-limit", "-1"],
     f"--test-limit must be in 1..10000 ({MNIST_TEST}), not -1"),
    (["train-fixed", "--test-limit", "10001"],
     f"--test-limit must be in 1..10000 ({MNIST_TEST}), not 10001"),
    (["bench", "--images", "0"], f"--images must be in 1..10000 ({MNIST_TEST}), not 0"),
    (["bench", "--images", "-1"], f"--images must be in 1..10000 ({MNIST_TEST}), not -1"),
    (["bench", "--train-steps", "-1"],
     f"--train-steps must be in 0..60000 ({MNIST_TRAIN}), not -1"),
    (["bench", "--train-steps", "60001"],
     f"--train-steps must be in 0..60000 ({MNIST_TRAIN}), not 60001"),
    (["bench", "--presets", "up5k", "nope"],
     "unknown preset 'nope' (one of up5k, ecp5-25f, ecp5-85f, gw2a-18, gw1n-9)"),
    (["classify", "--mnist-index", "-1"],
     f"--mnist-index must be in 0..9999 ({MNIST_TEST}), not -1"),
    (["classify", "--mnist-index", "3", "--mnist-index", "10000"],
     f"--mnist-index must be in 0..9999 ({MNIST_TEST}), not 10000"),
    (["classify", "--mnist-index", "3", "--baud", "0"], "--baud must be at least 1, not 0"),
    (["classify", "--sim"], "nothing to classify: give image files, --mnist-index N or "
                            "--mnist-range A:B"),
    (["classify", "--sim", "--mnist-range", "5:3"],
     f"--mnist-range 5:3: need 0 <= START < END <= 10000 ({MNIST_TEST})"),
    (["classify", "--sim", "--mnist-range", "0:10001"],
     f"--mnist-range 0:10001: need 0 <= START < END <= 10000 ({MNIST_TEST})"),
    (["classify", "--sim", "--mnist-range", "7"],
     "--mnist-range must be START:END (e.g. 0:10000), not '7'"),
    (["classify", "--sim", "--mnist-range", "0:5", "--mnist-index", "3"],
     "--mnist-range classifies MNIST test images: give no image files or --mnist-index with it"),
    (["bench-link", "--sim", "--images", "0"], f"--images must be in 1..10000 ({MNIST_TEST}), not 0"),
    (["bench-link", "--images", "5"], "bench-link measures the simulated board core: give --sim"),
    (["bench-link", "--sim", "--board", "icebreaker", "--board", "nope"],
     f"unknown board 'nope'; boards: {', '.join(BOARDS)}"),
    (["train-sim", "--steps", "-1"], f"--steps must be in 1..60000 ({MNIST_TRAIN}), not -1"),
    (["train-sim", "--steps", "60001"],
     f"--steps must be in 1..60000 ({MNIST_TRAIN}), not 60001"),
    (["train-sim", "--test-images", "-1"],
     f"--test-images must be in 0..10000 ({MNIST_TEST}), not -1"),
    (["train-sim", "--grad-lanes", "0"],
     "--grad-lanes with preset 'up5k': grad_lanes must be at least 1, not 0"),
    (["train-sim", "--preset", "ecp5-85f", "--grad-lanes", "3"],
     "--grad-lanes with preset 'ecp5-85f': grad_lanes must divide conv_lanes (16), "
     "dense_mults (32) and filters // 2 (16), not 3"),
    (["train-board", "--sim", "--steps", "-1"], "--steps must be at least 0, not -1"),
    (["train-board", "--sim", "--eval", "-1"],
     f"--eval must be in 0..10000 ({MNIST_TEST}), not -1"),
    (["train-board", "--sim", "--eval", "10001"],
     f"--eval must be in 0..10000 ({MNIST_TEST}), not 10001"),
    (["train-board", "--sim", "--device-checks", "-1"],
     "--device-checks must be at least 0, not -1"),
    (["train-board", "--port", "/dev/null", "--baud", "-9600"],
     "--baud must be at least 1, not -9600"),
    (["train", "--epochs", "0"], "--epochs must be in 1..1000, not 0"),
    (["train", "--epochs", "1000000"], "--epochs must be in 1..1000, not 1000000"),
    (["train", "--seed", "-1"], "--seed must be at least 0, not -1"),
])
def test_counts_are_checked_before_any_data(capsys, argv, message):
    """Counts are not Python slices: a negative one, zero or one past the data is refused."""
    refused(capsys, [*argv, "--mnist-dir", "/nonexistent"], message)


@needs_mnist
def test_the_smallest_count_is_taken(capsys):
    assert cli.main(["eval", "--limit", "1"]) == 0
    assert "test images     1 (mnist)\n" in capsys.readouterr().out


# ---- parallelism -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, error, message", [
    (dict(conv_lanes=0), ValueError, "conv_lanes must be at least 1, not 0"),
    (dict(conv_lanes=-4), ValueError, "conv_lanes must be at least 1, not -4"),
    (dict(conv_lanes="4"), TypeError, "conv_lanes must be an integer, not '4'"),
    (dict(requant_parallel=0), ValueError, "requant_parallel must be at least 1, not 0"),
    (dict(dense_mults=-1), ValueError, "dense_mults must be at least 1, not -1"),
    (dict(dense_mults=2.0), TypeError, "dense_mults must be an integer, not 2.0"),
    (dict(grad_lanes=0), ValueError, "grad_lanes must be at least 1, not 0"),
])
def test_parallelism_counts_are_positive_integers(fields, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        Parallelism(**{**PRESETS["up5k"].to_dict(), **fields})


@pytest.mark.parametrize("fields, message", [
    (dict(conv_lanes=3), "conv_lanes must divide filters (32), not 3"),
    (dict(conv_lanes=64), "conv_lanes must divide filters (32), not 64"),
    (dict(requant_parallel=3), "requant_parallel must divide conv_lanes (4), not 3"),
    (dict(dense_mults=6), "dense_mults must divide features (5408), not 6"),
    (dict(conv_lanes=8, requant_parallel=2, dense_mults=52, target="generic"),
     "dense_mults must divide or be a multiple of conv_lanes (8), not 52"),
    (dict(dense_mults=1), "dense_mults must be even with target 'ice40' (16-bit SPRAM words), "
                          "not 1"),
    (dict(dense_mults=2), "dense_mults must be at least 4 with target 'ice40' (the weights in "
                          "16384 SPRAM words), not 2"),
])
def test_parallelism_that_does_not_fit_the_network(fields, message):
    """Parallelism.check names the field of every combination an engine would reject, and the
    accelerator refuses it before building any engine."""
    par = Parallelism(**{**PRESETS["up5k"].to_dict(), **fields})
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        par.check(NetworkConfig())
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Accelerator(reference_model(), par)


@pytest.mark.parametrize("config, message", [
    (dict(input_size=4096, filters=4096),
     "network config: layer 0 (conv2d): 68,652,384,256 output values per image, more than the "
     "67,108,864 a tensor of cnnforge's models may hold"),
    (dict(input_size=256, in_channels=3000),
     "network config: layer 0 (conv2d): 1,741,932,000 window values per image, more than the "
     "67,108,864 a tensor of cnnforge's models may hold"),
])
def test_networks_too_large_for_the_models(config, message):
    """Refused when described, with the size (they ran out of memory minutes later)."""
    from cnnforge.hw.params import ConfigError
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        NetworkConfig(**config)


def test_networks_too_large_for_any_board():
    """A network the models can hold but no supported FPGA: refused before any engine is built,
    with the bits it needs."""
    config = NetworkConfig(input_size=256, filters=64)
    message = ("the model needs 82,587,752 bits of on-chip memory, more than the largest "
               "supported FPGA has (3,833,856 bits of block RAM in an ECP5-85F)")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PRESETS["ecp5-85f"].check(config)


@pytest.mark.parametrize("fields, message", [
    (dict(grad_lanes=8), "grad_lanes must divide conv_lanes (4), dense_mults (4) and "
                         "filters // 2 (16), not 8"),
    (dict(conv_lanes=32, requant_parallel=1, dense_mults=5408, target="generic", grad_lanes=16),
     "dense_mults must divide features (5408) at least twice for training, not 5408"),
])
def test_parallelism_that_cannot_train(fields, message):
    par = Parallelism(**{**PRESETS["up5k"].to_dict(), **fields})
    par.check(NetworkConfig())                      # inference takes it
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        par.check(NetworkConfig(), training=True)


def test_presets_fit_the_network():
    for par in PRESETS.values():
        assert par.check(NetworkConfig(), training=True) is par


def test_accelerator_takes_only_a_parallelism():
    with pytest.raises(TypeError, match="^parallelism must be a Parallelism, not "):
        Accelerator(reference_model(), PRESETS["up5k"].to_dict())


@pytest.mark.parametrize("text, message", [
    ("conv_lanes=0", "--parallelism: conv_lanes must be at least 1, not 0"),
    ("conv_lanes=-4", "--parallelism: conv_lanes must be at least 1, not -4"),
    ("conv_lanes=3", "--parallelism: conv_lanes must divide filters (32), not 3"),
    (",,,", "--parallelism sets no field, give e.g. conv_lanes=4 (fields: conv_lanes, "
            "conv_window, requant_parallel, dense_mults, target, dense_buffer, pipeline, "
            "grad_lanes)"),
    ("conv_lanes=32,dense_mults=8", "--parallelism: the convolution and dense engine need 20 "
                                    "SB_MAC16 (16 + 4), the icebreaker's device has 8"),
])
def test_bitstream_parallelism(tmp_path, capsys, text, message):
    refused(capsys, ["bitstream", "--out", str(tmp_path), "--parallelism", text], message)
    assert not any(tmp_path.iterdir())


# ---- model files -------------------------------------------------------------------------------

V1_MODEL = Path(__file__).parent / "fixtures" / "mnist_cnn_v1.npz"


def model_file_with(path, *, meta=None, drop=(), replace_meta=None, arrays=None,
                    base=model_file.DEFAULT_PATH):
    """The model file ``base`` (the committed one) copied to ``path`` with ``meta`` fields set,
    ``drop`` fields removed (or the whole meta ``replace_meta``) and ``arrays`` replaced."""
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(path, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "meta.json":
                doc = json.loads(data) if replace_meta is None else replace_meta
                if isinstance(doc, dict):
                    doc.update(meta or {})
                    for key in drop:
                        del doc[key]
                data = json.dumps(doc).encode()
            if arrays and name.removesuffix(".npy") in arrays:
                buf = io.BytesIO()
                np.save(buf, arrays[name.removesuffix(".npy")])
                data = buf.getvalue()
            zout.writestr(name, data)
    return path


def _float_array(name, base=model_file.DEFAULT_PATH):
    with zipfile.ZipFile(base) as zf:
        return np.load(io.BytesIO(zf.read(f"float_{name}.npy")))


def _with_nan(name, index=0, base=model_file.DEFAULT_PATH):
    arr = _float_array(name, base).copy()
    arr.flat[index] = np.nan
    return arr


@pytest.mark.parametrize("change, message", [
    (dict(replace_meta=[1, 2]), "meta.json must be a JSON object, not list"),
    (dict(drop=["softmax_mult"]), "meta.json has no 'softmax_mult'"),
    (dict(drop=["network"]), "meta.json has no 'network'"),
    (dict(meta={"softmax_mult": "33497"}), "softmax_mult must be an integer, not '33497'"),
    (dict(meta={"softmax_mult": 10 ** 30}),
     f"softmax_mult must be in 1..65535, not {10 ** 30}"),
    (dict(meta={"softmax_mult": 0}), "softmax_mult must be in 1..65535, not 0"),
    (dict(meta={"softmax_shift": -2}), "softmax_shift must be in 1..46, not -2"),
    (dict(meta={"softmax_shift": 23.0}), "softmax_shift must be an integer, not 23.0"),
    (dict(meta={"layers": [{"shift": -3}, None, None, {}]}), "shift must be in 1..40, not -3"),
    (dict(meta={"layers": [{"shift": True}, None, None, {}]}),
     "shift must be an integer, not True"),
    (dict(meta={"layers": [None, None, None, {}]}),
     "meta 'layers' entry 0 must be an object, not None"),
    (dict(meta={"layers": [{"shift": 9}]}),
     "meta 'layers' must be a list of 4 entries, not [{'shift': 9}]"),
    (dict(meta={"version": True}),
     "model format version True is not supported (this cnnforge reads 1, 2)"),
    (dict(meta={"version": 3}),
     "model format version 3 is not supported (this cnnforge reads 1, 2)"),
    (dict(meta={"network": [28, 1]}), "network must be a mapping, not list"),
    (dict(meta={"network": {"input": [28, 28, 1], "layers": [{"type": "dense", "units": 0}]}}),
     "network: layer 0 (dense): units must be an integer >= 1, not 0"),
    (dict(meta={"network": {"input": [28, 28, 1], "layers": [
        {"type": "conv2d", "filters": 32, "kernel": 30}, {"type": "flatten"},
        {"type": "dense", "units": 10}]}}),
     "network: layer 0 (conv2d): kernel 30 is larger than its 28x28 (padded) input"),
    (dict(meta={"info": "trained"}), "info must be a JSON object, not str"),
    # Version 1 files (the seed network's first format) are read and checked as before.
    (dict(base=V1_MODEL, drop=["config"]), "meta.json has no 'config'"),
    (dict(base=V1_MODEL, meta={"requant_shift": -3}), "requant_shift must be in 1..40, not -3"),
    (dict(base=V1_MODEL, meta={"requant_shift": True}),
     "requant_shift must be an integer, not True"),
    (dict(base=V1_MODEL, meta={"requant_shift": None}),
     "requant_shift must be an integer, not None"),
    (dict(base=V1_MODEL, meta={"config": [28, 1]}), "network config must be a mapping, not list"),
    (dict(base=V1_MODEL, meta={"config": {"filters": "32"}}),
     "network config: filters must be an integer, not '32'"),
    (dict(base=V1_MODEL, meta={"softmax_shift": -2}), "softmax_shift must be in 1..46, not -2"),
])
def test_bad_model_meta(tmp_path, capsys, change, message):
    bad = model_file_with(tmp_path / "bad.npz", **change)
    out = tmp_path / "model.json"
    refused(capsys, ["export", "--model", str(bad), str(out)], f"{bad}: {message}")
    assert not out.exists()


@pytest.mark.parametrize("arrays, message", [
    ({"float_layer3_w": _with_nan("layer3_w", 7)},
     "float_layer3_w holds nan (float weights must be finite)"),
    ({"float_layer0_b": np.full_like(_float_array("layer0_b"), np.inf)},
     "float_layer0_b holds inf (float weights must be finite)"),
    ({"float_layer0_w": _float_array("layer0_w").astype(np.int32)},
     "float_layer0_w has dtype int32, expected float32"),
    ({"layer3_w": np.full((10, 5408), -128, np.int8)},
     "layer 3 (dense) weights hold -128 (weights are symmetric, -127..127)"),
    ({"layer0_mult": np.ones(31, np.uint16)}, r"layer0_mult has shape (31,), expected (32,)"),
])
def test_bad_weights(tmp_path, capsys, arrays, message):
    """Float weights that are not finite numbers are refused (they evaluated to 10 %)."""
    bad = model_file_with(tmp_path / "bad.npz", arrays=arrays)
    refused(capsys, ["eval", "--model", str(bad), "--mnist-dir", "/nonexistent"],
            f"{bad}: {message}")


@pytest.mark.parametrize("arrays, message", [
    ({"float_dense_w": _with_nan("dense_w", 7, V1_MODEL)},
     "float_dense_w holds nan (float weights must be finite)"),
    ({"float_conv_b": np.full_like(_float_array("conv_b", V1_MODEL), np.inf)},
     "float_conv_b holds inf (float weights must be finite)"),
    ({"float_conv_w": _float_array("conv_w", V1_MODEL).astype(np.int32)},
     "float_conv_w has dtype int32, expected float32"),
])
def test_bad_float_weights_v1(tmp_path, capsys, arrays, message):
    bad = model_file_with(tmp_path / "bad.npz", arrays=arrays, base=V1_MODEL)
    refused(capsys, ["eval", "--model", str(bad), "--mnist-dir", "/nonexistent"],
            f"{bad}: {message}")


def test_damaged_model_file(tmp_path, capsys):
    """A damaged compressed entry (zlib's error, or the zip's CRC) is a corrupt model file."""
    path = tmp_path / "damaged.npz"
    with zipfile.ZipFile(model_file.DEFAULT_PATH) as zin, \
            zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    data = bytearray(path.read_bytes())
    start = data.index(b"layer0_w.npy") + 40
    data[start:start + 30] = bytes(b ^ 0x55 for b in data[start:start + 30])
    path.write_bytes(bytes(data))
    out = tmp_path / "model.json"
    code = cli.main(["export", "--model", str(path), str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"cnnforge export: error: {path}: corrupt model file (")
    assert not out.exists()


# ---- image files -------------------------------------------------------------------------------

def text_file(path):
    path.write_text("not an image")
    return path


def png_header(path, width, height):
    """A PNG whose header says ``width`` x ``height`` (its pixel data is one pixel's)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make, message", [
    # Beyond Pillow's own limit (a decompression bomb to it) and beyond ours.
    (lambda p: png_header(p / "huge.png", 20000, 20000),
     "image {path} is 20000x20000 pixels, more than 4096x4096"),
    (lambda p: png_header(p / "big.png", 5000, 300),
     "image {path} is 5000x300 pixels, more than 4096x4096"),
    (lambda p: p / "none.png", "image file {path} not found"),
    (lambda p: text_file(p / "text.png"),
     "cannot read image {path}: cannot identify image file '{path}'"),
    (lambda p: png_header(p / "short.png", 28, 28),
     "cannot read image {path}: image file is truncated (0 bytes not processed)"),
])
def test_bad_image_files(tmp_path, capsys, make, message):
    path = make(tmp_path)
    refused(capsys, ["classify", "--sim", str(path)], message.format(path=path))
