"""Small helpers shared by the RTL blocks: argument checks, the base of the blocks on the
convolution's channel stream, and packing of memory words."""

import operator

import numpy as np
from amaranth.lib import wiring

from .params import NetworkConfig, StageConfig


__all__ = ["ModelWriteSignature", "REPLICA", "check_int", "check_config", "check_lanes", "check_choice",
           "check_int8_array", "check_bias_array", "ChannelBlock", "pack_fields"]


#: Signal attribute of a register that duplicates another on purpose (a copy placed near its
#: loads, to cut a long fanout). Board builds keep such registers (Yosys merges identical
#: registers otherwise): ``Signal(..., attrs={REPLICA: 1})``.
REPLICA = "cnnforge_replica"


def check_int(name, value, minimum, maximum=None, *, requirement=None):
    """``value`` as an int in ``minimum .. maximum`` (``None``: no upper bound);
    TypeError/ValueError naming ``name`` otherwise.

    ``requirement`` words the ValueError's condition (default ``"at least {minimum}"`` or
    ``"at most {maximum}"``, the bound that is broken).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {value!r}") from None
    if value < minimum or maximum is not None and value > maximum:
        if requirement is None:
            requirement = f"at least {minimum}" if value < minimum else f"at most {maximum}"
        raise ValueError(f"{name} must be {requirement}, not {value!r}")
    return value


def check_config(config):
    """``config`` if it is a :class:`~cnnforge.hw.params.NetworkConfig` or a
    :class:`~cnnforge.hw.params.StageConfig` (one engine of a layer-list accelerator); TypeError
    otherwise."""
    if not isinstance(config, (NetworkConfig, StageConfig)):
        raise TypeError(f"config must be a NetworkConfig or StageConfig, not {config!r}")
    return config


def check_lanes(config, lanes, *, requirement=None):
    """``lanes`` as an int >= 1 that divides ``config.filters`` (channels per beat of the
    convolution's output stream); TypeError/ValueError otherwise (``requirement``: as
    :func:`check_int`)."""
    lanes = check_int("lanes", lanes, 1, requirement=requirement)
    if config.filters % lanes:
        raise ValueError(f"lanes must divide filters ({config.filters}), not {lanes!r}")
    return lanes


def check_choice(name, value, choices):
    """``value`` if it is one of ``choices``; ValueError listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"not {value!r}")
    return value


def check_int8_array(name, value, shape):
    """``value`` as an int64 array of ``shape`` holding int8 values; ValueError otherwise."""
    value = np.asarray(value)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, not {value.shape!r}")
    if not np.issubdtype(value.dtype, np.integer) or value.size and (
            value.min() < -128 or value.max() > 127):
        raise ValueError(f"{name} must hold int8 values, not {value.dtype} in "
                         f"{value.min()}..{value.max()}")
    return value.astype(np.int64)


def check_bias_array(name, value, shape, bound):
    """``value`` as an int64 array of ``shape`` holding integers within ``+-bound``;
    ValueError otherwise."""
    value = np.asarray(value)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, not {value.shape!r}")
    if not np.issubdtype(value.dtype, np.integer) or (
            np.abs(value.astype(np.int64)).max() > bound):
        raise ValueError(f"{name} must hold integers within +-{bound}, not "
                         f"{value.dtype} in {value.min()}..{value.max()}")
    return value.astype(np.int64)


class ChannelBlock(wiring.Component):
    """Base of the blocks on the convolution's channel stream (conv engines, Requantize,
    MaxPool): for every position ``filters // lanes`` beats, beat ``g`` holding channels
    ``g*lanes .. g*lanes + lanes - 1``. A subclass sets ``self._config`` (checked with
    :func:`check_config`) and ``self._lanes`` (:func:`check_lanes`) before its ports.
    """

    @property
    def config(self):
        return self._config

    @property
    def lanes(self):
        return self._lanes

    @property
    def groups(self):
        """Beats (channel groups) per position: ``filters // lanes``."""
        return self._config.filters // self._lanes


class ModelWriteSignature(wiring.Signature):
    """The model write port, as its writer sees it: one word per cycle with ``en``, word
    ``data`` to address ``addr`` of memory ``memory``. The accelerators take it (``In``), the
    on-chip trainer, the host link's executor and the test loader drive it (``Out``); a
    :class:`~cnnforge.boards.crossing.ClockCrossing` carries it across clock domains.

    Parameters
    ----------
    memory : shape-like
        The memory select: :class:`~cnnforge.hw.accel.ModelMemory` for the seed's accelerator,
        ``range(len(memories))`` for a layer-list accelerator (its
        :func:`~cnnforge.hw.network.weight_memories`).
    data_bits : int
        Bits of a word: the widest memory word.
    """

    def __init__(self, memory, data_bits):
        self._memory, self._data_bits = memory, data_bits
        super().__init__({
            "en": wiring.Out(1),
            "memory": wiring.Out(memory),
            "addr": wiring.Out(16),
            "data": wiring.Out(data_bits),
        })

    @property
    def data_bits(self):
        return self._data_bits

    def __eq__(self, other):
        return (isinstance(other, ModelWriteSignature) and self.members == other.members)

    def __repr__(self):
        return f"ModelWriteSignature({self._memory!r}, {self._data_bits})"


def pack_fields(values, width):
    """``values`` as one word of ``width``-bit two's complement fields, element 0 lowest."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << width) - 1)) << (k * width)
    return word
