"""What every importer shares: a model's layers, as its reader walks them, become a cnnforge
``FloatNetwork`` (channels last, every conv followed by ReLU, BatchNorm and input preprocessing
folded, Flatten in ``(y, x, c)`` order).

A reader calls :class:`NetworkBuilder` once per op of the framework's graph, in order, with
weights already in cnnforge's layout (``(F, K, K, Cin)`` conv kernels, ``(units, fan_in)`` dense
weights) and a name for error messages (the ONNX node or Keras layer name). What cannot be built
raises :class:`~cnnforge.errors.UnsupportedModel` with one line naming the node or layer.
"""

import numpy as np

from ..errors import UnsupportedModel
from ..hw.params import ConfigError, Conv2D, Dense, Flatten, MaxPool, Network
from ..sim.reference.float_network import FloatNetwork


__all__ = ["NetworkBuilder"]


class NetworkBuilder:
    """Builds a :class:`FloatNetwork` from a model's ops.

    Parameters
    ----------
    source : str
        The model file, for error messages.
    input_shape : (H, W, C)
        The model's input, channels last.
    input_scale, input_offset : per-channel arrays
        How a raw pixel becomes the model's input value: ``pixel * scale + offset`` (from the
        command line's ``--input-scale/--input-mean/--input-std``); leading preprocessing ops of
        the model compose onto it (:meth:`affine`).
    """

    def __init__(self, source, input_shape, input_scale, input_offset):
        self.source = source
        self.input_shape = tuple(int(v) for v in input_shape)
        c = self.input_shape[2]
        self.input_scale = np.broadcast_to(np.asarray(input_scale, np.float64), (c,)).copy()
        self.input_offset = np.broadcast_to(np.asarray(input_offset, np.float64), (c,)).copy()
        self.layers, self.weights, self.biases = [], [], []
        self.shape = self.input_shape
        self.pending_relu = None        # name of a conv/dense waiting for its ReLU
        self.pending_kind = None        # and its kind
        self.pending_op = None          # and its op, for messages
        self.flat_from = None           # (H, W, C) and order of the last Flatten
        self.finished = None            # name of the softmax that ended the network

    def fail(self, name, op, what):
        raise UnsupportedModel(f"{self.source}: {name} ({op}): {what}")

    def _check_open(self, name, op):
        if self.finished is not None:
            self.fail(name, op, f"follows the softmax {self.finished!r}; the softmax must be last")

    def _check_relu_done(self, name, op):
        if self.pending_relu is not None and self.pending_kind == "conv2d":
            self.fail(name, op, f"the convolution {self.pending_relu!r} before it has no ReLU "
                                f"(cnnforge's conv layers end in ReLU: activations are uint8)")

    # --- preprocessing -------------------------------------------------------------------------
    def affine(self, name, op, scale=1.0, offset=0.0):
        """``x * scale + offset`` (scalars or per-channel) on the model input, before any layer."""
        self._check_open(name, op)
        if self.layers:
            self.fail(name, op, "an elementwise scale/shift is supported only on the model "
                                "input, before the first layer")
        c = self.input_shape[2]
        try:
            scale = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (c,))
            offset = np.broadcast_to(np.asarray(offset, np.float64).reshape(-1), (c,))
        except ValueError:
            self.fail(name, op, f"its constant is not one value per input channel ({c})")
        self.input_scale = self.input_scale * scale
        self.input_offset = self.input_offset * scale + offset

    # --- layers --------------------------------------------------------------------------------
    def conv(self, name, op, w, b, stride, pads):
        """A convolution: ``w`` ``(F, K, K, Cin)``, ``b`` ``(F,)`` or ``None``, ``stride`` an int,
        ``pads`` ``(top, left, bottom, right)``."""
        self._check_open(name, op)
        self._check_relu_done(name, op)
        w = np.asarray(w, np.float64)
        if w.ndim != 4 or w.shape[1] != w.shape[2]:
            self.fail(name, op, f"kernel shape {w.shape[1:3]} is not square")
        if len(self.shape) != 3 or w.shape[3] != self.shape[2]:
            self.fail(name, op, f"expects {w.shape[3]} input channels, its input is "
                                f"{self.shape}")
        pads = tuple(int(p) for p in pads)
        padding = "valid" if not any(pads) else pads
        if padding != "valid" and Conv2D(1, w.shape[1], stride, "same").pads(
                *self.shape[:2]) == pads:
            padding = "same"
        b = np.zeros(len(w)) if b is None else np.asarray(b, np.float64)
        self._add(name, op, Conv2D(int(w.shape[0]), int(w.shape[1]), int(stride), padding), w, b)
        self.pending_relu, self.pending_kind, self.pending_op = name, "conv2d", op

    def dense(self, name, op, w, b):
        """A fully connected layer: ``w`` ``(units, fan_in)``, ``b`` ``(units,)`` or ``None``."""
        self._check_open(name, op)
        self._check_relu_done(name, op)
        if self.pending_kind == "dense" and self.pending_relu is not None:
            self.fail(name, op, f"the dense layer {self.pending_relu!r} before it has no ReLU "
                                f"(hidden activations are uint8 after ReLU)")
        w = np.asarray(w, np.float64)
        if len(self.shape) != 1:
            self.fail(name, op, f"needs a flat input, not a {self.shape} feature map")
        if w.shape[1] != self.shape[0]:
            self.fail(name, op, f"has {w.shape[1]} inputs, its input has {self.shape[0]}")
        if self.flat_from is not None and self.flat_from[1] == "chw" and self._just_flattened():
            # Channels-first flatten orders features (c, y, x); cnnforge's is (y, x, c).
            h, wd, c = self.flat_from[0]
            w = w.reshape(len(w), c, h, wd).transpose(0, 2, 3, 1).reshape(len(w), -1)
        b = np.zeros(len(w)) if b is None else np.asarray(b, np.float64)
        self._add(name, op, Dense(int(w.shape[0])), w, b)
        self.pending_relu, self.pending_kind = name, "dense"

    def _just_flattened(self):
        return isinstance(self.layers[-1], Flatten)

    def relu(self, name, op):
        self._check_open(name, op)
        if self.pending_relu is None:
            if self.layers and isinstance(self.layers[-1], (MaxPool, Flatten)):
                return      # ReLU after pooling of ReLU outputs, or again: no change
            self.fail(name, op, "a ReLU must follow a convolution or dense layer")
        layer = self.layers[-1]
        if isinstance(layer, Dense):
            self.layers[-1] = Dense(layer.units, relu=True)
        self.pending_relu = self.pending_kind = None

    def batchnorm(self, name, op, gamma, beta, mean, var, eps):
        """Inference BatchNorm, folded into the conv or dense layer right before it (or into the
        input mapping when it is the first op)."""
        self._check_open(name, op)
        k = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
        shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * k
        if not self.layers:
            self.affine(name, op, k, shift)
            return
        if self.pending_relu is None or not isinstance(self.layers[-1], (Conv2D, Dense)):
            # (a pending ReLU with a max-pool in between would need BN before the pool: refused)
            after = "a ReLU" if self.pending_relu is None else f"a {self.layers[-1].kind}"
            self.fail(name, op, f"BatchNormalization is folded into the convolution or dense "
                                f"layer right before it; here it follows {after}")
        i = len(self.layers) - 1
        if len(k) != len(self.biases[i]):
            self.fail(name, op, f"has {len(k)} channels, the layer before it {len(self.biases[i])}")
        self.weights[i] = self.weights[i] * k.reshape((-1,) + (1,) * (self.weights[i].ndim - 1))
        self.biases[i] = self.biases[i] * k + shift

    def maxpool(self, name, op, size, stride):
        self._check_open(name, op)
        # A pending ReLU may come after the pool: max-pool and ReLU commute.
        self._add(name, op, MaxPool(int(size), int(stride)), None, None)

    def flatten(self, name, op, order):
        """``order``: ``"hwc"`` (channels-last frameworks) or ``"chw"`` (channels-first)."""
        self._check_open(name, op)
        self._check_relu_done(name, op)
        if len(self.shape) == 1:
            return        # already flat
        self.flat_from = (self.shape, order)
        self._add(name, op, Flatten(), None, None)

    def softmax(self, name, op):
        self._check_open(name, op)
        if not self.layers or not isinstance(self.layers[-1], Dense):
            self.fail(name, op, "softmax must follow the last dense layer")
        self.finished = name

    def _add(self, name, op, layer, w, b):
        try:
            if isinstance(layer, (Dense, Flatten)):
                shape = self._shape_after(layer)
            else:
                trial = Network(self.input_shape, (*self.layers, layer, Flatten(), Dense(2)))
                shape = trial.output_shape(len(self.layers))
        except ConfigError as e:
            self.fail(name, op, str(e).split(": ", 2)[-1])
        self.layers.append(layer)
        self.weights.append(None if w is None else w.astype(np.float32))
        self.biases.append(None if b is None else b.astype(np.float32))
        self.shape = shape

    def _shape_after(self, layer):
        if isinstance(layer, Flatten):
            return (int(np.prod(self.shape)),)
        return (layer.units,)

    def network(self):
        """The :class:`FloatNetwork` built, checked as a whole."""
        if not self.layers:
            raise UnsupportedModel(f"{self.source}: has no layers cnnforge can build")
        if self.pending_kind == "conv2d":
            self.fail(self.pending_relu, self.pending_op, "has no ReLU after it")
        try:
            net = Network(self.input_shape, tuple(self.layers))
        except ConfigError as e:
            raise UnsupportedModel(f"{self.source}: {e}") from None
        return FloatNetwork(net, self.weights, self.biases, self.input_scale, self.input_offset)
