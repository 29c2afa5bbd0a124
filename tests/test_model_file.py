"""The versioned model file: round trip, validation, and the committed model's accuracy."""

import io
import json
import zipfile
from pathlib import Path

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
    (dict(meta={"network": {"input": [10, 10, 1], "layers": []}}), "network: no layers"),
    (dict(arrays={"layer0_w": np.zeros((4, 3, 3), np.int8)}),
     r"layer0_w has shape \(4, 3, 3\), expected"),
    (dict(arrays={"layer3_b": np.zeros(3, np.int64)}), "layer3_b has dtype int64, expected int32"),
    (dict(arrays={"layer3_w": np.full((3, 64), -128, np.int8)}), "weights hold -128"),
    (dict(meta={"layers": [{"shift": 0}, None, None, {}]}), "shift must be in 1..40, not 0"),
    (dict(meta={"softmax_mult": "7"}), "softmax_mult must be an integer, not '7'"),
    (dict(meta={"softmax_shift": 2 ** 70}), f"softmax_shift must be in 1..39, not {2 ** 70}"),
    (dict(meta={"network": None}), "network must be a mapping, not NoneType"),
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
    with pytest.raises(ModelError, match=r"float_layer3_w holds nan \(float weights must be "
                                         r"finite\)"):
        model_file.load_float(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        model_file.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ModelError, match="corrupt model file"):
        model_file.load(tmp_path / "junk.npz")


V1_MODEL = Path(__file__).parent / "fixtures" / "mnist_cnn_v1.npz"

# sha256 of the committed model's int64 logits and Q15 probabilities on the 10,000 MNIST test
# images, taken before the layer-list networks (format version 1, commit 6e3509f): the migration
# to version 2 and the layer-list oracle change no result.
SEED_LOGITS_SHA256 = "80a2d972e58c5f7577f7d85e6a3d9590eae13489247cabf26c669db3197d98d6"
SEED_PROBS_SHA256 = "66f54b75fe5b7858f165ec3d0af2d13497f6a276ffd9204c1c6b91463a8e9b26"


def test_version_1_file_reads_as_its_migration():
    """The first format's file (the seed model as committed before version 2) still loads, and
    holds exactly what the migrated committed file holds."""
    old, old_info = model_file.load(V1_MODEL, with_info=True)
    new, new_info = model_file.load(with_info=True)
    assert old_info == new_info
    for name in ("conv_w", "conv_b", "requant_mult", "dense_w", "dense_b"):
        assert np.array_equal(getattr(old, name), getattr(new, name))
        assert getattr(old, name).dtype == getattr(new, name).dtype
    assert ((old.requant_shift, old.softmax_mult, old.softmax_shift)
            == (new.requant_shift, new.softmax_mult, new.softmax_shift))
    old_float, new_float = model_file.load_float(V1_MODEL), model_file.load_float()
    for name in ("conv_w", "conv_b", "dense_w", "dense_b"):
        assert np.array_equal(getattr(old_float, name), getattr(new_float, name))
    # Saving what a version 1 file holds writes the committed version 2 file, byte for byte.
    with zipfile.ZipFile(model_file.DEFAULT_PATH) as zf:
        assert json.loads(zf.read("meta.json"))["version"] == model_file.FORMAT_VERSION == 2


def test_migrating_a_version_1_file_gives_the_committed_file(tmp_path):
    model, info = model_file.load(V1_MODEL, with_info=True)
    model_file.save(model, tmp_path / "m.npz", info=info,
                    float_params=model_file.load_float(V1_MODEL))
    assert (tmp_path / "m.npz").read_bytes() == model_file.DEFAULT_PATH.read_bytes()


@needs_mnist
def test_committed_model_gives_every_logit_it_gave():
    import hashlib
    from cnnforge.mnist import load as load_mnist
    from cnnforge.sim.reference.golden import infer_int
    images, _ = load_mnist("test", MNIST_DIR)
    qnet = model_file.load_network()
    results = [infer_int(qnet, images[i:i + 2000]) for i in range(0, len(images), 2000)]
    logits = np.concatenate([r.logits for r in results]).astype("<i8")
    probs = np.concatenate([r.probs for r in results]).astype("<i8")
    assert hashlib.sha256(logits.tobytes()).hexdigest() == SEED_LOGITS_SHA256
    assert hashlib.sha256(probs.tobytes()).hexdigest() == SEED_PROBS_SHA256


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
