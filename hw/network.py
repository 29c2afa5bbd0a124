"""Accelerators for layer-list networks (:class:`~cnnforge.hw.params.Network`): a dataflow chain
of one engine per layer, every engine a stream block, so that layers overlap across images.

``pixels -> [Border] -> ConvEngine -> Requantize -> [Border] -> [MaxPool] -> [Gather] -> ...
-> DenseEngine -> [Requantize -> DenseEngine ...] -> Softmax -> results``

:func:`stages` turns a network into the engines' geometries (:class:`ConvStage`,
:class:`DenseStage`); :class:`LayerParallelism` says how many multipliers each layer gets
(:meth:`LayerParallelism.balanced` chooses them from a budget); :func:`weight_memories` lists
the model memories as data, the one list from which the write port's addresses, the words
(:func:`network_writes`) and the engines' memories derive.
"""

from dataclasses import dataclass

import numpy as np
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .conv import ConvEngine, bias_shape, bias_words as conv_bias_words, weight_words as conv_weight_words
from .folded import FoldedAccelerator, FoldedMapping, folded_memories, folded_writes
from .dense import DenseEngine, weight_words as dense_weight_words
from .maxpool import MaxPool
from .model import QuantNetwork
from .params import ConfigError, Conv2D, Dense, Flatten, MaxPool as MaxPoolLayer, Network, \
    SoftmaxFormat, StageConfig, Widths, unsigned_bits
from .reshape import Border, Gather
from .requant import Requantize
from .slice import RegisterSlice
from .softmax import Softmax
from .util import REPLICA, ModelWriteSignature, check_int, pack_fields


__all__ = ["ConvStage", "DenseStage", "stages", "LayerParallelism", "MULTIPLIER_BUDGETS",
           "FOLDED_PRESETS", "DEEP_MAX_WEIGHT_WORDS", "preset_parallelism", "WeightMemory",
           "weight_memories", "network_writes", "NetworkResultLayout", "NetworkAccelerator"]


# -- The network as engine geometries --------------------------------------------------------------

@dataclass(frozen=True)
class ConvStage:
    """A conv layer (and the max-pool that follows it, if any) as the engines see them.

    ``border``: ``(top, left, bottom, right)`` zero rows/columns added to (negative: cut from)
    the ``in_size`` x ``in_size`` input so that the conv engine's windows end on its last
    pixel; ``conv``: the engine's :class:`StageConfig`; ``pool_border`` and ``pool``: the same
    for the max-pool (``None`` without one).
    """
    index: int
    in_size: int
    border: tuple
    conv: StageConfig
    pool_index: object = None
    pool_border: object = None
    pool: object = None

    @property
    def out_size(self):
        """Side of the map this stage sends on (pooled, if it pools)."""
        return self.pool.pool_size if self.pool is not None else self.conv.conv_size

    @property
    def channels(self):
        return self.conv.filters


@dataclass(frozen=True)
class DenseStage:
    """A dense layer: ``dense`` is the engine's :class:`StageConfig` (``features`` in,
    ``classes`` = units out); ``requant``, for a hidden layer, its requantization's."""
    index: int
    dense: StageConfig
    requant: object = None


def _why_not(index, layer, what):
    return ConfigError(f"network: layer {index} ({layer.kind}): the accelerator's RTL {what}")


