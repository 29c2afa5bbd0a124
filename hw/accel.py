"""The whole inference pipeline of the reference CNN as one stream block.

``pixels -> ConvEngine -> Requantize -> MaxPool -> DenseEngine -> (logits) -> Softmax -> results``

Every stage is a stream block, so stages overlap across images: while the dense engine works
on image *n* (from its ping-pong activation buffer), the convolution already runs image *n+1*.
Sustained cycles per image are therefore those of the slowest stage, not their sum.
"""

import numpy as np
from amaranth import *
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .slice import RegisterSlice
from .util import REPLICA, ModelWriteSignature, check_config, check_int, pack_fields
from .params import SoftmaxFormat, Widths
from .conv import ConvEngine, bias_shape, bias_words as conv_bias_words, weight_words as conv_weight_words
from .conv_window import WindowConvEngine
from .requant import Requantize
from .maxpool import MaxPool
from .dense import DenseEngine, weight_words as dense_weight_words
from .softmax import Softmax


__all__ = ["Accelerator", "ResultLayout", "Parallelism", "PRESETS", "ModelMemory", "model_bits",
           "model_writes", "model_word_bits"]


class ModelMemory(enum.Enum, shape=3):
    """The accelerator's writable model memories (``mw.memory``)."""
    CONV_W = 0        # ConvEngine weight words (see hw/conv.py: weight_words)
    CONV_B = 1        # ConvEngine bias words (hw/conv.py: bias_words)
    REQUANT_MULT = 2  # per-filter requantization multipliers
    DENSE_W = 3       # DenseEngine weight words (hw/dense.py: weight_words)
    DENSE_B = 4       # dense biases, one per class


def model_writes(model, parallelism, memories=tuple(ModelMemory)):
    """``[(ModelMemory, address, word)]``: every model word for the write port, raw bits.

    Writing them all loads ``model`` into an accelerator built for ``model.config`` and
    ``parallelism`` (same widths, ``requant_shift`` and softmax constants, which are built in).
    """
    config, par = model.config, parallelism
    widths = Widths(config)
    writes = []
    if ModelMemory.CONV_W in memories:
        writes += [(ModelMemory.CONV_W, a, pack_fields(w, 8)) for a, w in
                   enumerate(conv_weight_words(config, par.conv_lanes, model.conv_w))]
    if ModelMemory.CONV_B in memories:
        writes += [(ModelMemory.CONV_B, a, pack_fields(b, widths.conv_bias)) for a, b in
                   enumerate(conv_bias_words(config, par.conv_lanes, model.conv_b))]
    if ModelMemory.REQUANT_MULT in memories:
        writes += [(ModelMemory.REQUANT_MULT, f, int(v))
                   for f, v in enumerate(np.asarray(model.requant_mult))]
    if ModelMemory.DENSE_W in memories:
        writes += [(ModelMemory.DENSE_W, a, pack_fields(w, 8)) for a, w in
                   enumerate(dense_weight_words(config, par.dense_mults, model.dense_w))]
    if ModelMemory.DENSE_B in memories:
        writes += [(ModelMemory.DENSE_B, k, int(b) & ((1 << widths.dense_bias) - 1))
                   for k, b in enumerate(np.asarray(model.dense_b))]
    return writes


#: Block RAM of the largest FPGA a board here carries (LFE5U-85F: 208 EBR of 18 Kbit); no
#: network whose model needs more is generated.
LARGEST_DEVICE_MEMORY_BITS = 208 * 18 * 1024


def model_bits(config):
    """Bits of the model an accelerator for ``config`` holds: int8 weights, biases and the
    uint16 requantization multipliers."""
    w = Widths(config)
    return (config.filters * (config.taps * 8 + w.conv_bias + w.requant_mult)
            + config.classes * (config.features * 8 + w.dense_bias))


def model_word_bits(config, parallelism):
    """Bits of a word on the model write port (``mw_data``) of an accelerator built for
    ``config`` and ``parallelism``: the widest word of :func:`model_writes` (conv weights
    ``8 * conv_lanes``, conv biases ``conv_bias`` times the biases per word of
    :func:`~cnnforge.hw.conv.bias_shape`, a requantization multiplier, dense weights
    ``8 * dense_mults``, a dense bias). The accelerator's port and the on-chip trainer's
    (:class:`~cnnforge.hw.train.Trainer`) have this width."""
    widths = Widths(config)
    per_bias_word = bias_shape(parallelism.conv_lanes, config.taps)[1]
    return max(8 * parallelism.conv_lanes, widths.conv_bias * per_bias_word,
               widths.requant_mult, 8 * parallelism.dense_mults, widths.dense_bias)


