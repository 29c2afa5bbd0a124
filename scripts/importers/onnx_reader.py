"""ONNX models exported from PyTorch (channels first) as a cnnforge :class:`FloatNetwork`.

The graph must be one chain of ops from its one input ``(N, C, H, W)`` (``N`` symbolic or
fixed; ``C``, ``H``, ``W`` fixed) to its one output; every operand that is not on the chain is
a constant (an initializer or the output of a ``Constant`` node). Each op of the chain becomes
one call of :class:`~.builder.NetworkBuilder`, which folds BatchNorm and preprocessing and
checks what cnnforge can build:

==========================  ==========================================================
ONNX op                     becomes
==========================  ==========================================================
Div, Mul, Sub, Add          (before the first layer) the input mapping, by a scalar or
                            one value per channel (``(1, C, 1, 1)`` or ``(C, 1, 1)``);
                            ``Sub(c, x)`` is ``-x + c``
Conv                        :class:`Conv2D`: square kernel, equal strides of 1 or 2,
                            ``group`` 1, ``dilations`` 1, ``pads`` or ``auto_pad``
Relu                        the ReLU of the conv or dense layer before it
BatchNormalization          folded into the layer before it (inference form)
MaxPool                     :class:`MaxPool`: square window, equal strides, no pads
Flatten, Reshape            :class:`Flatten` to ``(N, C*H*W)`` in ``(c, y, x)`` order (the
                            builder reorders the next dense layer's weights)
Gemm; MatMul (+ Add)        :class:`Dense`; ``alpha``/``beta`` scale weights and bias
Softmax                     the network's final softmax (last op, class axis)
Identity, Dropout           nothing (inference)
==========================  ==========================================================

Anything else raises :class:`~cnnforge.errors.UnsupportedModel` with one line naming the
node, its op and what is not supported.
"""

from collections import defaultdict

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import UnsupportedModel
from .builder import NetworkBuilder


__all__ = ["SUPPORTED_OPS", "read_onnx"]


#: The ONNX ops (default domain) a model may use.
SUPPORTED_OPS = ("Conv", "Relu", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Add",
                 "BatchNormalization", "Softmax", "Div", "Mul", "Sub", "Identity", "Dropout")
_SUPPORTED = f"supported ops: {', '.join(SUPPORTED_OPS)}"
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16)
_ELEMENTWISE = ("Div", "Mul", "Sub", "Add")
_SKIPPED = ("Identity", "Dropout")


def read_onnx(path, input_scale, input_offset):
    """The :class:`FloatNetwork` of the ONNX model file ``path``.

    Parameters
    ----------
    path : str or path-like
        The ``.onnx`` file.
    input_scale, input_offset : float or per-channel arrays
        How a raw pixel becomes the model's input value: ``pixel * scale + offset`` (``1/255``
        and ``0`` for a model fed pixels / 255; ``1`` and ``0`` for one that takes raw pixels
        and carries its own preprocessing).

    Raises
    ------
    UnsupportedModel
        One line: ``"<path>: not a readable ONNX model (<reason>)"`` for a missing, truncated
        or malformed file; ``"<path>: node '<name>' (<op>): <what> (supported ops: ...)"`` for
        an op, attribute value or graph shape cnnforge cannot build (``<name>`` is ``#<index>``
        for a node without a name); ``"<path>: graph ..."`` for an input or output the network
        cannot have.
    """
    source = str(path)
    return _Reader(source, _load(source)).read(input_scale, input_offset)


def _load(source):
    try:
        model = onnx.load(source)
        onnx.checker.check_model(model)
    except OSError as e:
        raise UnsupportedModel(f"{source}: not a readable ONNX model "
                               f"({e.strerror or e})") from None
    except DecodeError as e:
        raise UnsupportedModel(f"{source}: not a readable ONNX model ({_one_line(e)})") from None
    except (onnx.checker.ValidationError, ValueError) as e:
        raise UnsupportedModel(f"{source}: not a readable ONNX model "
                               f"(onnx checker: {_one_line(e)})") from None
    return model


def _one_line(error):
    return " ".join(str(error).split())


class _Builder(NetworkBuilder):
    """The builder, its messages in the ONNX reader's form."""

    def fail(self, name, op, what):
        raise UnsupportedModel(f"{self.source}: node {name!r} ({op}): {what} ({_SUPPORTED})")