def stages(network):
    """The engine geometries of ``network``: a list of :class:`ConvStage` and
    :class:`DenseStage` in order. :class:`ConfigError` naming the layer for what the RTL does
    not build (yet): non-square feature maps, a max-pool whose stride is not its size or that
    does not follow a convolution."""
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, not {network!r}")
    out = []
    layers = network.layers
    i = 0
    while i < len(layers):
        layer = layers[i]
        shape = network.input_shape(i)
        if isinstance(layer, Conv2D):
            h, w, c = shape
            if h != w:
                raise _why_not(i, layer, f"takes square feature maps, not {h}x{w}")
            top, left, bottom, right = layer.pads(h, w)
            if top + bottom != left + right:
                raise _why_not(i, layer, f"takes square padded maps, not padding "
                                         f"{(top, left, bottom, right)}")
            side = network.output_shape(i)[0]
            used = (side - 1) * layer.stride + layer.kernel
            border = (top, left, used - h - top, used - w - left)
            conv = StageConfig(input_size=used, in_channels=c, filters=layer.filters,
                               kernel=layer.kernel, stride=layer.stride)
            stage = ConvStage(index=i, in_size=h, border=border, conv=conv)
            if i + 1 < len(layers) and isinstance(layers[i + 1], MaxPoolLayer):
                pool = layers[i + 1]
                if pool.stride != pool.size:
                    raise _why_not(i + 1, pool, f"pools windows that tile the map (stride = size), "
                                                f"not size {pool.size} stride {pool.stride}")
                kept = network.output_shape(i + 1)[0] * pool.size
                stage = ConvStage(index=i, in_size=h, border=border, conv=conv, pool_index=i + 1,
                                  pool_border=(0, 0, kept - side, kept - side),
                                  pool=StageConfig(input_size=kept, filters=layer.filters,
                                                   pool=pool.size))
                i += 1
            out.append(stage)
        elif isinstance(layer, MaxPoolLayer):
            raise _why_not(i, layer, "pools right after a convolution only")
        elif isinstance(layer, Dense):
            prev = out[-1] if out else None
            if isinstance(prev, ConvStage):
                side, filters = prev.out_size, prev.channels
            else:
                side, filters = 1, shape[0]
            dense = StageConfig(input_size=side, filters=filters, classes=layer.units)
            requant = None
            if layer.relu:
                requant = StageConfig(in_channels=shape[0], filters=layer.units)
            out.append(DenseStage(index=i, dense=dense, requant=requant))
        elif not isinstance(layer, Flatten):
            raise _why_not(i, layer, "does not build this layer")
        i += 1
    return out


# -- Parallelism ------------------------------------------------------------------------------------

def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


