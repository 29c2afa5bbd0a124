"""The ONNX reader (``cnnforge.importers.onnx_reader``): PyTorch-exported models become the
cnnforge float network that computes what the framework and onnxruntime compute, and every
model it cannot build is refused with one line naming the node, the op and the value.

Oracles: the logits PyTorch stored with each fixture (``tests/fixtures/import``, made by
``make_torch_fixtures.py``) and onnxruntime running the same file. Tolerance: 1e-4 of the
reference's logit range, largest absolute difference.
"""

from pathlib import Path
import re

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnforge.errors import UnsupportedModel
from cnnforge.hw.params import Conv2D, Dense, Flatten, MaxPool
from cnnforge.importers.onnx_reader import read_onnx
from cnnforge.sim.reference.float_network import forward
from cnnforge.sim.reference.float_model import softmax
from helpers import MNIST_DIR, needs_mnist


FIXTURES = Path(__file__).parent / "fixtures" / "import"

#: ``input_convention`` of a fixture -> (input_scale, input_offset) of a raw pixel.
CONVENTIONS = {"pixels/255": (1 / 255, 0.0), "pixels": (1.0, 0.0)}

LENET_LAYERS = (Conv2D(8, 5), MaxPool(2, 2), Conv2D(16, 3, stride=2, padding=(1, 1, 1, 1)),
                Flatten(), Dense(64, relu=True), Dense(10))
#: The layers each fixture must import as (the BatchNorm folded, Softmax and Relu absorbed) and
#: its input mapping (scale, offset) for the pixels of its convention.
EXPECTED = {
    "seed_cnn.onnx": ((Conv2D(32, 3), MaxPool(2, 2), Flatten(), Dense(10)), 1 / 255, 0.0),
    "lenet_bn.onnx": (LENET_LAYERS, 1 / 255 / 0.3081, -0.1307 / 0.3081),
    "lenet_bn_unfolded.onnx": (LENET_LAYERS, 1 / 255 / 0.3081, -0.1307 / 0.3081),
}


def close(got, want, what):
    """Largest absolute difference within 1e-4 of ``want``'s range."""
    diff = float(np.abs(np.asarray(got, np.float64) - want).max())
    tolerance = 1e-4 * float(want.max() - want.min())
    assert diff <= tolerance, f"{what}: max abs difference {diff:.3g} > {tolerance:.3g}"


def ort_run(model, nchw):
    """``model`` (a path or a ModelProto) run by onnxruntime on ``nchw`` float32 images; a final
    Softmax is dropped first, so the result is the logits."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    if model.graph.node[-1].op_type == "Softmax":
        model = onnx.ModelProto.FromString(model.SerializeToString())
        last = model.graph.node.pop()
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(last.input[0], TensorProto.FLOAT,
                                                                ["N", "K"]))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: nchw[i:i + 1]})[0]
                           for i in range(len(nchw))])


def nchw(images, scale):
    """uint8 images ``(N, H, W[, C])`` as the float32 ``(N, C, H, W)`` a model takes."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return (images.transpose(0, 3, 1, 2).astype(np.float64) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def mnist_test():
    from cnnforge import mnist
    return mnist.load("test", MNIST_DIR)[0]


def fixture(name):
    path = FIXTURES / name
    outputs = np.load(f"{path}.outputs.npz")
    scale, offset = CONVENTIONS[str(outputs["input_convention"])]
    return path, outputs, scale, offset


# ---- the PyTorch fixtures ------------------------------------------------------------------------

@needs_mnist
@pytest.mark.parametrize("name", list(EXPECTED))
def test_fixture_reproduces_pytorch_logits(name, mnist_test):
    """Imported, the fixture has the expected layers (Conv -> BN folded, the stride-2 conv's
    explicit pads kept as (1, 1, 1, 1), the Div/Sub/Div preprocessing in the input mapping), and
    its float64 forward pass on the stored MNIST test images gives PyTorch's logits."""
    path, outputs, scale, offset = fixture(name)
    params = read_onnx(path, scale, offset)
    layers, want_scale, want_offset = EXPECTED[name]
    assert params.network.layers == layers
    assert params.network.input == (28, 28, 1)
    np.testing.assert_allclose(params.input_scale, [want_scale], rtol=1e-6)
    np.testing.assert_allclose(params.input_offset, [want_offset], rtol=1e-6, atol=1e-12)
    logits = forward(params, mnist_test[outputs["indices"]], dtype=np.float64)
    close(logits, outputs["logits"], f"{name} vs PyTorch")


