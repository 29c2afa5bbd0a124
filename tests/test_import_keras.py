"""The Keras reader (``cnnforge.importers.keras_reader``) on the committed Keras 3 fixtures
(``tests/fixtures/import``, made by ``make_keras_fixtures.py``): the float network it builds
gives Keras' own logits, the ``.keras`` and ``.h5`` files of one model give the same network,
and every file or layer it cannot map is refused with one line that names it.

Variants and bad files are made here from the fixtures (a zip's ``config.json`` or
``model.weights.h5`` rewritten, an ``.h5`` copy's ``model_config`` attribute changed, bytes cut
off), so no Keras is needed.
"""

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnforge import mnist
from cnnforge.errors import UnsupportedModel
from cnnforge.hw.params import Conv2D, Dense, Flatten, MaxPool, Network
from cnnforge.importers.keras_reader import read_keras
from cnnforge.sim.reference import float_network

from helpers import MNIST_DIR, needs_mnist


FIXTURES = Path(__file__).parent / "fixtures" / "import"

#: The input mapping of each fixture's ``input_convention``.
INPUT_SCALE = {"pixels/255": 1 / 255, "pixels": 1.0}

SEED_CNN = Network((28, 28, 1), (Conv2D(32, 3), MaxPool(2), Flatten(), Dense(10)))
#: The BatchNorm folded into the first conv, the ReLU layer into it, the Rescaling into the
#: input mapping, the Softmax layer after the logits dropped.
LENET_BN = Network((28, 28, 1), (Conv2D(8, 5, padding="same"), MaxPool(2),
                                 Conv2D(16, 3, stride=2), Flatten(), Dense(32, relu=True),
                                 Dense(10)))


# -- editing the fixtures -----------------------------------------------------------------------

