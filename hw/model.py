"""What an accelerator and its trainer are built with: the integer network and the trainer's state.

These records are the interface between the RTL and the reference models: the RTL
(:class:`~cnnforge.hw.accel.Accelerator`, :class:`~cnnforge.hw.train.Trainer`) reads its memories'
initial contents from them; the reference models (``cnnforge.sim.reference``) compute with them and
make them (quantization, the model file, the fixed-point trainer).
"""

import copy
from dataclasses import dataclass, replace

import numpy as np

from .params import Network, NetworkConfig, TrainFormat, Widths


__all__ = ["QuantModel", "TrainState", "QuantLayer", "QuantNetwork"]


@dataclass
class QuantModel:
    """An integer network: every tensor the accelerator holds."""
    config: NetworkConfig
    conv_w: np.ndarray        # (F, K, K, Cin) int8
    conv_b: np.ndarray        # (F,) int32
    requant_mult: np.ndarray  # (F,) uint16
    requant_shift: int
    dense_w: np.ndarray       # (classes, features) int8
    dense_b: np.ndarray       # (classes,) int32
    softmax_mult: int         # logit distance -> base-2 fixed point
    softmax_shift: int

    @property
    def widths(self):
        return Widths(self.config)

    def to_network(self):
        """This model as a :class:`QuantNetwork` (its layer list)."""
        return QuantNetwork.from_seed(self)


@dataclass
class TrainState:
    """Everything the on-chip trainer holds: masters, biases and the fixed constants."""
    config: NetworkConfig
    fmt: TrainFormat
    conv_m: np.ndarray       # (F, K, K, Cin) int64 holding int16 masters
    conv_b: np.ndarray       # (F,) int64
    dense_m: np.ndarray      # (classes, features) int64 holding int16 masters
    dense_b: np.ndarray      # (classes,) int64
    requant_mult: np.ndarray
    requant_shift: int
    softmax_mult: int
    softmax_shift: int
    lfsr: object             # the LFSR of the stochastic rounding (``lfsr.state``: 32 bits)
    steps: int = 0

    def read(self, master):
        """The int8 forward weight of a master: round half up, no clip needed."""
        f = self.fmt.master_frac
        return (master + (1 << f >> 1)) >> f

    def model(self):
        """The :class:`QuantModel` the forward pass uses now."""
        return QuantModel(config=self.config, conv_w=self.read(self.conv_m).astype(np.int8),
                          conv_b=self.conv_b.astype(np.int32),
                          requant_mult=np.asarray(self.requant_mult, np.uint16),
                          requant_shift=int(self.requant_shift),
                          dense_w=self.read(self.dense_m).astype(np.int8),
                          dense_b=self.dense_b.astype(np.int32),
                          softmax_mult=int(self.softmax_mult), softmax_shift=int(self.softmax_shift))

    def copy(self):
        return replace(self, conv_m=self.conv_m.copy(), conv_b=self.conv_b.copy(),
                       dense_m=self.dense_m.copy(), dense_b=self.dense_b.copy(),
                       lfsr=copy.copy(self.lfsr))


@dataclass
class QuantLayer:
    """The integer tensors of one conv or dense layer of a :class:`QuantNetwork`.

    ``w``: int8, ``(F, K, K, Cin)`` (conv) or ``(units, fan_in)`` (dense); ``b``: int32 ``(F,)``;
    ``mult`` (uint16, one per output channel) and ``shift``: the requantization to uint8 after
    ReLU, ``clip((acc * mult + 2**(shift-1)) >> shift, 0, 255)``; ``None`` on the last layer,
    whose accumulators are the logits.
    """
    w: np.ndarray
    b: np.ndarray
    mult: object = None
    shift: object = None


@dataclass
class QuantNetwork:
    """An integer layer-list network: ``layers[i]`` is the :class:`QuantLayer` of
    ``network.layers[i]`` (``None`` for max-pool and flatten), then the softmax constants."""
    network: Network
    layers: list
    softmax_mult: int
    softmax_shift: int

    def param(self, index):
        return self.layers[index]

    def seed_model(self):
        """The :class:`QuantModel` of a network the accelerator builds today (``ConfigError`` for
        any other network, saying why)."""
        config = self.network.seed_config()
        conv, dense = self.layers[0], self.layers[3]
        return QuantModel(config=config, conv_w=conv.w, conv_b=conv.b, requant_mult=conv.mult,
                          requant_shift=int(conv.shift), dense_w=dense.w, dense_b=dense.b,
                          softmax_mult=int(self.softmax_mult),
                          softmax_shift=int(self.softmax_shift))

    @classmethod
    def from_seed(cls, model):
        """The layer list of a :class:`QuantModel`."""
        return cls(network=model.config.network(),
                   layers=[QuantLayer(model.conv_w, model.conv_b, model.requant_mult,
                                      int(model.requant_shift)), None, None,
                           QuantLayer(model.dense_w, model.dense_b)],
                   softmax_mult=int(model.softmax_mult), softmax_shift=int(model.softmax_shift))