@needs_mnist
@pytest.mark.parametrize("name", list(EXPECTED))
def test_fixture_agrees_with_onnxruntime(name, mnist_test):
    """onnxruntime running the file (NCHW float32 in the model's own input convention) gives the
    imported network's logits, and, for a model that ends in Softmax, its probabilities."""
    path, outputs, scale, offset = fixture(name)
    params = read_onnx(path, scale, offset)
    images = mnist_test[outputs["indices"][:100]]
    ours = forward(params, images, dtype=np.float64)
    close(ours, ort_run(path, nchw(images, scale)), f"{name} vs onnxruntime")
    if str(outputs["model_output"]) == "probs":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probs = session.run(None, {"input": nchw(images, scale)})[0]
        np.testing.assert_allclose(softmax(ours), probs, atol=1e-5)


def test_folded_and_unfolded_batchnorm_import_alike():
    """The BatchNormalization node the builder folds gives the weights the exporter folded
    itself (the same trained module, exported both ways)."""
    folded = read_onnx(FIXTURES / "lenet_bn.onnx", 1.0, 0.0)
    unfolded = read_onnx(FIXTURES / "lenet_bn_unfolded.onnx", 1.0, 0.0)
    for a, b in zip(folded.arrays(), unfolded.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- hand-made models ----------------------------------------------------------------------------

def const(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def make_model(nodes, initializers=(), inputs=(("x", ["N", 1, 6, 6]),), output="y"):
    """A checked opset-17 model of ``nodes``; ``initializers`` as ``(name, value)`` pairs."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", "K"])],
        [v if isinstance(v, TensorProto) else const(*v) for v in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def save(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_matmul_add_and_per_channel_mul(tmp_path):
    """A 3-channel model with per-channel Mul preprocessing, Conv with auto_pad SAME_UPPER and
    stride 2, MaxPool, a Reshape whose shape is a Constant node, MatMul + Add (not Gemm) and a
    Softmax on axis -1: imported as the expected layers, its logits those of onnxruntime."""
    rng = np.random.default_rng(1)
    mul = [1 / 255, 2 / 255, 0.5 / 255]
    model = make_model(
        [helper.make_node("Mul", ["x", "m"], ["scaled"], name="mul"),
         helper.make_node("Conv", ["scaled", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3],
                          strides=[2, 2], auto_pad="SAME_UPPER"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                          strides=[2, 2]),
         helper.make_node("Constant", [], ["shape"], name="shape",
                          value=numpy_helper.from_array(np.array([-1, 16], np.int64))),
         helper.make_node("Reshape", ["p", "shape"], ["flat"], name="reshape"),
         helper.make_node("MatMul", ["flat", "fc_w"], ["mm"], name="matmul"),
         helper.make_node("Add", ["fc_b", "mm"], ["logits"], name="bias"),
         helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)],
        [("m", np.reshape(mul, (1, 3, 1, 1))), ("w", rng.normal(0, 0.5, (4, 3, 3, 3))),
         ("b", rng.normal(0, 0.1, 4)), ("fc_w", rng.normal(0, 0.5, (16, 5))),
         ("fc_b", rng.normal(0, 0.1, 5))],
        inputs=[("x", ["N", 3, 8, 8])])
    params = read_onnx(save(model, tmp_path), 1.0, 0.0)
    assert params.network.layers == (Conv2D(4, 3, stride=2, padding="same"), MaxPool(2, 2),
                                     Flatten(), Dense(5))
    np.testing.assert_allclose(params.input_scale, mul)
    images = rng.integers(0, 256, (20, 8, 8, 3), np.uint8)
    ours = forward(params, images, dtype=np.float64)
    close(ours, ort_run(model, nchw(images, 1.0)), "MatMul + Add model vs onnxruntime")


def test_gemm_attributes_batchnorm_and_reversed_sub(tmp_path):
    """``Sub(255, x)`` (the input on the right: scale -1), a per-channel Div of shape (C, 1, 1),
    a Conv without bias with asymmetric explicit pads, a BatchNormalization node, an
    overlapping MaxPool (3, stride 2), Flatten, Gemm with transB 0, alpha 0.5 and beta 2, a
    Dropout and a last Gemm: the logits of onnxruntime."""
    rng = np.random.default_rng(2)
    model = make_model(
        [helper.make_node("Sub", ["white", "x"], ["inverted"], name="invert"),
         helper.make_node("Div", ["inverted", "std"], ["scaled"], name="std"),
         helper.make_node("Conv", ["scaled", "w"], ["c"], name="conv", pads=[1, 0, 0, 1]),
         helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"],
                          name="bn", epsilon=1e-3),
         helper.make_node("Relu", ["bn"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3],
                          strides=[2, 2]),
         helper.make_node("Flatten", ["p"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["h"], name="fc1", alpha=0.5,
                          beta=2.0),
         helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
         helper.make_node("Dropout", ["hr"], ["d"], name="dropout"),
         helper.make_node("Gemm", ["d", "fc2_w", "fc2_b"], ["y"], name="fc2", transB=1)],
        [("white", 255.0), ("std", np.reshape([255.0, 127.5], (2, 1, 1))),
         ("w", rng.normal(0, 0.5, (3, 2, 3, 3))), ("gamma", rng.uniform(0.5, 2, 3)),
         ("beta", rng.normal(0, 0.2, 3)), ("mean", rng.normal(0, 0.2, 3)),
         ("var", rng.uniform(0.2, 2, 3)), ("fc1_w", rng.normal(0, 0.5, (12, 6))),
         ("fc1_b", rng.normal(0, 0.1, (1, 6))), ("fc2_w", rng.normal(0, 0.5, (4, 6))),
         ("fc2_b", rng.normal(0, 0.1, 4))],
        inputs=[("x", [1, 2, 7, 7])])
    params = read_onnx(save(model, tmp_path), 1.0, 0.0)
    assert params.network.layers == (Conv2D(3, 3, padding=(1, 0, 0, 1)), MaxPool(3, 2), Flatten(),
                                     Dense(6, relu=True), Dense(4))
    np.testing.assert_allclose(params.input_scale, [-1 / 255, -1 / 127.5])
    np.testing.assert_allclose(params.input_offset, [1.0, 2.0])
    images = rng.integers(0, 256, (20, 7, 7, 2), np.uint8)
    ours = forward(params, images, dtype=np.float64)
    close(ours, ort_run(model, nchw(images, 1.0)), "Gemm/BatchNorm model vs onnxruntime")


# ---- refused models ------------------------------------------------------------------------------

def conv_head(conv="conv", **attrs):
    """x (N, 1, 6, 6) -> Conv 2x3x3 (``attrs``) -> Relu -> Flatten -> Gemm -> y, as nodes and
    initializers (32 features: valid padding, stride 1)."""
    rng = np.random.default_rng(3)
    attrs.setdefault("kernel_shape", [3, 3])
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name=conv, **attrs),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    inits = [("w", rng.normal(size=(2, 1, 3, 3))), ("b", np.zeros(2)),
             ("fc_w", rng.normal(size=(2, 32))), ("fc_b", np.zeros(2))]
    return nodes, inits


def replace(nodes, index, *new):
    return nodes[:index] + list(new) + nodes[index + 1:]


def truncated(tmp_path):
    data = (FIXTURES / "seed_cnn.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[:len(data) // 2])
    return path


def garbage(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not an ONNX model\n" * 10)
    return path


def group_conv(tmp_path):
    nodes, inits = conv_head(group=2)
    model = make_model(nodes, inits, inputs=[("x", ["N", 2, 6, 6])])
    return save(model, tmp_path)


def dilated_conv(tmp_path):
    nodes, inits = conv_head(dilations=[2, 2])
    inits[2] = ("fc_w", np.zeros((2, 8)))               # 6 - 5 + 1 = 2: 2x2x2 features
    return save(make_model(nodes, inits), tmp_path)


def second_input(tmp_path):
    nodes, inits = conv_head()
    nodes = [helper.make_node("Add", ["x", "bias_image"], ["x2"], name="add_bias_image")] + nodes
    nodes[1].input[0] = "x2"
    model = make_model(nodes, inits, inputs=[("x", ["N", 1, 6, 6]), ("bias_image", [1, 1, 6, 6])])
    return save(model, tmp_path)


def unknown_op(tmp_path):
    nodes, inits = conv_head()
    nodes = replace(nodes, 1, helper.make_node("LeakyRelu", ["c"], ["r"], name="leaky"))
    return save(make_model(nodes, inits), tmp_path)


def average_pool(tmp_path):
    nodes, inits = conv_head()
    nodes = replace(nodes, 2, helper.make_node("AveragePool", ["r"], ["a"], name="avg",
                                               kernel_shape=[2, 2], strides=[2, 2]),
                    helper.make_node("Flatten", ["a"], ["flat"], name="flatten"))
    inits[2] = ("fc_w", np.zeros((2, 8)))
    return save(make_model(nodes, inits), tmp_path)


def branch(tmp_path):
    """The ReLU's output feeds both the Flatten and a residual Add."""
    nodes, inits = conv_head()
    nodes = replace(nodes, 2, helper.make_node("Add", ["r", "r2"], ["sum"], name="residual"),
                    helper.make_node("Flatten", ["sum"], ["flat"], name="flatten"))
    nodes.insert(2, helper.make_node("Relu", ["r"], ["r2"], name="relu_again"))
    return save(make_model(nodes, inits), tmp_path)


def conv_without_relu(tmp_path):
    nodes, inits = conv_head()
    nodes = replace(nodes, 1, helper.make_node("Identity", ["c"], ["r"], name="identity"))
    return save(make_model(nodes, inits), tmp_path)


def per_pixel_sub(tmp_path):
    nodes, inits = conv_head()
    nodes = [helper.make_node("Sub", ["x", "mean_image"], ["x2"], name="sub_mean")] + nodes
    nodes[1].input[0] = "x2"
    inits.append(("mean_image", np.full((1, 1, 6, 6), 0.5)))
    return save(make_model(nodes, inits), tmp_path)


def symbolic_height(tmp_path):
    nodes, inits = conv_head()
    return save(make_model(nodes, inits, inputs=[("x", ["N", 1, "H", 6])]), tmp_path)


def unequal_strides(tmp_path):
    nodes, inits = conv_head(strides=[1, 2])
    inits[2] = ("fc_w", np.zeros((2, 16)))
    return save(make_model(nodes, inits), tmp_path)


def padded_maxpool(tmp_path):
    nodes, inits = conv_head()
    nodes = replace(nodes, 2, helper.make_node("MaxPool", ["r"], ["p"], name="pool",
                                               kernel_shape=[2, 2], strides=[2, 2],
                                               pads=[1, 1, 1, 1]),
                    helper.make_node("Flatten", ["p"], ["flat"], name="flatten"))
    inits[2] = ("fc_w", np.zeros((2, 18)))
    return save(make_model(nodes, inits), tmp_path)


def flatten_axis_2(tmp_path):
    nodes, inits = conv_head()
    nodes[2] = helper.make_node("Flatten", ["r"], ["flat"], name="flatten", axis=2)
    inits[2] = ("fc_w", np.zeros((2, 16)))
    return save(make_model(nodes, inits), tmp_path)


NODE = r"node '{}' \({}\): "
SUPPORTED = r" \(supported ops: Conv, Relu, MaxPool, Flatten, Reshape, Gemm, MatMul, Add, "

REFUSED = {
    "missing file": (lambda tmp_path: tmp_path / "missing.onnx",
                     r"not a readable ONNX model \(No such file or directory\)$"),
    "truncated file": (truncated, r"not a readable ONNX model \(Error parsing message"),
    "garbage file": (garbage, r"not a readable ONNX model \("),
    "group conv": (group_conv,
                   NODE.format("conv", "Conv") + "group 2 is not supported" + SUPPORTED),
    "dilation 2": (dilated_conv,
                   NODE.format("conv", "Conv") + r"dilations \[2, 2\] are not supported"),
    "unequal strides": (unequal_strides,
                        NODE.format("conv", "Conv") + r"strides \[1, 2\] are not supported"),
    "second graph input": (second_input, NODE.format("add_bias_image", "Add")
                           + "its input 'bias_image' is a second graph input"),
    "LeakyRelu": (unknown_op, NODE.format("leaky", "LeakyRelu") + "LeakyRelu is not supported"
                  + SUPPORTED),
    "AveragePool": (average_pool,
                    NODE.format("avg", "AveragePool") + "AveragePool is not supported"),
    "branch": (branch, NODE.format("relu", "Relu") + r"its output 'r' feeds 2 inputs "
               r"\('relu_again', 'residual'\)"),
    "conv without ReLU": (conv_without_relu, NODE.format("flatten", "Flatten")
                          + "the convolution 'conv' before it has no ReLU"),
    "per-pixel Sub": (per_pixel_sub, NODE.format("sub_mean", "Sub") + r"its constant "
                      r"'mean_image' of shape \[1, 1, 6, 6\] is not a scalar or one value per "
                      r"channel"),
    "padded MaxPool": (padded_maxpool,
                       NODE.format("pool", "MaxPool") + r"pads \[1, 1, 1, 1\] are not supported"),
    "Flatten axis 2": (flatten_axis_2,
                       NODE.format("flatten", "Flatten") + "axis 2 is not supported"),
    "symbolic height": (symbolic_height, r"graph input 'x': dimension H is 'H' in "
                        r"\['N', 1, 'H', 6\]; cnnforge needs a fixed C, H and W$"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_with_one_line(case, tmp_path):
    """Each file cnnforge cannot import raises UnsupportedModel: one line that starts with the
    file's path and names the node, its op and the attribute or value (or why the file cannot
    be read)."""
    make, pattern = REFUSED[case]
    path = make(tmp_path)
    with pytest.raises(UnsupportedModel, match="^" + re.escape(f"{path}: ") + pattern) as e:
        read_onnx(path, 1 / 255, 0.0)
    assert "\n" not in str(e.value)