def ResultLayout(config):
    """Payload of the result stream: ``classes`` beats per image, beat ``k`` for class ``k``."""
    widths = Widths(config)
    return data.StructLayout({
        "logit": signed(widths.dense_acc),
        "prob": unsigned(SoftmaxFormat.prob_bits),
        "cls": unsigned(widths.class_index),
    })


class Parallelism:
    """How many multipliers each stage gets.

    Parameters
    ----------
    conv_lanes : int
        Filters computed in parallel by the convolution.
    conv_window : bool
        ``False``: :class:`~cnnforge.hw.conv.ConvEngine`, one tap per cycle and lane
        (``conv_lanes`` multipliers). ``True``:
        :class:`~cnnforge.hw.conv_window.WindowConvEngine`, the whole KxK window per cycle
        (``conv_lanes * taps`` multipliers).
    requant_parallel : int
        Requantization multipliers (``conv_lanes`` must be a multiple).
    dense_mults : int
        Dense-layer multipliers (``features`` must be a multiple).
    target : str
        ``"generic"``, ``"ice40"`` (dual 8x8 SB_MAC16 for the convolution) or ``"ecp5"``.
    dense_buffer : bool or None
        The dense engine with its ping-pong activation buffer (it starts an image after its
        last pooled beat) or consuming the pooled stream as it comes (an image's logits are
        ready soon after its last pooled beat: a training step's forward pass is shorter);
        see :class:`~cnnforge.hw.dense.DenseEngine`. ``None``: without the buffer on
        ``target="ice40"``, with it otherwise.
    pipeline : str
        ``"standard"`` or ``"deep"``: for fast clocks on LUT fabric, the window convolution's
        and the dense engine's MAC arrays with split products and their sums registered every
        two adder levels (``MACArray(sum_levels=2)``), 4-bit multiplier digits in the
        requantization, which never stalls (an output FIFO with credit counting: no
        pipeline-wide enable), register slices (:class:`~cnnforge.hw.slice.RegisterSlice`) on
        the pixel input, between convolution and requantization, between requantization and
        max-pool and on the result output, and the model write port registered (writes land a
        cycle later). Costs latency and registers, not throughput; results are the same. The
        deep pipeline also pipelines the softmax's exp step (about 210 cycles less from an
        image's last logit to its first probability: a training step starts with it).
    grad_lanes : int
        Pooled features per cycle in the on-chip trainer's conv-gradient phase (see
        :class:`~cnnforge.hw.train.Trainer`); only a :class:`~cnnforge.hw.train.TrainingAccelerator`
        uses it.

    Raises
    ------
    TypeError
        If a count is not an integer or ``conv_window``/``dense_buffer`` is not a bool.
    ValueError
        If a count is below 1, or ``target`` or ``pipeline`` is unknown. Whether the counts
        fit a network is :meth:`check`'s question.
    """

    PIPELINES = ("standard", "deep")

    def __init__(self, *, conv_lanes, requant_parallel, dense_mults, target="generic",
                 conv_window=False, dense_buffer=None, pipeline="standard", grad_lanes=1):
        self.conv_lanes = check_int("conv_lanes", conv_lanes, 1)
        if not isinstance(conv_window, bool):
            raise TypeError(f"conv_window must be a bool, not {conv_window!r}")
        self.conv_window = conv_window
        self.requant_parallel = check_int("requant_parallel", requant_parallel, 1)
        self.dense_mults = check_int("dense_mults", dense_mults, 1)
        if target not in ("generic", "ice40", "ecp5"):
            raise ValueError(f"target must be 'generic', 'ice40' or 'ecp5', not {target!r}")
        self.target = target
        if dense_buffer is None:
            dense_buffer = target != "ice40"
        if not isinstance(dense_buffer, bool):
            raise TypeError(f"dense_buffer must be a bool or None, not {dense_buffer!r}")
        self.dense_buffer = dense_buffer
        if pipeline not in self.PIPELINES:
            raise ValueError(f"pipeline must be 'standard' or 'deep', not {pipeline!r}")
        self.pipeline = pipeline
        self.grad_lanes = check_int("grad_lanes", grad_lanes, 1)

    def check(self, config, *, training=False):
        """``self`` if the engines take these counts for ``config``; ValueError naming the
        field otherwise.

        The constructors of :class:`~cnnforge.hw.conv.ConvEngine` /
        :class:`~cnnforge.hw.conv_window.WindowConvEngine`,
        :class:`~cnnforge.hw.requant.Requantize`, :class:`~cnnforge.hw.maxpool.MaxPool` and
        :class:`~cnnforge.hw.dense.DenseEngine` (and, with ``training``,
        :class:`~cnnforge.hw.train.Trainer`) ask the same of their parameters; here the
        questions are put in terms of this class's fields, before any engine is built.
        :class:`Accelerator` calls it first.

        Parameters
        ----------
        config : NetworkConfig
        training : bool
            Also the on-chip trainer's conditions (``grad_lanes``, at least two dense steps
            and two conv taps).

        Raises
        ------
        TypeError
            If ``config`` is not a :class:`~cnnforge.hw.params.NetworkConfig`.
        ValueError
            If a count does not fit ``config`` or the other counts.
        """
        config = check_config(config)
        bits = model_bits(config)
        if bits > LARGEST_DEVICE_MEMORY_BITS:
            raise ValueError(f"the model needs {bits:,} bits of on-chip memory, more than the "
                             f"largest supported FPGA has ({LARGEST_DEVICE_MEMORY_BITS:,} bits of "
                             f"block RAM in an ECP5-85F)")
        filters, features = config.filters, config.features
        lanes, mults = self.conv_lanes, self.dense_mults
        if filters % lanes:
            raise ValueError(f"conv_lanes must divide filters ({filters}), not {lanes!r}")
        if lanes % self.requant_parallel:
            raise ValueError(f"requant_parallel must divide conv_lanes ({lanes}), not "
                             f"{self.requant_parallel!r}")
        if features % mults:
            raise ValueError(f"dense_mults must divide features ({features}), not {mults!r}")
        if mults % lanes and lanes % mults:
            raise ValueError(f"dense_mults must divide or be a multiple of conv_lanes "
                             f"({lanes}), not {mults!r}")
        if self.target == "ice40":
            # The dense weights in SPRAM: 16-bit blocks of 16384 words.
            if mults % 2:
                raise ValueError(f"dense_mults must be even with target 'ice40' (16-bit SPRAM "
                                 f"words), not {mults!r}")
            if config.classes * (features // mults) > 16384:
                least = -(-config.classes * features // 16384)
                raise ValueError(f"dense_mults must be at least {least} with target 'ice40' "
                                 f"(the weights in 16384 SPRAM words), not {mults!r}")
        if training:
            grad = self.grad_lanes
            if lanes % grad or mults % grad or filters % (2 * grad):
                raise ValueError(f"grad_lanes must divide conv_lanes ({lanes}), dense_mults "
                                 f"({mults}) and filters // 2 ({filters // 2}), not {grad!r}")
            if features // mults < 2:
                raise ValueError(f"dense_mults must divide features ({features}) at least "
                                 f"twice for training, not {mults!r}")
            if config.taps < 2:
                raise ValueError(f"training needs at least 2 conv taps, not {config.taps!r}")
        return self

    @property
    def sum_levels(self):
        """The MAC arrays' ``sum_levels`` (window convolution and dense engine)."""
        return 2 if self.pipeline == "deep" else None

    @property
    def mac_target(self):
        """The convolution's :class:`~cnnforge.hw.mac.MACArray` target: its products in SB_MAC16
        (``"ice40"``) or MULT18X18D (``"ecp5"``, board builds only: behavioural in simulation)."""
        return self.target

    def conv_multipliers(self, config):
        """int8 multipliers of the convolution for ``config``: one per lane, ``taps`` per lane
        with the window engine."""
        return self.conv_lanes * (config.taps if self.conv_window else 1)

    def multipliers(self, config):
        """int8 multipliers of the convolution and dense engines for ``config``."""
        return self.conv_multipliers(config) + self.dense_mults

    def to_dict(self):
        return {"conv_lanes": self.conv_lanes, "conv_window": self.conv_window,
                "requant_parallel": self.requant_parallel, "dense_mults": self.dense_mults,
                "target": self.target, "dense_buffer": self.dense_buffer,
                "pipeline": self.pipeline, "grad_lanes": self.grad_lanes}


#: Named configurations (cycles per image: :attr:`Accelerator.stage_cycles`; build figures:
#: README, "Boards"):
#:
#: * ``up5k``: 4 conv lanes (2 dual 8x8 SB_MAC16; the convolution is the slowest stage), one
#:   requantization multiplier (SB_MAC16) and a 4-wide dense engine (2 SB_MAC16, weights in
#:   two SPRAMs) that consumes the pooled stream without an activation buffer. 8 conv lanes
#:   would take all 8 SB_MAC16 and more logic cells than the device's 5,280.
#: * ``ecp5-85f``: the window engine (16 lanes x 9 taps = 144 multipliers) with a 32-wide
#:   dense engine (the slowest stage) that takes the pooled stream as it comes (two beats per
#:   group: an image's logits follow its last pooled beat closely, so a training step's forward
#:   pass is shorter than with the activation buffer), all products in LUTs
#:   (``target="generic"``, built ``-nodsp``) and the deep pipeline. The 144 products do not
#:   go into MULT18X18D (``target="ecp5"``, 144 of the 156): placed there they leave the
#:   clock out of reach and the routing congested.
#: * ``ecp5-25f``: tap-serial, its 16 conv products in MULT18X18D (16 of 28), and 2
#:   requantization multipliers (fewer cycles per image than the convolution's).
#: * ``gw2a-18``: ``ecp5-25f``'s shape with portable products (``target="generic"``), which
#:   ``synth_gowin`` puts into the GW2A's DSP blocks.
#: * ``gw1n-9``: ``up5k``'s shape with portable products, for the GW1NR-9 (the Tang Nano 9K,
#:   whose block RAM cannot hold the seed's dense weights: its builds take a smaller network
#:   on the folded layer-list accelerator, 8 multipliers:
#:   :data:`~cnnforge.hw.network.FOLDED_PRESETS`).
PRESETS = {
    "up5k": Parallelism(conv_lanes=4, requant_parallel=1, dense_mults=4, target="ice40",
                        grad_lanes=4),
    "ecp5-25f": Parallelism(conv_lanes=16, requant_parallel=2, dense_mults=8, target="ecp5",
                            grad_lanes=4),
    "ecp5-85f": Parallelism(conv_lanes=16, conv_window=True, requant_parallel=16,
                            dense_mults=32, target="generic", dense_buffer=False,
                            pipeline="deep", grad_lanes=16),
    "gw2a-18": Parallelism(conv_lanes=16, requant_parallel=2, dense_mults=8, target="generic",
                           grad_lanes=4),
    "gw1n-9": Parallelism(conv_lanes=4, requant_parallel=1, dense_mults=4, target="generic",
                          grad_lanes=4),
}


class Accelerator(wiring.Component):
    """Raw pixels in, logits / probabilities / class out.

    Parameters
    ----------
    model : :class:`cnnforge.hw.model.QuantModel`
        The integer network; its tensors initialize the weight memories.
    parallelism : :class:`Parallelism`

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(unsigned(8), in_channels)))``
        Pixels of consecutive images in raster order.
    o : ``Out(stream.Signature(ResultLayout(config)))``
        ``classes`` beats per image: logit ``k``, probability ``k`` (Q15) and the class.
    mw : ``In(ModelWriteSignature(ModelMemory, mw_data_bits))``
        Model write port: one word per cycle with ``mw.en`` to ``mw.memory`` at ``mw.addr``, in
        the formats of :func:`model_writes`. Conv weights and biases are double-banked and switch between
        images (see :class:`~cnnforge.hw.conv.ConvEngine`); the other memories take effect at
        once, so write them while no image is in flight. With ``target="ice40"`` the dense
        weights live in SPRAM, which starts empty: write them before the first image.
    pool_valid : ``Out(1)``, pool_value : ``Out(data.ArrayLayout(unsigned(8), conv_lanes))``,
    pool_argmax : ``Out(data.ArrayLayout(unsigned(pool_index), conv_lanes))``
        Observation tap of the MaxPool output (for the trainer, :mod:`cnnforge.hw.train`):
        ``pool_valid`` is high in the cycle a pooled beat transfers into the dense engine, with
        its values and argmax positions (beats in the golden flatten order ``(y, x, c)``).
        Unused outputs cost nothing after synthesis.

    Raises
    ------
    TypeError
        If ``parallelism`` is not a :class:`Parallelism`.
    ValueError
        If ``parallelism`` does not fit ``model.config`` (:meth:`Parallelism.check`), or a
        model constant is out of its engine's range.
    """

    def __init__(self, model, parallelism):
        self._model = model
        if not isinstance(parallelism, Parallelism):
            raise TypeError(f"parallelism must be a Parallelism, not {parallelism!r}")
        # Counts the engines below would reject fail here, named as Parallelism fields.
        self._par = par = parallelism.check(model.config)
        config = model.config
        widths = Widths(config)
        deep = par.pipeline == "deep"
        engine = WindowConvEngine if par.conv_window else ConvEngine
        extra = {"sum_levels": par.sum_levels} if par.conv_window else {}
        self._conv = engine(config, lanes=par.conv_lanes, conv_w=model.conv_w,
                            conv_b=model.conv_b, target=par.mac_target, **extra)
        self._requant = Requantize(
            config, lanes=par.conv_lanes, requant_mult=model.requant_mult,
            requant_shift=model.requant_shift, parallel=par.requant_parallel,
            # iCE40: whole products, which ice40_dsp maps onto SB_MAC16 (boards/build.py);
            # deep pipeline: 4-bit digits (short LUT multipliers, one more partial product).
            digit=(widths.requant_mult if par.target == "ice40" else 4 if deep else None),
            stall_free=deep)
        self._pool = MaxPool(config, lanes=par.conv_lanes)
        self._dense = DenseEngine(config, in_lanes=par.conv_lanes, mults=par.dense_mults,
                                  dense_w=model.dense_w, dense_b=model.dense_b,
                                  target=par.target, buffer=par.dense_buffer,
                                  sum_levels=par.sum_levels)
        self._softmax = Softmax(config, softmax_mult=model.softmax_mult,
                                softmax_shift=model.softmax_shift, pipelined_exp=deep,
                                # (the UP5K has block RAM to spare, not logic)
                                tables_in_block_ram=par.target == "ice40")
        self.mw_data_bits = model_word_bits(config, par)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), config.in_channels))),
            "o": Out(stream.Signature(ResultLayout(config))),
            "mw": In(ModelWriteSignature(ModelMemory, self.mw_data_bits)),
            "pool_valid": Out(1),
            "pool_value": Out(data.ArrayLayout(unsigned(8), par.conv_lanes)),
            "pool_argmax": Out(data.ArrayLayout(unsigned(widths.pool_index), par.conv_lanes)),
        })

    @property
    def stage_cycles(self):
        """``{stage: cycles}``: the sustained cycles per image of the convolution, the
        requantization and the dense layer, as their engines report them. (The max-pool takes a
        beat per cycle, as the convolution offers them at most; the softmax's few hundred cycles
        per image are in :class:`~cnnforge.hw.softmax.Softmax`.)"""
        return {"conv": self._conv.cycles_per_image,
                "requant": self._requant.cycles_per_image,
                "dense": self._dense.cycles_per_image}

    @property
    def cycles_per_image(self):
        """Sustained cycles per image, back to back: the slowest stage's (the stages overlap
        across images)."""
        return max(self.stage_cycles.values())

    def elaborate(self, platform):
        m = Module()
        config = self._model.config
        deep = self._par.pipeline == "deep"
        m.submodules.conv = conv = self._conv
        m.submodules.requant = requant = self._requant
        m.submodules.pool = pool = self._pool
        m.submodules.dense = dense = self._dense
        m.submodules.softmax = softmax = self._softmax

        if deep:
            # The model write port registered once, with a copy of the registers for each
            # memory (they sit all over the device): the memory select is decoded before the
            # register, and each copy is placed near its memory (a decoded enable shared by
            # all memories would reach across the die).
            def port(memory):
                name = memory.name.lower()
                en = Signal(name=f"mw_{name}_en")
                addr = Signal.like(self.mw.addr, name=f"mw_{name}_addr", reset_less=True,
                                   attrs={REPLICA: 1})
                word = Signal.like(self.mw.data, name=f"mw_{name}_data", reset_less=True,
                                   attrs={REPLICA: 1})
                m.d.sync += [en.eq(self.mw.en & (self.mw.memory == memory)),
                             addr.eq(self.mw.addr), word.eq(self.mw.data)]
                return en, addr, word
        else:
            def port(memory):
                return self.mw.en & (self.mw.memory == memory), self.mw.addr, self.mw.data

        for memory, (en, addr, word) in [
                (ModelMemory.CONV_W, (conv.w_en, conv.w_addr, conv.w_data)),
                (ModelMemory.CONV_B, (conv.b_en, conv.b_addr, conv.b_data)),
                (ModelMemory.REQUANT_MULT, (requant.mult_en, requant.mult_addr,
                                            requant.mult_data)),
                (ModelMemory.DENSE_W, (dense.w_en, dense.w_addr, dense.w_data)),
                (ModelMemory.DENSE_B, (dense.b_en, dense.b_addr, dense.b_data))]:
            w_en, w_addr, w_word = port(memory)
            m.d.comb += [en.eq(w_en), addr.eq(w_addr), word.eq(w_word)]

        if deep:
            # Register slices: the pixel handshake (from the host link) and the chain of
            # pipeline-wide advance signals dense -> pool -> requant -> conv cut by flip-flops
            # (the blocks sit far apart on the device).
            m.submodules.pixel_slice = pixel_slice = RegisterSlice(self.i.payload.shape())
            m.submodules.acc_slice = acc_slice = RegisterSlice(conv.o.payload.shape())
            m.submodules.act_slice = act_slice = RegisterSlice(requant.o.payload.shape())
            wiring.connect(m, wiring.flipped(self.i), pixel_slice=pixel_slice.i)
            wiring.connect(m, pixel_slice=pixel_slice.o, conv=conv.i)
            wiring.connect(m, conv=conv.o, acc_slice=acc_slice.i)
            wiring.connect(m, acc_slice=acc_slice.o, requant=requant.i)
            wiring.connect(m, requant=requant.o, act_slice=act_slice.i)
            wiring.connect(m, act_slice=act_slice.o, pool=pool.i)
        else:
            wiring.connect(m, wiring.flipped(self.i), conv.i)
            wiring.connect(m, conv=conv.o, requant=requant.i)
            wiring.connect(m, requant=requant.o, pool=pool.i)
        # Inference does not need the pool's argmax positions (training does): pass the values.
        m.d.comb += [
            dense.i.payload.eq(pool.o.payload.value),
            dense.i.valid.eq(pool.o.valid),
            pool.o.ready.eq(dense.i.ready),
            self.pool_valid.eq(pool.o.valid & dense.i.ready),
            self.pool_value.eq(pool.o.payload.value),
            self.pool_argmax.eq(pool.o.payload.argmax),
        ]

        # The logits go both to the softmax and, through a FIFO, to the result stream; the
        # softmax holds an image's logits before it answers, so the FIFO needs `classes` places.
        m.submodules.logits = logits = SyncFIFOBuffered(width=Widths(config).dense_acc,
                                                        depth=2 * config.classes)
        m.d.comb += [
            softmax.i.payload.eq(dense.o.payload),
            logits.w_data.eq(dense.o.payload),
            softmax.i.valid.eq(dense.o.valid & logits.w_rdy),
            logits.w_en.eq(dense.o.valid & softmax.i.ready),
            dense.o.ready.eq(softmax.i.ready & logits.w_rdy),
        ]
        if deep:
            # The result stream's consumer (the board's host link) sits elsewhere on the device:
            # a register slice keeps its ready flag from reaching the logits FIFO and the
            # softmax output across the die.
            m.submodules.result_slice = result_slice = RegisterSlice(self.o.payload.shape())
            result = result_slice.i
            wiring.connect(m, result_slice=result_slice.o, o=wiring.flipped(self.o))
        else:
            result = self.o
        m.d.comb += [
            result.payload.logit.eq(logits.r_data),
            result.payload.prob.eq(softmax.o.payload.prob),
            result.payload.cls.eq(softmax.o.payload.cls),
            result.valid.eq(softmax.o.valid & logits.r_rdy),
            softmax.o.ready.eq(result.ready & logits.r_rdy),
            logits.r_en.eq(result.ready & softmax.o.valid),
        ]
        return m
