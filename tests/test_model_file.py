"""The versioned model file: round trip, validation, and the committed model's accuracy."""

import io
import json
import zipfile

import numpy as np
import pytest

from cnnforge.errors import ModelError
from cnnforge.hw.params import NetworkConfig
from cnnforge.sim.reference import model_file
from cnnforge.sim.reference.float_model import init_params
from cnnforge.sim.reference.quantize import quantize
from helpers import MNIST_DIR, needs_mnist


def small_model():
    config = NetworkConfig(input_size=10, filters=4, kernel=3, pool=2, classes=3)
    params = init_params(config, np.random.default_rng(0))
    params.conv_b[:] = 0.01
    return quantize(params, config, act_scale=0.01), params


def rewrite(src, dst, *, meta=None, arrays=None):
    """Copy a model file, replacing meta fields or arrays."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "meta.json" and meta:
                doc = json.loads(data)
                doc.update(meta)
                data = json.dumps(doc).encode()
            key = name[:-4]
            if arrays and key in arrays:
                buf = io.BytesIO()
                np.save(buf, arrays[key])
                data = buf.getvalue()
            zout.writestr(name, data)


def test_round_trip(tmp_path):
    model, params = small_model()
    path = tmp_path / "m.npz"
    model_file.save(model, path, info={"note": "x"}, float_params=params)
    loaded, info = model_file.load(path, with_info=True)
    assert info == {"note": "x"}
    assert loaded.config == model.config
    for name in ("conv_w", "conv_b", "requant_mult", "dense_w", "dense_b"):
        assert np.array_equal(getattr(loaded, name), getattr(model, name))
    assert (loaded.requant_shift, loaded.softmax_mult) == (model.requant_shift, model.softmax_mult)
    assert np.array_equal(model_file.load_float(path).dense_w, params.dense_w)
    # Same content, same bytes: no timestamps in the file.
    again = tmp_path / "again.npz"
    model_file.save(model, again, info={"note": "x"}, float_params=params)
    assert path.read_bytes() == again.read_bytes()


@pytest.mark.parametrize("change, message", [
    (dict(meta={"version": 99}), "model format version 99 is not supported"),
    (dict(meta={"config": {"filters": 0}}), "filters must be a positive integer, not 0"),
    (dict(arrays={"conv_w": np.zeros((4, 3, 3), np.int8)}), r"conv_w has shape \(4, 3, 3\), expected"),
    (dict(arrays={"dense_b": np.zeros(3, np.int64)}), "dense_b has dtype int64, expected int32"),
    (dict(arrays={"dense_w": np.full((3, 64), -128, np.int8)}), "dense_w holds -128"),
    (dict(meta={"requant_shift": 0}), "requant_shift must be in 1..40, not 0"),
    (dict(meta={"softmax_mult": "7"}), "softmax_mult must be an integer, not '7'"),
    (dict(meta={"softmax_shift": 2 ** 70}), f"softmax_shift must be in 1..39, not {2 ** 70}"),
    (dict(meta={"config": None}), "network config must be a mapping, not NoneType"),
])
def test_bad_files_are_rejected_with_one_line(tmp_path, change, message):
    model, _ = small_model()
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    model_file.save(model, good)
    rewrite(good, bad, **change)
    with pytest.raises(ModelError, match=message) as exc:
        model_file.load(bad)
    assert "\n" not in str(exc.value)


def test_float_weights_must_be_finite(tmp_path):
    model, params = small_model()
    params.dense_w[1, 2] = np.nan
    path = tmp_path / "m.npz"
    model_file.save(model, path, float_params=params)
    model_file.load(path)                       # the integer network is fine
    with pytest.raises(ModelError, match=r"float_dense_w holds nan \(float weights must be "
                                         r"finite\)"):
        model_file.load_float(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        model_file.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="corrupt model file"):
        model_file.load(tmp_path / "junk.npz")


def test_committed_model_loads():
    model, info = model_file.load(with_info=True)
    assert model.config == NetworkConfig()
    assert info["test_accuracy_float"] >= 0.980
    assert info["test_accuracy_int8"] >= info["test_accuracy_float"] - 0.003


@needs_mnist
def test_committed_model_accuracy_on_test_set():
    from cnnforge.evaluate import evaluate
    result = evaluate(mnist_dir=MNIST_DIR)
    info = model_file.load(with_info=True)[1]
    assert result["images"] == 10_000
    assert result["float"] >= 0.980
    assert result["int8"] >= result["float"] - 0.003
    # The recorded numbers are the ones this machine reproduces.
    assert abs(result["int8"] - info["test_accuracy_int8"]) < 1e-9


@needs_mnist
@pytest.mark.slow(reason="the float training run twice: the other checks of the committed model "
                         "above")
def test_training_is_reproducible(tmp_path):
    from cnnforge.train import file_sha256, train_and_save
    kw = dict(mnist_dir=MNIST_DIR, epochs=1, limit=3000, progress=False, log=lambda *a: None)
    train_and_save(out=tmp_path / "a.npz", seed=3, **kw)
    train_and_save(out=tmp_path / "b.npz", seed=3, **kw)
    train_and_save(out=tmp_path / "c.npz", seed=4, **kw)
    assert file_sha256(tmp_path / "a.npz") == file_sha256(tmp_path / "b.npz")
    assert file_sha256(tmp_path / "a.npz") != file_sha256(tmp_path / "c.npz")