class _Reader:
    """Walks one graph from its input to its output, one builder call per op."""

    def __init__(self, source, model):
        self.source = source
        self.graph = graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.constants = {t.name: t for t in graph.initializer}
        # (protobuf hands out a new wrapper at each access: these keep one per node)
        nodes = self.nodes = list(graph.node)
        self.names = {}                     # id(node) -> the name messages give it
        self.producer = {}                  # tensor -> the node that writes it
        self.consumers = defaultdict(list)  # non-constant tensor -> the nodes that read it
        for index, node in enumerate(nodes):
            self.names[id(node)] = node.name or f"#{index}"
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constants[node.output[0]] = node
        for node in nodes:
            for tensor in node.output:
                self.producer[tensor] = node
            for tensor in node.input:
                if tensor and tensor not in self.constants:
                    self.consumers[tensor].append(node)
        self.builder = None
        self.matmul = None                  # (node, weights) of a MatMul waiting for its bias
        self.batch = None                   # the input's batch size when it is fixed

    # --- messages ------------------------------------------------------------------------------
    def fail(self, node, what):
        self.builder.fail(self.names[id(node)], node.op_type, what)

    def fail_graph(self, what):
        raise UnsupportedModel(f"{self.source}: graph {what}")

    # --- the walk ------------------------------------------------------------------------------
    def read(self, input_scale, input_offset):
        image, input_shape = self._input()
        outputs = [o.name for o in self.graph.output]
        if len(outputs) != 1:
            self.fail_graph(f"has {len(outputs)} outputs {outputs}; cnnforge imports models with "
                            f"one output (the logits or probabilities)")
        self.builder = _Builder(self.source, input_shape, input_scale, input_offset)
        self._refuse_other_inputs(image)
        handlers = {
            "Conv": self._conv, "Relu": self._relu, "MaxPool": self._maxpool,
            "Flatten": self._flatten, "Reshape": self._reshape, "Gemm": self._gemm,
            "MatMul": self._matmul, "BatchNormalization": self._batchnorm,
            "Softmax": self._softmax, "Identity": self._skip, "Dropout": self._dropout,
            "Div": self._elementwise, "Mul": self._elementwise, "Sub": self._elementwise,
            "Add": self._add,
        }
        tensor = image
        while True:
            node = self._next_node(tensor, outputs[0])
            if node is None:
                break
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, f"op domain {node.domain!r} is not supported")
            if node.op_type not in handlers:
                self.fail(node, f"{node.op_type} is not supported")
            slot = self._check_operands(node, tensor)
            if self.matmul is not None and node.op_type not in ("Add", *_SKIPPED):
                self._flush_matmul(None)
            handlers[node.op_type](node, slot)
            tensor = node.output[0]
        if self.matmul is not None:
            self._flush_matmul(None)
        return self.builder.network()

    def _input(self):
        inputs = [i for i in self.graph.input if i.name not in self.constants]
        if not inputs:
            self.fail_graph("has no input (every graph input is an initializer)")
        first = inputs[0]
        where = f"input {first.name!r}"
        kind = first.type.WhichOneof("value")
        tensor_type = first.type.tensor_type
        if kind != "tensor_type" or tensor_type.elem_type not in _FLOAT_TYPES:
            name = (onnx.TensorProto.DataType.Name(tensor_type.elem_type)
                    if kind == "tensor_type" else kind)
            self.fail_graph(f"{where}: is {name}, not a float tensor")
        if not tensor_type.HasField("shape"):
            self.fail_graph(f"{where}: has no shape; cnnforge needs (N, C, H, W)")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in tensor_type.shape.dim]
        if len(dims) != 4:
            self.fail_graph(f"{where}: has shape {dims}; cnnforge imports image models with an "
                            f"(N, C, H, W) input")
        for axis, value in zip("CHW", dims[1:]):
            if not isinstance(value, int) or value < 1:
                self.fail_graph(f"{where}: dimension {axis} is {value!r} in {dims}; cnnforge "
                                f"needs a fixed C, H and W")
        self.batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        _, c, h, w = dims
        return first.name, (h, w, c)

    def _refuse_other_inputs(self, image):
        for extra in self.graph.input:
            if extra.name == image or extra.name in self.constants:
                continue
            users = self.consumers.get(extra.name)
            what = (f"is a second graph input (cnnforge imports models with one input, the "
                    f"image {image!r})")
            if users:
                self.fail(users[0], f"its input {extra.name!r} {what}")
            self.fail_graph(f"input {extra.name!r}: {what}")

    def _next_node(self, tensor, output):
        """The one node reading ``tensor``, ``None`` at the graph output."""
        users = self.consumers.get(tensor, [])
        producer = self.producer.get(tensor)
        if len(users) > 1 or (users and tensor == output):
            readers = ", ".join(repr(self.names[id(n)]) for n in users)
            what = (f"is the graph output and also feeds {readers}" if tensor == output else
                    f"feeds {len(users)} inputs ({readers})")
            what += "; cnnforge imports one chain of ops"
            if producer is None:
                self.fail(users[0], f"the graph input {tensor!r} {what}")
            self.fail(producer, f"its output {tensor!r} {what}")
        if tensor == output:
            return None
        if not users:
            if producer is None:
                self.fail_graph(f"input {tensor!r} does not reach the graph output {output!r}")
            self.fail(producer, f"its output {tensor!r} does not reach the graph output "
                                f"{output!r}")
        return users[0]

    def _check_operands(self, node, tensor):
        """The input slot of ``tensor`` in ``node``; every other input must be a constant and
        every output but the first unused."""
        slot = list(node.input).index(tensor)
        for index, name in enumerate(node.input):
            if index == slot or not name:
                continue
            if name not in self.constants:
                self.fail(node, f"its input {index} {name!r} is not a constant (an initializer "
                                f"or a Constant node)")
        for name in node.output[1:]:
            if name and (self.consumers.get(name) or name in (o.name for o in self.graph.output)):
                self.fail(node, f"its output {name!r} is used; only the first output may be")
        if slot != 0 and node.op_type not in _ELEMENTWISE:
            self.fail(node, f"its data input is input {slot}, not 0")
        return slot

    # --- constants and attributes ----------------------------------------------------------------
    def const(self, node, index):
        """Input ``index`` of ``node`` (a constant) as a float64 array; ``None`` when absent."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        source = self.constants[name]
        try:
            if isinstance(source, onnx.TensorProto):
                value = numpy_helper.to_array(source)
            else:
                value = _constant_node_value(source)
        except (ValueError, TypeError, OSError) as e:
            self.fail(node, f"its constant {name!r} cannot be read ({_one_line(e)})")
        value = np.asarray(value)
        if value.dtype.kind not in "fiub":
            self.fail(node, f"its constant {name!r} is {value.dtype}, not a number")
        value = value.astype(np.float64)
        if not np.all(np.isfinite(value)):
            self.fail(node, f"its constant {name!r} has values that are not finite")
        return value

    def weight(self, node, index, what):
        value = self.const(node, index)
        if value is None:
            self.fail(node, f"has no {what}")
        return value

    @staticmethod
    def attrs(node):
        out = {}
        for a in node.attribute:
            value = onnx.helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def vector(self, node, index, length, what):
        """Input ``index`` as ``length`` values (a scalar, ``(length,)`` or ``(1, length)``)."""
        value = self.const(node, index)
        if value is None:
            return None
        shape = value.shape
        if len(shape) > 2 or (len(shape) == 2 and shape[0] != 1) or \
                (shape and shape[-1] not in (1, length)):
            self.fail(node, f"its {what} {node.input[index]!r} of shape {list(shape)} is not one "
                            f"value per output ({length})")
        return np.broadcast_to(value.reshape(-1), (length,)).copy()

    # --- ops -----------------------------------------------------------------------------------
    def _skip(self, node, slot):
        pass

    def _dropout(self, node, slot):
        training = self.const(node, 2)
        if training is not None and training.any():
            self.fail(node, "training_mode true is not supported (inference only)")

    def _relu(self, node, slot):
        self.builder.relu(self.names[id(node)], node.op_type)

    def _elementwise(self, node, slot):
        op = node.op_type
        if self.builder.layers or self.matmul is not None:
            where = "on the model input, before the first layer"
            if op == "Add":
                where += ", or as the bias right after a MatMul"
            self.fail(node, f"an elementwise {op} is supported only {where}")
        name = node.input[1 - slot]
        value = self.const(node, 1 - slot)
        h, w, c = self.builder.input_shape
        shape = value.shape
        full = (1,) * (4 - len(shape)) + shape
        if len(shape) > 4 or full[0] != 1 or full[2:] != (1, 1) or full[1] not in (1, c):
            self.fail(node, f"its constant {name!r} of shape {list(shape)} is not a scalar or one "
                            f"value per channel ([1, {c}, 1, 1] or [{c}, 1, 1]) of the "
                            f"[N, {c}, {h}, {w}] input")
        values = value.reshape(-1)
        if op == "Div":
            if slot != 0:
                self.fail(node, f"divides the constant {name!r} by the input (not a scale and "
                                f"shift of the input)")
            if not values.all():
                self.fail(node, f"its constant {name!r} divides by zero")
            scale, offset = 1 / values, 0.0
        elif op == "Mul":
            scale, offset = values, 0.0
        elif op == "Add":
            scale, offset = 1.0, values
        elif slot == 0:                                     # x - c
            scale, offset = 1.0, -values
        else:                                               # c - x
            scale, offset = -1.0, values
        self.builder.affine(self.names[id(node)], op, scale, offset)

    def _conv(self, node, slot):
        a = self.attrs(node)
        w = self.weight(node, 1, "weights")
        if w.ndim != 4:
            self.fail(node, f"weights of shape {list(w.shape)} are not a 2-D convolution's")
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        if kernel != list(w.shape[2:]):
            self.fail(node, f"kernel_shape {kernel} does not match its weights {list(w.shape)}")
        if kernel[0] != kernel[1]:
            self.fail(node, f"kernel_shape {kernel} is not supported (square kernels only)")
        if a.get("group", 1) != 1:
            self.fail(node, f"group {a['group']} is not supported")
        dilations = list(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dilations):
            self.fail(node, f"dilations {dilations} are not supported")
        strides = list(a.get("strides", [1, 1]))
        if len(strides) != 2 or strides[0] != strides[1] or strides[0] not in (1, 2):
            self.fail(node, f"strides {strides} are not supported (equal strides of 1 or 2)")
        stride, k = strides[0], kernel[0]
        auto_pad = a.get("auto_pad", "NOTSET")
        if auto_pad == "NOTSET":
            pads = list(a.get("pads", [0, 0, 0, 0]))       # [top, left, bottom, right]
            if len(pads) != 4 or min(pads) < 0:
                self.fail(node, f"pads {pads} are not supported")
        elif auto_pad == "VALID":
            pads = [0, 0, 0, 0]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if len(self.builder.shape) != 3:
                self.fail(node, f"needs a feature map, not {self.builder.shape}")
            begin_end = [_same_pads(size, k, stride, upper=auto_pad == "SAME_UPPER")
                         for size in self.builder.shape[:2]]
            (top, bottom), (left, right) = begin_end
            pads = [top, left, bottom, right]
        else:
            self.fail(node, f"auto_pad {auto_pad!r} is not supported")
        bias = self.const(node, 2)
        self.builder.conv(self.names[id(node)], node.op_type, w.transpose(0, 2, 3, 1), bias,
                          stride, pads)

    def _maxpool(self, node, slot):
        a = self.attrs(node)
        kernel = list(a["kernel_shape"])
        if len(kernel) != 2 or kernel[0] != kernel[1]:
            self.fail(node, f"kernel_shape {kernel} is not supported (square windows only)")
        strides = list(a.get("strides", [1, 1]))
        if len(strides) != 2 or strides[0] != strides[1]:
            self.fail(node, f"strides {strides} are not supported (equal strides only)")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if any(pads):
            self.fail(node, f"pads {pads} are not supported")
        dilations = list(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dilations):
            self.fail(node, f"dilations {dilations} are not supported")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            self.fail(node, f"auto_pad {a['auto_pad']!r} is not supported")
        size, stride = kernel[0], strides[0]
        if a.get("ceil_mode", 0) and len(self.builder.shape) == 3 and any(
                (side - size) % stride for side in self.builder.shape[:2]):
            # (where the windows tile the input, ceil and floor give the same output)
            self.fail(node, f"ceil_mode {a['ceil_mode']} is not supported")
        self.builder.maxpool(self.names[id(node)], node.op_type, size, stride)

    def _flatten(self, node, slot):
        axis = self.attrs(node).get("axis", 1)
        rank = len(self.builder.shape) + 1
        if axis not in (1, 1 - rank):
            self.fail(node, f"axis {axis} is not supported (axis 1: one vector per image)")
        self.builder.flatten(self.names[id(node)], node.op_type, "chw")

    def _reshape(self, node, slot):
        a = self.attrs(node)
        target = self.const(node, 1)
        if target is None and "shape" in a:                 # opset < 5: an attribute
            target = np.asarray(a["shape"])
        if target is None:
            self.fail(node, "has no shape")
        target = [int(v) for v in target.reshape(-1)]
        features = int(np.prod(self.builder.shape))
        if len(target) == 2:
            batch, rest = target
            keeps_batch = batch in (1, self.batch) or (batch == 0 and not a.get("allowzero", 0))
            flattens = (keeps_batch and rest in (-1, features)) or (batch, rest) == (-1, features)
        if len(target) != 2 or not flattens:
            self.fail(node, f"shape {target} is not supported (only a flatten to "
                            f"[N, {features}] or [N, -1])")
        self.builder.flatten(self.names[id(node)], node.op_type, "chw")

    def _gemm(self, node, slot):
        a = self.attrs(node)
        if a.get("transA", 0):
            self.fail(node, f"transA {a['transA']} is not supported")
        b = self.weight(node, 1, "weights")
        if b.ndim != 2:
            self.fail(node, f"weights of shape {list(b.shape)} are not a matrix")
        w = (b if a.get("transB", 0) else b.T) * a.get("alpha", 1.0)
        bias = self.vector(node, 2, len(w), "bias")
        if bias is not None:
            bias = bias * a.get("beta", 1.0)
        self.builder.dense(self.names[id(node)], node.op_type, w, bias)

    def _matmul(self, node, slot):
        b = self.weight(node, 1, "weights")
        if b.ndim != 2:
            self.fail(node, f"weights of shape {list(b.shape)} are not a matrix")
        self.matmul = (node, b.T)

    def _flush_matmul(self, bias):
        node, w = self.matmul
        self.matmul = None
        self.builder.dense(self.names[id(node)], node.op_type, w, bias)

    def _add(self, node, slot):
        """``Add`` of a constant: the bias of the MatMul before it, or preprocessing."""
        if self.matmul is None:
            self._elementwise(node, slot)
            return
        units = len(self.matmul[1])
        self._flush_matmul(self.vector(node, 1 - slot, units, "bias"))

    def _batchnorm(self, node, slot):
        a = self.attrs(node)
        if a.get("training_mode", 0):
            self.fail(node, f"training_mode {a['training_mode']} is not supported (inference "
                            f"form only)")
        if a.get("spatial", 1) != 1:
            self.fail(node, f"spatial {a['spatial']} is not supported")
        gamma, beta, mean, var = (self.weight(node, i, what) for i, what in
                                  enumerate(("scale", "B", "input_mean", "input_var"), 1))
        self.builder.batchnorm(self.names[id(node)], node.op_type, gamma.reshape(-1),
                               beta.reshape(-1), mean.reshape(-1), var.reshape(-1),
                               float(a.get("epsilon", 1e-5)))

    def _softmax(self, node, slot):
        axis = self.attrs(node).get("axis", 1 if self.opset < 13 else -1)
        if axis not in (1, -1):
            self.fail(node, f"axis {axis} is not supported (the class axis: 1 or -1)")
        self.builder.softmax(self.names[id(node)], node.op_type)


def _same_pads(size, kernel, stride, upper):
    """``(begin, end)`` of ONNX ``auto_pad`` SAME_UPPER/SAME_LOWER: output ``ceil(size/stride)``,
    the odd pixel at the end (upper) or the beginning (lower)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def _constant_node_value(node):
    """The value of a ``Constant`` node."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key in ("value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return np.asarray(attrs[key])
    raise ValueError(f"a Constant with {', '.join(attrs) or 'no value'} (a number tensor only)")