class LayerParallelism:
    """Multipliers per layer of a layer-list accelerator.

    Parameters
    ----------
    network : Network
    lanes : dict
        For every conv and dense layer index: for a conv layer its lanes (filters computed in
        parallel; must divide the filters) or ``(lanes, channels)`` (and input channels
        multiplied per cycle and lane; must divide the input channels; default 1:
        ``lanes * channels`` multipliers); for a dense layer its multipliers (must divide the
        fan-in, and divide or be a multiple of the lanes of the layer before it).
    target : str
        ``"generic"`` or ``"ecp5"`` (plain products; the board build decides LUTs or DSPs).
    pipeline : str
        ``"standard"`` or ``"deep"`` (for fast clocks on LUT fabric, as
        :class:`~cnnforge.hw.accel.Parallelism`'s): register slices between the engines and on
        the input and result streams, requantizations that never stall with 4-bit multiplier
        digits, the dense engines' sums registered every two adder levels, the softmax's exp
        step pipelined and the model write port registered per memory (writes land a cycle
        later). Costs latency and registers, not throughput; results are the same.

    Raises
    ------
    ConfigError
        For a count that does not fit its layer, naming the layer.
    """

    TARGETS = ("generic", "ecp5")

    #: :meth:`balanced` takes a plan this much slower than the fastest if it needs fewer
    #: multipliers.
    SLACK = 0.05

    PIPELINES = ("standard", "deep")

    def __init__(self, network, lanes, *, target="generic", pipeline="standard"):
        self._stages = stages(network)
        self._network = network
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {', '.join(map(repr, self.TARGETS))}, "
                             f"not {target!r}")
        self.target = target
        if pipeline not in self.PIPELINES:
            raise ValueError(f"pipeline must be 'standard' or 'deep', not {pipeline!r}")
        self.pipeline = pipeline
        if not isinstance(lanes, dict):
            raise TypeError(f"lanes must be a dict {{layer index: count}}, not {lanes!r}")
        wanted = {s.index for s in self._stages}
        unknown = sorted(set(lanes) - wanted)
        if unknown:
            raise ConfigError(f"parallelism: layer {unknown[0]} has no multipliers to set "
                              f"(conv and dense layers: {sorted(wanted)})")
        self.lanes = {}
        self.channels = {}
        before = None
        for stage in self._stages:
            layer = network.layers[stage.index]
            where = f"parallelism: layer {stage.index} ({layer.kind})"
            if stage.index not in lanes:
                raise ConfigError(f"{where}: no count given")
            value = lanes[stage.index]
            c = 1
            try:
                if isinstance(stage, ConvStage) and isinstance(value, (tuple, list)):
                    if len(value) != 2:
                        raise ValueError(f"give lanes or (lanes, channels), not {value!r}")
                    value, c = value
                    c = check_int("channels", c, 1)
                n = check_int("lanes", value, 1)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {e}") from None
            if isinstance(stage, ConvStage):
                if stage.conv.filters % n:
                    raise ConfigError(f"{where}: lanes must divide the filters "
                                      f"({stage.conv.filters}), not {n}")
                if stage.conv.in_channels % c:
                    raise ConfigError(f"{where}: channels must divide the input channels "
                                      f"({stage.conv.in_channels}), not {c}")
                self.channels[stage.index] = c
            else:
                fan_in = stage.dense.features
                if fan_in % n:
                    raise ConfigError(f"{where}: multipliers must divide the fan-in ({fan_in}), "
                                      f"not {n}")
                if n % before and before % n:
                    raise ConfigError(f"{where}: multipliers ({n}) and the {before} activations "
                                      f"per beat of the layer before must divide one another")
            self.lanes[stage.index] = n
            before = n if isinstance(stage, ConvStage) else 1

    @property
    def network(self):
        return self._network

    @property
    def stages(self):
        return self._stages

    def in_lanes(self, stage):
        """Activations per beat into ``stage``'s engine."""
        k = self._stages.index(stage)
        if k == 0:
            return self._network.input[2]
        prev = self._stages[k - 1]
        return self.lanes[prev.index] if isinstance(prev, ConvStage) else 1

    def requant_parallel(self, stage):
        """Requantization multipliers of a conv stage: the fewest that keep up with its engine
        (``lanes`` accumulators every ``taps // channels`` cycles)."""
        lanes = self.lanes[stage.index]
        steps = stage.conv.taps // self.channels[stage.index]
        return next(p for p in _divisors(lanes) if lanes // p <= steps)

    def stage_cycles(self):
        """``{layer index: cycles per image}`` of every stage's slowest engine."""
        cycles = {}
        for stage in self._stages:
            n = self.lanes[stage.index]
            if isinstance(stage, ConvStage):
                cycles[stage.index] = _conv_cycles(stage, n, self.channels[stage.index],
                                                   self.pipeline == "deep")
            else:
                cycles[stage.index] = stage.dense.classes * (stage.dense.features // n)
        return cycles

    @property
    def cycles_per_image(self):
        """Sustained cycles per image: the slowest stage's."""
        return max(self.stage_cycles().values())

    def layer_multipliers(self, index):
        """int8 multipliers of layer ``index``'s engine."""
        return self.lanes[index] * self.channels.get(index, 1)

    @property
    def multipliers(self):
        """int8 multipliers of the conv and dense engines."""
        return sum(self.layer_multipliers(i) for i in self.lanes)

    @classmethod
    def balanced(cls, network, multipliers, *, target="generic", pipeline="standard",
                 max_weight_words=None):
        """The parallelism with the fewest cycles per image (within :attr:`SLACK`, then the
        fewest multipliers) whose conv and dense engines use at most ``multipliers``
        multipliers: every layer gets the fewest that bring it under a common cycle count, the
        lowest count that fits the budget (at least one multiplier per layer, whatever the
        budget).

        ``max_weight_words``: no weight memory deeper than this many words (a conv layer's two
        banks counted), so that a weight read is one block RAM deep, with no multiplexer
        between the blocks' outputs and the multipliers (at 100 MHz on the ECP5 a block RAM's
        clock-to-output takes most of the cycle): such layers get more multipliers.
        """
        multipliers = check_int("multipliers", multipliers, 1)
        net_stages = stages(network)
        deepest = float("inf") if max_weight_words is None else \
            check_int("max_weight_words", max_weight_words, 1)

        def plan(limit):
            lanes, before = {}, None
            for stage in net_stages:
                if isinstance(stage, ConvStage):
                    conv = stage.conv
                    options = sorted(((n * c, -n), (n, c)) for n in _divisors(conv.filters)
                                     for c in _divisors(conv.in_channels)
                                     if _conv_cycles(stage, n, c) <= limit
                                     and 2 * conv.filters // n * conv.taps // c <= deepest)
                    n, c = options[0][1] if options else (conv.filters, conv.in_channels)
                    lanes[stage.index] = (n, c)
                    before = n
                    continue
                else:
                    fan_in = stage.dense.features
                    fits = [n for n in _divisors(fan_in) if not (n % before and before % n)]
                    options = [n for n in fits
                               if stage.dense.classes * (fan_in // n) <= min(limit, deepest)]
                    n = options[0] if options else fits[-1]
                    before = 1
                lanes[stage.index] = n
            return lanes

        def make(lanes):
            return cls(network, lanes, target=target, pipeline=pipeline)

        trials = [make(plan(float("inf")))]     # one multiplier per layer
        for limit in sorted({c for s in net_stages for c in _stage_cycle_options(s)}):
            trial = make(plan(limit))
            if trial.multipliers <= multipliers:
                trials.append(trial)
        # The fewest cycles, but not at any price: the divisors make the counts coarse (a
        # layer may need twice the multipliers for the last 2 %), so of the plans within
        # SLACK of the fastest the one with the fewest multipliers.
        fastest = min(t.cycles_per_image for t in trials)
        return min((t for t in trials if t.cycles_per_image <= fastest * (1 + cls.SLACK)),
                   key=lambda t: (t.multipliers, t.cycles_per_image))

    def to_dict(self):
        return {"lanes": {str(k): v for k, v in self.lanes.items()},
                "channels": {str(k): v for k, v in self.channels.items()}, "target": self.target,
                "pipeline": self.pipeline}


def _conv_cycles(stage, lanes, channels, deep=False):
    """Cycles per image of a conv stage's engine: its taps, or one cycle per (padded) input
    pixel if that is more (the deep pipeline's engine switches images in one more cycle)."""
    conv = stage.conv
    compute = (conv.conv_size ** 2 * (conv.taps // channels) * (conv.filters // lanes)
               + ConvEngine.SWITCH_CYCLES + deep)
    return max(compute, conv.input_size ** 2)


def _stage_cycle_options(stage):
    if isinstance(stage, ConvStage):
        return [_conv_cycles(stage, n, c) for n in _divisors(stage.conv.filters)
                for c in _divisors(stage.conv.in_channels)]
    d = stage.dense
    return [d.classes * (d.features // n) for n in _divisors(d.features)]


#: Multipliers a layer-list accelerator gets by default on each board configuration (the
#: preset names of :data:`cnnforge.hw.accel.PRESETS`): the multipliers the seed's presets use.
MULTIPLIER_BUDGETS = {"up5k": 16, "ecp5-25f": 28, "ecp5-85f": 160, "gw2a-18": 48,
                      "gw1n-9": 8}

#: Board configurations whose logic is too scarce for an engine per layer: every layer on one
#: MAC array (:class:`~cnnforge.hw.folded.FoldedMapping`), portable products (the ``up5k``
#: target builds it with SB_MAC16 and SPRAM).
FOLDED_PRESETS = ("gw1n-9",)


#: The deepest weight memory with the deep pipeline: one ECP5 DP16KD deep (2048 x 9), so that
#: no multiplexer sits between block RAM outputs and the multipliers' operand registers.
DEEP_MAX_WEIGHT_WORDS = 2048


def preset_parallelism(network, preset):
    """The :class:`LayerParallelism` of ``network`` on board configuration ``preset`` (a name of
    :data:`cnnforge.hw.accel.PRESETS`): its multiplier budget (:data:`MULTIPLIER_BUDGETS`)
    balanced over the layers, with its pipeline (``deep`` also bounds the weight memories'
    depth, :data:`DEEP_MAX_WEIGHT_WORDS`). What ``make bitstream`` builds and ``make sim-full``
    simulates. ``up5k``: the folded mapping (:class:`~cnnforge.hw.folded.FoldedMapping`, 8
    lanes of two pixels: the UP5K's eight SB_MAC16 and four SPRAMs); :data:`FOLDED_PRESETS` the
    same with portable products."""
    from .accel import PRESETS
    if PRESETS[preset].target == "ice40":
        return FoldedMapping(network, MULTIPLIER_BUDGETS[preset] // 2, target="ice40")
    if preset in FOLDED_PRESETS:
        return FoldedMapping(network, MULTIPLIER_BUDGETS[preset] // 2, target="generic")
    pipeline = PRESETS[preset].pipeline
    return LayerParallelism.balanced(
        network, MULTIPLIER_BUDGETS[preset], pipeline=pipeline,
        max_weight_words=DEEP_MAX_WEIGHT_WORDS if pipeline == "deep" else None)


# -- Model memories as data -------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightMemory:
    """One writable model memory: layer ``layer``'s ``kind`` (``"conv_w"``, ``"conv_b"``,
    ``"requant_mult"``, ``"dense_w"``, ``"dense_b"``), ``words`` words of ``bits`` bits."""
    layer: int
    kind: str
    words: int
    bits: int
    storage: str = "block RAM"

    @property
    def total_bits(self):
        return self.words * self.bits


def weight_memories(parallelism):
    """The model memories of an accelerator built with ``parallelism`` (a
    :class:`LayerParallelism` or a :class:`~cnnforge.hw.folded.FoldedMapping`), in write-port
    order (``mw.memory`` is the index in this list)."""
    if isinstance(parallelism, FoldedMapping):
        return folded_memories(parallelism)
    mems = []
    for stage in parallelism.stages:
        n = parallelism.lanes[stage.index]
        if isinstance(stage, ConvStage):
            conv = stage.conv
            widths = Widths(conv)
            groups = conv.filters // n
            c = parallelism.channels[stage.index]
            chunks, per = bias_shape(n, conv.taps // c)
            mems += [WeightMemory(stage.index, "conv_w", groups * (conv.taps // c), 8 * n * c),
                     WeightMemory(stage.index, "conv_b", groups * chunks, widths.conv_bias * per),
                     WeightMemory(stage.index, "requant_mult", conv.filters, widths.requant_mult)]
        else:
            dense = stage.dense
            widths = Widths(dense)
            mems += [WeightMemory(stage.index, "dense_w", dense.classes * (dense.features // n),
                                  8 * n),
                     WeightMemory(stage.index, "dense_b", dense.classes, widths.dense_bias)]
            if stage.requant is not None:
                mems.append(WeightMemory(stage.index, "requant_mult", dense.classes,
                                         Widths.requant_mult))
    return mems


def network_writes(qnet, parallelism):
    """``[(memory index, address, word)]``: every model word of ``qnet`` for the write port of an
    accelerator built with ``parallelism`` (raw bits, in :func:`weight_memories` order)."""
    if isinstance(parallelism, FoldedMapping):
        return folded_writes(qnet, parallelism)
    writes = []
    for index, mem in enumerate(weight_memories(parallelism)):
        p = qnet.layers[mem.layer]
        stage = next(s for s in parallelism.stages if s.index == mem.layer)
        n = parallelism.lanes[mem.layer]
        c = parallelism.channels.get(mem.layer, 1)
        if mem.kind == "conv_w":
            words = [pack_fields(w, 8) for w in conv_weight_words(stage.conv, n, p.w, c)]
        elif mem.kind == "conv_b":
            bits = Widths(stage.conv).conv_bias
            words = [pack_fields(b, bits) for b in conv_bias_words(stage.conv, n, p.b, c)]
        elif mem.kind == "requant_mult":
            words = [int(v) for v in np.asarray(p.mult)]
        elif mem.kind == "dense_w":
            words = [pack_fields(w, 8) for w in dense_weight_words(stage.dense, n, p.w)]
        else:
            mask = (1 << mem.bits) - 1
            words = [int(b) & mask for b in np.asarray(p.b)]
        writes += [(index, a, w) for a, w in enumerate(words)]
    return writes


def network_accelerator(qnet, parallelism):
    """The accelerator ``parallelism`` describes: a :class:`NetworkAccelerator` (dataflow
    chain, :class:`LayerParallelism`) or a :class:`~cnnforge.hw.folded.FoldedAccelerator`
    (:class:`~cnnforge.hw.folded.FoldedMapping`)."""
    if isinstance(parallelism, FoldedMapping):
        return FoldedAccelerator(qnet, parallelism)
    return NetworkAccelerator(qnet, parallelism)


# -- The accelerator --------------------------------------------------------------------------------

def NetworkResultLayout(network):
    """Payload of the result stream: ``classes`` beats per image, beat ``k`` for class ``k``
    (the layout of :func:`~cnnforge.hw.accel.ResultLayout` for the seed network)."""
    last = network.param_layers()[-1]
    return data.StructLayout({
        "logit": signed(network.layer_widths(last).acc),
        "prob": unsigned(SoftmaxFormat.prob_bits),
        "cls": unsigned(unsigned_bits(network.classes - 1)),
    })


class NetworkAccelerator(wiring.Component):
    """Raw pixels in, logits / probabilities / class out, for any layer list :func:`stages`
    takes: one engine per layer (a dataflow chain; layers overlap across images, so the
    sustained cycles per image are the slowest engine's, :attr:`cycles_per_image`).

    Parameters
    ----------
    qnet : :class:`~cnnforge.hw.model.QuantNetwork`
        The integer network; its tensors initialize the model memories.
    parallelism : :class:`LayerParallelism`
        For ``qnet.network``.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(unsigned(8), channels)))``
        Pixels of consecutive images in raster order.
    o : ``Out(stream.Signature(NetworkResultLayout(network)))``
        ``classes`` beats per image: logit ``k``, probability ``k`` (Q15) and the class.
    mw : ``In(ModelWriteSignature(range(len(memories)), mw_data_bits))``
        Model write port: a word of :func:`network_writes` per cycle with ``mw.en``, to memory
        :attr:`memories` ``[mw.memory]``. Conv weights and biases switch between images; the
        other memories take effect at once.
    """

    def __init__(self, qnet, parallelism):
        if not isinstance(qnet, QuantNetwork):
            raise TypeError(f"qnet must be a QuantNetwork, not {qnet!r}")
        if not isinstance(parallelism, LayerParallelism):
            raise TypeError(f"parallelism must be a LayerParallelism, not {parallelism!r}")
        if parallelism.network != qnet.network:
            raise ValueError("parallelism was made for another network")
        self._qnet, self._par = qnet, parallelism
        self.memories = weight_memories(parallelism)
        self.mw_data_bits = max(m.bits for m in self.memories)
        network = qnet.network
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), network.input[2]))),
            "o": Out(stream.Signature(NetworkResultLayout(network))),
            "mw": In(ModelWriteSignature(range(max(2, len(self.memories))), self.mw_data_bits)),
        })

    @property
    def network(self):
        return self._qnet.network

    @property
    def parallelism(self):
        return self._par

    @property
    def stage_cycles(self):
        return self._par.stage_cycles()

    @property
    def cycles_per_image(self):
        return self._par.cycles_per_image

    def elaborate(self, platform):
        m = Module()
        qnet, par = self._qnet, self._par
        deep = par.pipeline == "deep"
        ports = {}      # (layer, kind) -> (en, addr, data) of the engine

        def port(layer, kind, en, addr, word):
            ports[(layer, kind)] = (en, addr, word)

        def link(source, sink, name):
            """Connect two engines' streams (through a register slice in the deep pipeline: the
            engines sit apart on the device, and their handshakes would chain)."""
            if deep:
                cut = RegisterSlice(source.payload.shape())
                m.submodules[f"{name}_slice"] = cut
                wiring.connect(m, source, cut.i)
                source = cut.o
            wiring.connect(m, source, sink)

        source = wiring.flipped(self.i)     # the stream the next engine reads
        for k, stage in enumerate(par.stages):
            p = qnet.layers[stage.index]
            n = par.lanes[stage.index]
            name = f"layer{stage.index}"
            if isinstance(stage, ConvStage):
                conv_cfg = stage.conv
                top, left, bottom, right = stage.border
                if any(stage.border):
                    border = Border(source.payload.shape(), height=stage.in_size,
                                    width=stage.in_size, top=top, left=left, bottom=bottom,
                                    right=right)
                    m.submodules[f"{name}_border"] = border
                    link(source, border.i, f"{name}_border_in")
                    source = border.o
                conv = ConvEngine(conv_cfg, lanes=n, conv_w=p.w, conv_b=p.b,
                                  target=par.target, channels=par.channels[stage.index],
                                  read_stage=deep, sum_levels=2 if deep else None)
                m.submodules[f"{name}_conv"] = conv
                link(source, conv.i, f"{name}_conv_in")
                port(stage.index, "conv_w", conv.w_en, conv.w_addr, conv.w_data)
                port(stage.index, "conv_b", conv.b_en, conv.b_addr, conv.b_data)
                requant = Requantize(conv_cfg, lanes=n, requant_mult=p.mult,
                                     requant_shift=int(p.shift),
                                     parallel=par.requant_parallel(stage),
                                     digit=4 if deep else None, stall_free=deep)
                m.submodules[f"{name}_requant"] = requant
                link(conv.o, requant.i, f"{name}_requant_in")
                port(stage.index, "requant_mult", requant.mult_en, requant.mult_addr,
                     requant.mult_data)
                source = requant.o
                if stage.pool is not None:
                    if any(stage.pool_border):
                        crop = Border(source.payload.shape(), height=conv_cfg.conv_size,
                                      width=conv_cfg.conv_size, beats=conv_cfg.filters // n,
                                      bottom=stage.pool_border[2], right=stage.pool_border[3])
                        m.submodules[f"{name}_crop"] = crop
                        wiring.connect(m, source, crop.i)
                        source = crop.o
                    pool = MaxPool(stage.pool, lanes=n)
                    m.submodules[f"layer{stage.pool_index}_pool"] = pool
                    link(source, pool.i, f"layer{stage.pool_index}_pool_in")
                    # Inference takes the pooled values; the argmax positions are for training.
                    values = _Values(pool)
                    m.submodules[f"layer{stage.pool_index}_values"] = values
                    wiring.connect(m, pool.o, values.i)
                    source = values.o
                nxt = par.stages[k + 1] if k + 1 < len(par.stages) else None
                if isinstance(nxt, ConvStage) and conv_cfg.filters // n > 1:
                    gather = Gather(unsigned(8), lanes=n, count=conv_cfg.filters // n)
                    m.submodules[f"{name}_gather"] = gather
                    wiring.connect(m, source, gather.i)
                    source = gather.o
            else:
                dense_cfg = stage.dense
                dense = DenseEngine(dense_cfg, in_lanes=par.in_lanes(stage), mults=n,
                                    dense_w=p.w, dense_b=p.b, target="generic", buffer=True,
                                    sum_levels=2 if deep else None)
                m.submodules[f"{name}_dense"] = dense
                link(source, dense.i, f"{name}_dense_in")
                port(stage.index, "dense_w", dense.w_en, dense.w_addr, dense.w_data)
                port(stage.index, "dense_b", dense.b_en, dense.b_addr, dense.b_data)
                if stage.requant is not None:
                    requant = Requantize(stage.requant, lanes=1, requant_mult=p.mult,
                                         requant_shift=int(p.shift), parallel=1,
                                         digit=4 if deep else None, stall_free=deep)
                    m.submodules[f"{name}_requant"] = requant
                    m.d.comb += [
                        requant.i.payload[0].eq(dense.o.payload),
                        requant.i.valid.eq(dense.o.valid),
                        dense.o.ready.eq(requant.i.ready),
                    ]
                    port(stage.index, "requant_mult", requant.mult_en, requant.mult_addr,
                         requant.mult_data)
                    source = requant.o
                else:
                    source = dense.o

        # The model write port: memory `mw.memory` of the list, decoded here (in the deep
        # pipeline decoded before a register, with a copy of the registers per memory, placed
        # near it).
        for index, mem in enumerate(self.memories):
            en, addr, word = ports[(mem.layer, mem.kind)]
            if deep:
                name = f"mw_{index}"
                r_en = Signal(name=f"{name}_en")
                r_addr = Signal.like(self.mw.addr, name=f"{name}_addr", reset_less=True,
                                     attrs={REPLICA: 1})
                r_word = Signal.like(self.mw.data, name=f"{name}_data", reset_less=True,
                                     attrs={REPLICA: 1})
                m.d.sync += [r_en.eq(self.mw.en & (self.mw.memory == index)),
                             r_addr.eq(self.mw.addr), r_word.eq(self.mw.data)]
                m.d.comb += [en.eq(r_en), addr.eq(r_addr), word.eq(r_word)]
            else:
                m.d.comb += [
                    en.eq(self.mw.en & (self.mw.memory == index)),
                    addr.eq(self.mw.addr),
                    word.eq(self.mw.data),
                ]

        result_path(m, source, qnet, deep=deep, o=self.o)
        return m


def result_path(m, source, qnet, *, deep, o):
    """The softmax and the logits beside it (see hw/accel.py), from ``source`` (a stream of
    the last layer's sums, class 0 first) to the result stream ``o``; in the deep pipeline
    through a register slice."""
    last = qnet.network.param_layers()[-1]
    classes = qnet.network.classes
    cfg = StageConfig(input_size=1, filters=qnet.network.fan_in(last), classes=classes)
    m.submodules.softmax = softmax = Softmax(cfg, softmax_mult=int(qnet.softmax_mult),
                                             softmax_shift=int(qnet.softmax_shift),
                                             pipelined_exp=deep)
    acc_bits = qnet.network.layer_widths(last).acc
    m.submodules.logits = logits = SyncFIFOBuffered(width=acc_bits, depth=2 * classes)
    if deep:
        m.submodules.result_slice = result_slice = RegisterSlice(o.payload.shape())
        result = result_slice.i
        wiring.connect(m, result_slice.o, wiring.flipped(o))
    else:
        result = o
    m.d.comb += [
        softmax.i.payload.eq(source.payload),
        logits.w_data.eq(source.payload),
        softmax.i.valid.eq(source.valid & logits.w_rdy),
        logits.w_en.eq(source.valid & softmax.i.ready),
        source.ready.eq(softmax.i.ready & logits.w_rdy),
        result.payload.logit.eq(logits.r_data),
        result.payload.prob.eq(softmax.o.payload.prob),
        result.payload.cls.eq(softmax.o.payload.cls),
        result.valid.eq(softmax.o.valid & logits.r_rdy),
        softmax.o.ready.eq(result.ready & logits.r_rdy),
        logits.r_en.eq(result.ready & softmax.o.valid),
    ]
    return softmax, logits


class _Values(wiring.Component):
    """The values of a max-pool's output stream (its argmax positions dropped)."""

    def __init__(self, pool):
        self._lanes = pool.lanes
        super().__init__({
            "i": In(stream.Signature(pool.result_layout)),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(8), pool.lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [
            self.o.payload.eq(self.i.payload.value),
            self.o.valid.eq(self.i.valid),
            self.i.ready.eq(self.o.ready),
        ]
        return m