def read_config(path):
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def rewrite_zip(src, dst, members):
    """A copy of the zip ``src`` with the ``members`` (name -> bytes) replaced."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for item in old.infolist():
            new.writestr(item, members.get(item.filename, old.read(item.filename)))
    return dst


def edited(name, tmp_path, edit_config=None, edit_weights=None):
    """A copy of fixture ``name`` whose config went through ``edit_config(config)`` and whose
    weights file (``model.weights.h5`` of a ``.keras``, the file itself for ``.h5``) through
    ``edit_weights(h5)``."""
    src, dst = FIXTURES / name, tmp_path / name
    config = read_config(src)
    if edit_config is not None:
        edit_config(config)
    if src.suffix == ".keras":
        with zipfile.ZipFile(src) as archive:
            weights = io.BytesIO(archive.read("model.weights.h5"))
        if edit_weights is not None:
            with h5py.File(weights, "r+") as h5:
                edit_weights(h5)
        return rewrite_zip(src, dst, {"config.json": json.dumps(config).encode(),
                                      "model.weights.h5": weights.getvalue()})
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as h5:
        h5.attrs["model_config"] = json.dumps(config)
        if edit_weights is not None:
            edit_weights(h5)
    return dst


def layer_spec(config, name):
    return next(s for s in config["config"]["layers"] if s["config"]["name"] == name)


def set_fields(layer, **fields):
    """An edit setting config fields of ``layer`` (``class_name`` sets its class)."""
    def edit(config):
        spec = layer_spec(config, layer)
        spec["class_name"] = fields.get("class_name", spec["class_name"])
        spec["config"].update((k, v) for k, v in fields.items() if k != "class_name")
    return edit


def history(node):
    """The layers a Keras 3 call node reads."""
    return [arg["config"]["keras_history"][0] for arg in node["args"]]


def assert_same_network(a, b):
    assert a.network == b.network
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        assert (x is None and y is None) or np.array_equal(x, y)
    np.testing.assert_array_equal(a.input_scale, b.input_scale)
    np.testing.assert_array_equal(a.input_offset, b.input_offset)


def read_fixture(name, path=None):
    outputs = np.load(FIXTURES / f"{name}.outputs.npz")
    scale = INPUT_SCALE[str(outputs["input_convention"])]
    return read_keras(FIXTURES / name if path is None else path, scale, 0.0)


# -- Keras' logits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_images():
    return mnist.load("test", MNIST_DIR)[0]


@needs_mnist
@pytest.mark.parametrize("name, network, input_scale", [
    ("seed_cnn.keras", SEED_CNN, 1 / 255),
    ("lenet_bn.keras", LENET_BN, 1 / 255),
    ("lenet_bn.h5", LENET_BN, 1 / 255),
], ids=["seed_cnn.keras", "lenet_bn.keras", "lenet_bn.h5"])
def test_fixture_logits(name, network, input_scale, test_images):
    """The imported float network, run in float64 on the fixture's test images, gives the
    logits Keras computed (to 1e-4 of their range), with the layers expected: the 'same' conv
    has padding "same", BatchNormalization and the ReLU layer are folded into the conv, the
    Rescaling(1/255) became the input scale."""
    outputs = np.load(FIXTURES / f"{name}.outputs.npz")
    params = read_fixture(name)
    assert params.network == network
    np.testing.assert_allclose(params.input_scale, [input_scale], rtol=1e-12)
    np.testing.assert_array_equal(params.input_offset, [0.0])
    logits = float_network.forward(params, test_images[outputs["indices"]], dtype=np.float64)
    reference = outputs["logits"]
    assert np.abs(logits - reference).max() <= 1e-4 * (reference.max() - reference.min())


# -- one model, several files -------------------------------------------------------------------

def test_keras_and_h5_agree():
    """lenet_bn.keras (native zip) and lenet_bn.h5 (legacy HDF5) give the same float network,
    array for array."""
    assert_same_network(read_fixture("lenet_bn.keras"), read_fixture("lenet_bn.h5"))


def test_keras2_h5_layout(tmp_path):
    """The Keras 2 legacy layout (weights at model_weights/<layer>/<layer>/kernel:0 named by
    bytes in weight_names, batch_input_shape, nested inbound_nodes and input_layers) reads as
    the Keras 3 one does."""
    def keras2_config(config):
        body = config["config"]
        for spec in body["layers"]:
            if "batch_shape" in spec["config"]:
                spec["config"]["batch_input_shape"] = spec["config"].pop("batch_shape")
            spec["inbound_nodes"] = [[[source, 0, 0, {}] for source in history(node)]
                                     for node in spec["inbound_nodes"]]
        body["input_layers"] = [body["input_layers"]]
        body["output_layers"] = [body["output_layers"]]

    def keras2_weights(h5):
        for group in h5["model_weights"].values():
            names = []
            for weight in group.attrs["weight_names"]:
                layer, variable = weight.split("/")[-2:]
                names.append(f"{layer}/{variable}:0")
                group.move(weight, names[-1])
            group.attrs["weight_names"] = np.array(names, dtype="S")

    path = edited("lenet_bn.h5", tmp_path, keras2_config, keras2_weights)
    with h5py.File(path, "r") as h5:
        assert "conv2d/kernel:0" in h5["model_weights/conv2d"]
    assert_same_network(read_fixture("lenet_bn.h5", path), read_fixture("lenet_bn.h5"))


def test_weights_found_by_class_not_name(tmp_path):
    """In model.weights.h5 a layer's group is named after its class (conv2d, conv2d_1, ...),
    not after the layer: a model saved with other layer names (conv2d_1 and conv2d_2 for its
    two convolutions, as Keras names them in a session that made a model before; the vars
    groups' name attributes say so, or are absent as in older Keras 3 files) reads the same."""
    renamed = {"conv2d_1": "conv2d_2", "conv2d": "conv2d_1"}

    def rename_config(config):
        for spec in config["config"]["layers"]:
            for old, new in renamed.items():
                if spec["config"]["name"] == old:
                    spec["config"]["name"] = spec["name"] = new
                    break
            for node in spec["inbound_nodes"]:
                for arg in node["args"]:
                    source = arg["config"]["keras_history"]
                    source[0] = renamed.get(source[0], source[0])

    def rename_vars(h5):
        for key, group in h5["layers"].items():
            group["vars"].attrs["name"] = renamed.get(key, key)

    def drop_names(h5):
        for group in h5["layers"].values():
            del group["vars"].attrs["name"]

    original = read_fixture("lenet_bn.keras")
    for edit_weights in (rename_vars, drop_names):
        path = edited("lenet_bn.keras", tmp_path, rename_config, edit_weights)
        assert_same_network(read_fixture("lenet_bn.keras", path), original)


def channels_first(flatten_format):
    def edit(config):
        layer_spec(config, "input_layer")["config"]["batch_shape"] = [None, 1, 28, 28]
        for name in ("conv2d", "max_pooling2d"):
            layer_spec(config, name)["config"]["data_format"] = "channels_first"
        layer_spec(config, "flatten")["config"]["data_format"] = flatten_format
    return edit


def test_channels_first(tmp_path):
    """seed_cnn made channels first (input (1, 28, 28), conv and pool channels_first) is the
    same network: with a channels_first Flatten (Keras moves the channels last before
    flattening) as it is; with a channels_last Flatten, which orders the features (c, y, x), the
    dense kernel permuted to match reads back in cnnforge's (y, x, c) order."""
    original = read_fixture("seed_cnn.keras")
    path = edited("seed_cnn.keras", tmp_path, channels_first("channels_first"))
    assert_same_network(read_fixture("seed_cnn.keras", path), original)

    def chw_kernel(h5):
        kernel = h5["layers/dense/vars/0"]
        kernel[...] = kernel[()].reshape(13, 13, 32, 10).transpose(2, 0, 1, 3).reshape(-1, 10)

    path = edited("seed_cnn.keras", tmp_path, channels_first("channels_last"), chw_kernel)
    params = read_fixture("seed_cnn.keras", path)
    assert params.network == SEED_CNN
    np.testing.assert_array_equal(params.weights[3], original.weights[3])


def test_preprocessing_and_activation_layers(tmp_path):
    """seed_cnn with a Normalization layer first (mean 33, variance 80**2), its conv's ReLU and
    its dense layer's softmax as separate Activation and Softmax layers and a Dropout after the
    Flatten is the same network, the Normalization composed onto the input mapping
    (pixel / 255 - 33) / 80."""
    def spec(class_name, name, **config):
        return {"module": "keras.layers", "class_name": class_name,
                "config": {"name": name, **config}}

    def edit(config):
        layers = config["config"]["layers"]
        layer_spec(config, "conv2d")["config"]["activation"] = "linear"
        layer_spec(config, "dense")["config"]["activation"] = "linear"
        layers.insert(1, spec("Normalization", "normalization", axis=[-1], invert=False,
                              mean=33.0, variance=6400.0))
        layers.insert(3, spec("Activation", "activation", activation="relu"))
        layers.insert(6, spec("Dropout", "dropout", rate=0.5))
        layers.append(spec("Softmax", "softmax", axis=-1))

    original = read_fixture("seed_cnn.keras")
    params = read_fixture("seed_cnn.keras", edited("seed_cnn.keras", tmp_path, edit))
    assert [s["class_name"] for s in read_config(tmp_path / "seed_cnn.keras")["config"]["layers"]] \
        == ["InputLayer", "Normalization", "Conv2D", "Activation", "MaxPooling2D", "Flatten",
            "Dropout", "Dense", "Softmax"]
    np.testing.assert_allclose(params.input_scale, [1 / 255 / 80], rtol=1e-12)
    np.testing.assert_allclose(params.input_offset, [-33 / 80], rtol=1e-12)
    params.input_scale, params.input_offset = original.input_scale, original.input_offset
    assert_same_network(params, original)


# -- refusals -----------------------------------------------------------------------------------

def check_refused(path, match):
    with pytest.raises(UnsupportedModel, match=match) as info:
        read_keras(path, 1.0, 0.0)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def truncated(name, tmp_path):
    data = (FIXTURES / name).read_bytes()
    (tmp_path / name).write_bytes(data[:len(data) // 2])
    return tmp_path / name


@pytest.mark.parametrize("name, make, match", [
    ("seed_cnn.keras", truncated, r"not a readable Keras model \(BadZipFile: "),
    ("lenet_bn.h5", truncated, r"not a readable Keras model \(OSError: .*truncated file"),
    ("garbage.keras", lambda name, tmp: tmp / "x.keras",
     r"not a readable Keras model \(neither a \.keras zip nor an HDF5 file\)"),
    ("missing.keras", lambda name, tmp: tmp / "missing.keras",
     r"not a readable Keras model \(no such file\)"),
    ("lenet_bn.keras", lambda name, tmp: rewrite_zip(FIXTURES / name, tmp / name,
                                                     {"config.json": b"{not json"}),
     r"not a readable Keras model \(JSONDecodeError: "),
    ("seed_cnn.keras", lambda name, tmp: edited(name, tmp, lambda c: c["config"].pop("layers")),
     r"not a readable Keras model \(the Sequential model config has no list of layers\)"),
], ids=["truncated-keras", "truncated-h5", "garbage", "missing", "config-not-json",
        "config-without-layers"])
def test_unreadable_file(name, make, match, tmp_path):
    """A truncated .keras or .h5, garbage bytes, a missing file, a zip whose config.json is not
    JSON and a config without its layers are each refused in one line: not a readable Keras
    model, and why."""
    (tmp_path / "x.keras").write_bytes(b"this is not a model\n" * 100)
    check_refused(make(name, tmp_path), match)


def test_weights_only_h5(tmp_path):
    """An HDF5 file without a model_config attribute (what save_weights writes) is refused in
    one line."""
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("conv2d/kernel", data=np.zeros((3, 3, 1, 4)))
    check_refused(path, r"not a readable Keras model \(an HDF5 file without a model_config")


SUPPORTED = r" \(supported layers: InputLayer, Conv2D, MaxPooling2D, Flatten, Dense, ReLU,"


def reads_flatten(config):
    """dense_1 reads flatten too: flatten's output feeds two layers."""
    node = layer_spec(config, "dense_1")["inbound_nodes"][0]
    node["args"][0]["config"]["keras_history"][0] = "flatten"


@pytest.mark.parametrize("name, edit, match", [
    ("seed_cnn.keras", set_fields("max_pooling2d", class_name="AveragePooling2D"),
     r"layer 'max_pooling2d' \(AveragePooling2D\): not supported" + SUPPORTED),
    ("lenet_bn.h5", set_fields("dense", class_name="LSTM"),
     r"layer 'dense' \(LSTM\): not supported" + SUPPORTED),
    ("seed_cnn.keras", set_fields("conv2d", dilation_rate=[2, 2]),
     r"layer 'conv2d' \(Conv2D\): dilation_rate \[2, 2\] \(only 1\)" + SUPPORTED),
    ("lenet_bn.keras", set_fields("conv2d_1", groups=2),
     r"layer 'conv2d_1' \(Conv2D\): groups 2 \(only 1\)"),
    ("seed_cnn.keras", set_fields("conv2d", activation="tanh"),
     r"layer 'conv2d' \(Conv2D\): activation 'tanh' \(only 'relu', 'linear'\)"),
    ("lenet_bn.h5", set_fields("dense", activation="sigmoid"),
     r"layer 'dense' \(Dense\): activation 'sigmoid' \(only 'relu', 'linear', 'softmax'\)"),
    ("seed_cnn.keras", set_fields("conv2d", strides=[3, 3]),
     r"layer 'conv2d' \(Conv2D\): strides \[3, 3\] \(cnnforge convolutions have stride 1 or 2"),
    ("seed_cnn.keras", set_fields("conv2d", strides=[1, 2]),
     r"layer 'conv2d' \(Conv2D\): strides \[1, 2\] \(cnnforge needs the same value"),
    ("seed_cnn.keras", set_fields("max_pooling2d", padding="same"),
     r"layer 'max_pooling2d' \(MaxPooling2D\): padding 'same' \(only 'valid'\)"),
    # pool strides read: 26x26 pooled every pixel is 25x25x32, not the 13x13x32 the dense reads
    ("seed_cnn.keras", set_fields("max_pooling2d", strides=[1, 1]),
     r"layer 'dense' \(Dense\): has 5408 inputs, its input has 20000"),
    ("lenet_bn.keras", set_fields("re_lu", max_value=6.0),
     r"layer 're_lu' \(ReLU\): max_value 6\.0 \(only the plain ReLU"),
    ("lenet_bn.keras", set_fields("batch_normalization", axis=1),
     r"layer 'batch_normalization' \(BatchNormalization\): axis 1 \(only the channel axis"),
    ("lenet_bn.keras", set_fields("conv2d_1", data_format="channels_first"),
     r"layer 'conv2d_1' \(Conv2D\): data_format 'channels_first' differs from the earlier"),
    ("lenet_bn.keras", reads_flatten,
     r"layer 'flatten' \(Flatten\): its output feeds 2 layers \('dense', 'dense_1'\): the "
     r"model branches"),
    # the builder's shape check, as UnsupportedModel: 28x28 -> 4x4 input, 2x2 after the pool
    ("lenet_bn.keras", set_fields("input_layer", batch_shape=[None, 4, 4, 1]),
     r"layer 'conv2d_1' \(Conv2D\): kernel 3 is larger than its 2x2 \(padded\) input"
     + SUPPORTED),
], ids=["AveragePooling2D", "LSTM", "dilation", "groups", "tanh", "sigmoid", "stride-3",
        "stride-1x2", "pool-same", "pool-stride", "relu6", "bn-axis", "mixed-data-format", "branch",
        "kernel-too-large"])
def test_unsupported_layer(name, edit, match, tmp_path):
    """A fixture with one layer changed to something cnnforge cannot map is refused in one line
    naming the layer, its class and the field and value."""
    check_refused(edited(name, tmp_path, edit), match)


def test_two_inputs(tmp_path):
    """A Functional model with two inputs (concatenated into a Dense layer) is refused naming
    the second InputLayer."""
    def tensor(source):
        return {"class_name": "__keras_tensor__",
                "config": {"shape": [None, 4], "keras_history": [source, 0, 0]}}

    def input_layer(name):
        return {"class_name": "InputLayer", "name": name, "inbound_nodes": [],
                "config": {"name": name, "batch_shape": [None, 4]}}

    config = {"class_name": "Functional", "config": {
        "name": "two_inputs",
        "layers": [
            input_layer("input_a"), input_layer("input_b"),
            {"class_name": "Concatenate", "name": "concatenate",
             "config": {"name": "concatenate", "axis": -1},
             "inbound_nodes": [{"args": [[tensor("input_a"), tensor("input_b")]], "kwargs": {}}]},
            {"class_name": "Dense", "name": "dense",
             "config": {"name": "dense", "units": 2, "activation": "linear"},
             "inbound_nodes": [{"args": [tensor("concatenate")], "kwargs": {}}]},
        ],
        "input_layers": [["input_a", 0, 0], ["input_b", 0, 0]],
        "output_layers": ["dense", 0, 0]}}
    path = rewrite_zip(FIXTURES / "seed_cnn.keras", tmp_path / "two_inputs.keras",
                       {"config.json": json.dumps(config).encode()})
    check_refused(path, r"layer 'input_b' \(InputLayer\): the model has 2 inputs \('input_a', "
                        r"'input_b'\); cnnforge reads one chain of layers from one input to one "
                        r"output" + SUPPORTED)
