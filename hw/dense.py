"""The dense (fully connected) layer: a wide dot-product lane, behind a ping-pong activation buffer or
fed straight from the pooled stream."""


import numpy as np
from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac import MACArray
from .util import (check_bias_array, check_choice, check_config, check_int, check_int8_array,
                   pack_fields)
from .params import Widths


__all__ = ["DenseEngine", "weight_words"]


def weight_words(config, mults, dense_w):
    """Weight memory words in write-port address order.

    Word ``k * steps + s`` (``steps = features // mults``) holds, in element ``j``, the weight
    of class ``k`` for feature ``s * mults + j`` (features in the golden flatten order
    ``(y, x, c)``). Returns a list of ``classes * steps`` lists of ``mults`` ints.
    """
    w = np.asarray(dense_w).astype(np.int64).reshape(config.classes, -1, mults)
    return [[int(v) for v in row] for row in w.reshape(-1, mults)]


#: Reads and writes of the activation buffer never touch the same word in the same cycle (the
#: writer fills one side, the reader drains the other), so no read-during-write emulation.
_NO_RW_CHECK = {"no_rw_check": 1}


class SPRAMWeights(wiring.Component):
    """The weight memory in iCE40 UP5K ``SB_SPRAM256KA`` blocks (16K x 16 bit, single port).

    ``width // 16`` blocks side by side. A write takes the port: the read issued in the same
    cycle is lost, so the engine never reads while ``w_en`` is high. SPRAM has no initial
    contents; the weights are written through the port after configuration.
    """

    def __init__(self, width, depth):
        if width % 16 or depth > 16384:
            raise ValueError(f"SPRAM weights need a multiple of 16 bits and <= 16384 words, "
                             f"not {width} x {depth}")
        self._width, self._depth = width, depth
        super().__init__({
            "r_addr": In(range(depth)), "r_data": Out(width),
            "w_en": In(1), "w_addr": In(range(depth)), "w_data": In(width),
        })

    def elaborate(self, platform):
        m = Module()
        addr = Signal(14)
        m.d.comb += addr.eq(Mux(self.w_en, self.w_addr, self.r_addr))
        for n in range(self._width // 16):
            m.submodules[f"spram{n}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=self.w_data[16 * n:16 * n + 16],
                i_MASKWREN=Const(0b1111, 4), i_WREN=self.w_en, i_CHIPSELECT=Const(1, 1),
                i_CLOCK=ClockSignal("sync"), i_STANDBY=Const(0, 1), i_SLEEP=Const(0, 1),
                i_POWEROFF=Const(1, 1),
                o_DATAOUT=self.r_data[16 * n:16 * n + 16],
            )
        return m


class DenseEngine(wiring.Component):
    """``logits[k] = dense_b[k] + sum_i act[i] * dense_w[k, i]`` for a stream of activations.

    Bit-identical to :func:`cnnforge.sim.reference.golden.dense`.

    The input is the MaxPool output: an image is ``features // in_lanes`` beats of ``in_lanes``
    uint8 activations, in the golden flatten order ``(y, x, c)`` (beat ``b`` holds features
    ``b*in_lanes ..``). Two architectures (``buffer``):

    *With the activation buffer* (``buffer=True``). Beats are written into one side of a
    ping-pong activation buffer while the dot products of the previous image are computed from
    the other side, so the layer overlaps the convolution of the next image and an image's
    buffer fill costs no time. The computation runs class by class: for class ``k`` the
    ``steps = features // mults`` groups of ``mults`` activations are multiplied by the matching
    weight words, one group per cycle, and summed into the single accumulator of a
    ``MACArray(lanes=1, taps=mults)``; the bias is added as the sum leaves the array, on its way
    into a small output FIFO. The MAC pipeline cannot stall, so a class is started only when a
    place in the FIFO is reserved for its result (credit counting; no combinational path from
    ``o.ready`` to the scheduler).

    *Without it* (``buffer=False``, the default for ``target="ice40"``). Each beat is multiplied
    as it arrives by the weights of every class: for class ``k`` its ``chunks = in_lanes //
    mults`` groups, one per cycle (weight word ``k * steps + b * chunks + j``), closed into one
    partial sum by the ``MACArray``; the partial sums of the ``classes`` classes wait in a
    ``classes``-word memory (read ahead, one cycle before the array delivers the next sum).
    An image's first beat starts each sum from the bias, its last beat sends the ``classes``
    logits to the output FIFO (``classes`` entries; that beat starts only when they all have a
    place). The beat is taken into a register, ``i.ready`` is that register's "empty" flag (a
    flip-flop: no combinational path through the upstream blocks' handshakes), at the cost of
    two idle cycles per beat (freed by its last step, refilled the cycle after). No activation
    memory at all; the engine takes a beat per ``classes * chunks + 2`` cycles, which must
    keep up with the producer (it backpressures otherwise). With more multipliers than input
    lanes (``gather = mults // in_lanes`` beats make one group of ``mults`` features, weight
    word ``k * steps + s`` for group ``s``), the beats go through an input FIFO of
    :attr:`in_fifo_depth` beats (two pooled rows: the pooled stream is bursty) into a gather
    register, and a full group moves into the compute register the cycle the previous one
    finishes: ``classes`` cycles per group, no idle cycle, the same throughput as the buffer
    (1,690 cycles per image at 32 multipliers) and an image's logits ``classes`` cycles plus
    the pipeline after its last group.

    Weight and bias write ports
    ---------------------------
    The weight memory holds ``classes * steps`` words of ``mults`` int8 weights, see
    :func:`weight_words` (the same layout for both architectures): address ``k * steps + s``,
    element ``j`` is the weight of class ``k`` for feature ``s * mults + j``. The bias memory
    holds ``classes`` words. A write is one cycle with ``w_en`` (``b_en``) high and takes effect
    at once (words read after it see it); write between images for a coherent model. With
    ``target="ice40"`` the weights live in SPRAM, which has no initial contents: they must be
    written after configuration (``dense_w`` is then only used to check shapes), and a weight
    write holds the computation for that cycle.

    Latency
    -------
    With the buffer: ``steps + L + 2`` cycles from the start of a class to its logit on ``o``
    (``L`` the MAC array's :attr:`~cnnforge.hw.mac.MACArray.latency`: 3, or more with
    ``sum_levels``) (the computation of an image starts the cycle after its last beat was
    accepted, if the previous image's computation is finished). Without: an image's last beat,
    accepted in cycle ``t``, is multiplied from ``t + 1``; class ``k``'s logit is written into
    the FIFO ``L + 1`` cycles after its last group, ``(k + 1) * chunks - 1``
    cycles after that beat's first group, and offered on ``o`` one cycle later (``o.ready``
    permitting).

    Throughput
    ----------
    With the buffer: ``mults`` multiply-accumulates per cycle, sustained: ``classes * steps``
    cycles per image (:attr:`cycles_per_image`), no idle cycle between images. The reference
    network (5,408 features, 10 classes): 6,760 cycles per image at 8 multipliers, 1,690 at 32.
    ``i.ready`` is high whenever the fill side is free, so the producer sees no stall while the
    engine keeps up. Without it: one beat per ``classes * chunks + 2`` cycles,
    ``(classes * steps) * (1 + 2 / (classes * chunks))`` cycles per image; the ``up5k`` preset
    (4 lanes, 4 multipliers): 16,224 cycles of the 48,675 its convolution takes per image
    (the pooled stream brings a beat per 36 cycles on average). Gathering: ``classes * steps``
    cycles per image, like the buffer.

    Resources
    ---------
    ``mults`` multipliers (two per ``SB_MAC16`` for ``target="ice40"``); weight memory
    ``classes * steps`` x ``8 * mults`` bits (UP5K: two SPRAMs for 4 multipliers, four for 8).
    With the buffer: activation buffer ``2 * features`` bytes in block RAM (24 ``SB_RAM40_4K``
    for the reference network), ``classes`` bias words in flip-flops. Without: ``classes``
    partial sums and ``classes`` bias words in block RAM (2 + 2 ``SB_RAM40_4K`` on iCE40) and
    one input beat register (``8 * in_lanes`` flip-flops); gathering, the input FIFO and three
    group registers (``8 * mults`` flip-flops each) instead.

    Parameters
    ----------
    config : NetworkConfig
        The network; ``features`` and ``classes`` are used, widths from :class:`Widths`.
    in_lanes : int
        Activations per input beat; must divide ``features``.
    mults : int
        Multipliers; must divide ``features``, and ``in_lanes`` must divide ``mults`` or be a
        multiple of it.
    dense_w : numpy array ``(classes, features)`` of int8
        Initial weights.
    dense_b : numpy array ``(classes,)`` of integers within ``Widths(config).dense_bias_max``
        Initial biases.
    target : str
        ``"generic"`` (block RAM weight memory initialized from ``dense_w``), ``"ice40"``
        (weights in ``SB_SPRAM256KA``, written after configuration; needs ``8 * mults`` a
        multiple of 16 and ``classes * steps <= 16384``; products in dual 8x8 ``SB_MAC16``)
        or ``"ecp5"`` (same as generic).
    buffer : bool or None
        With the ping-pong activation buffer (``True``) or consuming the input stream directly
        (``False``). ``None``: ``False`` for ``target="ice40"``, ``True`` otherwise.
    sum_levels : int or None
        The MAC array's adder levels per pipeline stage (:class:`~cnnforge.hw.mac.MACArray`):
        ``None`` the whole sum of ``mults`` products in one cycle; 2 for fast clocks (latency
        + 2 for 32 multipliers). Results and throughput do not depend on it.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(unsigned(8), in_lanes)))``
        Activations, images back to back.
    o : ``Out(stream.Signature(signed(Widths(config).dense_acc)))``
        ``classes`` logits per image, class 0 first.
    w_en : ``In(1)``, w_addr : ``In(range(classes * steps))``,
    w_data : ``In(data.ArrayLayout(signed(8), mults))``
        Weight write port.
    b_en : ``In(1)``, b_addr : ``In(range(classes))``, b_data : ``In(signed(dense_bias))``
        Bias write port.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`NetworkConfig`, a count or ``sum_levels`` is not an
        integer or ``buffer`` is not a bool or None.
    ValueError
        If the lane counts do not fit the network, the arrays have the wrong shape or range,
        ``target`` is unknown or ``sum_levels`` is below 1.
    """

    TARGETS = ("generic", "ice40", "ecp5")

    def __init__(self, config, *, in_lanes, mults, dense_w, dense_b, target="generic",
                 buffer=None, sum_levels=None):
        check_config(config)
        in_lanes = check_int("in_lanes", in_lanes, 1)
        mults = check_int("mults", mults, 1)
        features, classes = config.features, config.classes
        if features % in_lanes:
            raise ValueError(f"in_lanes must divide features ({features}), not {in_lanes!r}")
        if features % mults:
            raise ValueError(f"mults must divide features ({features}), not {mults!r}")
        if mults % in_lanes and in_lanes % mults:
            raise ValueError(f"mults ({mults}) and in_lanes ({in_lanes}) must divide one another")
        check_choice("target", target, self.TARGETS)
        if buffer is None:
            buffer = target != "ice40"
        if not isinstance(buffer, bool):
            raise TypeError(f"buffer must be a bool or None, not {buffer!r}")
        widths = Widths(config)
        self._dense_w = check_int8_array("dense_w", dense_w, (classes, features))
        self._dense_b = check_bias_array("dense_b", dense_b, (classes,), widths.dense_bias_max)
        steps = features // mults
        if target == "ice40" and ((8 * mults) % 16 or classes * steps > 16384):
            raise ValueError(f"target 'ice40' needs an even mults and classes * steps <= 16384, "
                             f"not mults={mults}, {classes * steps} words")
        self._config, self._widths = config, widths
        self._in_lanes, self._mults, self._steps, self._target = in_lanes, mults, steps, target
        self._buffer = buffer
        self._sum_levels = None if sum_levels is None else check_int("sum_levels", sum_levels, 1)
        latency = MACArray.latency_for(taps=mults, sum_levels=self._sum_levels)
        # At least 3: a SyncFIFOBuffered of depth 2 has a zero-width inner address. Without the
        # buffer an image's logits leave in one burst: room for all of them.
        if buffer:
            self._fifo_depth = max(3, 1 + -(-(latency + 2) // steps))
        else:
            self._fifo_depth = max(3, classes)
        # Without the buffer and with more multipliers than input lanes, `gather` beats make
        # one group of `mults` features, which takes `classes` cycles; the pooled stream is
        # bursty (a pooled row's beats come during every other convolution row), so an input
        # FIFO of two conv rows' worth of pooled beats keeps the engine busy through the rows
        # that bring none.
        self._gather = 1 if buffer or in_lanes >= mults else mults // in_lanes
        if self._gather > 1:
            pooled_row = config.features // (config.pool_size * in_lanes)
            self._in_fifo_depth = max(4, 2 * pooled_row)
        else:
            self._in_fifo_depth = 0
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), in_lanes))),
            "o": Out(stream.Signature(signed(widths.dense_acc))),
            "w_en": In(1),
            "w_addr": In(range(classes * steps)),
            "w_data": In(data.ArrayLayout(signed(8), mults)),
            "b_en": In(1),
            "b_addr": In(range(classes)),
            "b_data": In(signed(widths.dense_bias)),
        })

    @property
    def steps(self):
        """Weight words (cycles) per class: ``features // mults``."""
        return self._steps

    @property
    def cycles_per_image(self):
        """Sustained cycles per image: ``classes * steps``, without the buffer and with one
        beat per group (``mults <= in_lanes``) plus two per input beat."""
        cycles = self._config.classes * self._steps
        if not self._buffer and self._gather == 1:
            cycles += 2 * (self._config.features // self._in_lanes)
        return cycles

    @property
    def gather(self):
        """Input beats per group of ``mults`` features (streaming with ``mults > in_lanes``),
        else 1."""
        return self._gather

    @property
    def in_fifo_depth(self):
        """Entries (beats) of the input FIFO of a gathering engine, else 0."""
        return self._in_fifo_depth

    @property
    def fifo_depth(self):
        return self._fifo_depth

    @property
    def buffer(self):
        """``True``: ping-pong activation buffer; ``False``: the input stream is consumed
        directly."""
        return self._buffer

    @property
    def mac_target(self):
        """The :class:`~cnnforge.hw.mac.MACArray` target: ``"ice40"`` (products two per
        ``SB_MAC16``) for ``target="ice40"``, otherwise ``"generic"``."""
        return "ice40" if self._target == "ice40" else "generic"

    def elaborate(self, platform):
        m = Module()
        config, widths = self._config, self._widths
        classes, steps, mults = config.classes, self._steps, self._mults

        # --- Weight and bias memories. ------------------------------------------------------
        wshape = data.ArrayLayout(signed(8), mults)
        if self._target == "ice40":
            m.submodules.weight_mem = weights = SPRAMWeights(8 * mults, classes * steps)
            w_raddr, w_rdata = weights.r_addr, wshape(weights.r_data)
            m.d.comb += [weights.w_en.eq(self.w_en), weights.w_addr.eq(self.w_addr),
                         weights.w_data.eq(self.w_data)]
            port_busy = self.w_en
        else:
            init = [pack_fields(word, 8) for word in weight_words(config, mults, self._dense_w)]
            m.submodules.weight_mem = weight_mem = Memory(
                shape=unsigned(8 * mults), depth=classes * steps, init=init)
            w_wr = weight_mem.write_port()
            w_rd = weight_mem.read_port()
            m.d.comb += [w_wr.en.eq(self.w_en), w_wr.addr.eq(self.w_addr),
                         w_wr.data.eq(self.w_data)]
            w_raddr, w_rdata = w_rd.addr, wshape(w_rd.data)
            port_busy = Const(0)

        m.submodules.bias_mem = bias_mem = Memory(
            shape=signed(widths.dense_bias), depth=classes, init=[int(b) for b in self._dense_b])
        b_wr = bias_mem.write_port()
        # Without the buffer the bias is read ahead like the partial sums (block RAM, not
        # classes x dense_bias flip-flops and a multiplexer).
        b_rd = bias_mem.read_port(domain="comb" if self._buffer else "sync")
        m.d.comb += [b_wr.en.eq(self.b_en), b_wr.addr.eq(self.b_addr), b_wr.data.eq(self.b_data)]

        m.submodules.mac = mac = MACArray(lanes=1, taps=mults, a_signed=False,
                                          acc_width=widths.dense_acc, target=self.mac_target,
                                          sum_levels=self._sum_levels)
        m.d.comb += mac.b[0].eq(w_rdata)

        # --- Output FIFO; `credit` counts logits reserved in it and not yet delivered. -------
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=widths.dense_acc,
                                                    depth=self._fifo_depth)
        credit = Signal(range(self._fifo_depth + 1))
        m.d.comb += [
            self.o.payload.eq(fifo.r_data),
            self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        if self._buffer:
            reserve = self._elaborate_buffered(m, mac, fifo, b_rd, w_raddr, port_busy, credit)
        else:
            reserve = self._elaborate_streaming(m, mac, fifo, b_rd, w_raddr, port_busy, credit)
        m.d.sync += credit.eq(credit + reserve - (self.o.valid & self.o.ready))
        return m

    def _elaborate_streaming(self, m, mac, fifo, b_rd, w_raddr, port_busy, credit):
        """No activation buffer: each input beat is multiplied by the weights of every class;
        per-class partial sums wait in a small memory."""
        config, widths = self._config, self._widths
        classes, steps = config.classes, self._steps
        in_lanes, mults, gather = self._in_lanes, self._mults, self._gather
        # A "beat" from here on is one group of in_lanes * gather features.
        beats = config.features // (in_lanes * gather)
        chunks = max(1, in_lanes // mults)

        cur_valid = Signal()
        done = Signal()
        if gather == 1:
            # --- Input: the beat register `cur`, so that i.ready (= ~cur_valid) is a
            # flip-flop: no combinational path from the scheduler back through the upstream
            # blocks' handshakes. It is freed by the beat's last step and refilled from the
            # next cycle on.
            cur = Signal(8 * in_lanes, reset_less=True)
            m.d.comb += self.i.ready.eq(~cur_valid)
            with m.If(self.i.valid & ~cur_valid):
                m.d.sync += [cur.eq(self.i.payload), cur_valid.eq(1)]
            with m.If(done):
                m.d.sync += cur_valid.eq(0)
        else:
            # --- Input: a FIFO, then `fill` collects `gather` beats; a full `fill` moves to
            # `cur` when that is free or freed this cycle (its last step), so consecutive groups
            # are issued without an idle cycle. The group is registered at issue (`group1`),
            # since `cur` may already hold the next one by stage 1.
            m.submodules.in_fifo = in_fifo = SyncFIFOBuffered(width=8 * in_lanes,
                                                              depth=self._in_fifo_depth)
            m.d.comb += [
                in_fifo.w_data.eq(self.i.payload),
                in_fifo.w_en.eq(self.i.valid),
                self.i.ready.eq(in_fifo.w_rdy),
            ]
            fill = Signal(8 * mults, reset_less=True)
            fill_n = Signal(range(gather + 1))
            fill_full = fill_n == gather
            m.d.comb += in_fifo.r_en.eq(~fill_full)
            cur = Signal(8 * mults, reset_less=True)
            move = fill_full & (~cur_valid | done)
            with m.If(in_fifo.r_rdy & ~fill_full):
                m.d.sync += [fill.eq(Cat(fill[8 * in_lanes:], in_fifo.r_data)),
                             fill_n.eq(fill_n + 1)]
            with m.If(move):
                m.d.sync += [cur.eq(fill), cur_valid.eq(1), fill_n.eq(0)]
            with m.Elif(done):
                m.d.sync += cur_valid.eq(0)

        # --- Scheduler: for beat b, class k, chunk j: weight word k * steps + b * chunks + j.
        k = Signal(range(max(2, classes)))
        j = Signal(range(max(2, chunks)))
        base = Signal(range(max(2, steps)))              # b * chunks for beat b
        addr = Signal(range(classes * steps))
        last_k = k == classes - 1
        last_j = j == chunks - 1
        last_b = base == (beats - 1) * chunks
        # The last beat of an image sends `classes` logits into the FIFO: start it only when
        # they all have a place.
        opens_last = last_b & (k == 0) & (j == 0)
        room = credit <= self._fifo_depth - classes
        issue = Signal()
        m.d.comb += [
            issue.eq(cur_valid & ~port_busy & (~opens_last | room)),
            done.eq(issue & last_k & last_j),
            w_raddr.eq(addr),
        ]
        with m.If(issue):
            with m.If(~last_j):
                m.d.sync += [j.eq(j + 1), addr.eq(addr + 1)]
            with m.Elif(~last_k):
                m.d.sync += [j.eq(0), k.eq(k + 1), addr.eq(addr + (steps - chunks + 1))]
            with m.Else():
                m.d.sync += [j.eq(0), k.eq(0)]
                with m.If(last_b):
                    m.d.sync += [base.eq(0), addr.eq(0)]
                with m.Else():
                    m.d.sync += [base.eq(base + chunks), addr.eq(base + chunks)]

        # Stage 1: the weight word is read. `cur` still holds the beat (it is refilled at the
        # earliest at the end of the cycle after its last step): the chunk is selected there.
        j1 = self._stage1(m, mac, issue, j == 0, last_j, j, "j1")
        if gather > 1:
            chunk = Signal(8 * mults, reset_less=True)
            m.d.sync += chunk.eq(cur)
        else:
            chunk = cur.word_select(j1, 8 * mults) if chunks > 1 else cur
        m.d.comb += mac.a.eq(chunk)

        # --- Per-class partial sums: the MAC array closes one (beat, class) sum per o_valid,
        # in the issue order; out_k / out_b follow it. The first beat of an image starts from
        # the bias, the last one sends the logit to the FIFO.
        out_k = Signal(range(max(2, classes)))
        out_b = Signal(range(max(2, beats)))
        next_k = Mux(out_k == classes - 1, 0, out_k + 1)
        # A sum is read in the cycle its predecessor (another class: classes >= 2) is written.
        m.submodules.partial_mem = partial_mem = Memory(
            shape=signed(widths.dense_acc), depth=classes, init=[], attrs=_NO_RW_CHECK)
        p_wr = partial_mem.write_port()
        p_rd = partial_mem.read_port()
        total = Signal(signed(widths.dense_acc))
        m.d.comb += [
            p_rd.addr.eq(Mux(mac.o_valid, next_k, out_k)),
            b_rd.addr.eq(Mux(mac.o_valid, next_k, out_k)),
            total.eq(Mux(out_b == 0, b_rd.data, p_rd.data) + mac.acc[0]),
            p_wr.addr.eq(out_k), p_wr.data.eq(total), p_wr.en.eq(mac.o_valid),
            fifo.w_data.eq(total), fifo.w_en.eq(mac.o_valid & (out_b == beats - 1)),
        ]
        with m.If(mac.o_valid):
            m.d.sync += out_k.eq(next_k)
            with m.If(out_k == classes - 1):
                m.d.sync += out_b.eq(Mux(out_b == beats - 1, 0, out_b + 1))
        return Mux(issue & opens_last, classes, 0)

    @staticmethod
    def _stage1(m, mac, issue, first, last, select, select_name):
        """Stage 1, the weight word read: the MAC array's controls registered from the issue
        cycle, and ``select`` (which part of the input the step uses) registered beside them as
        ``select_name``, which is returned."""
        valid1 = Signal()
        first1 = Signal(reset_less=True)
        last1 = Signal(reset_less=True)
        select1 = Signal.like(select, name=select_name, reset_less=True)
        m.d.sync += [valid1.eq(issue), first1.eq(first), last1.eq(last), select1.eq(select)]
        m.d.comb += [mac.i_valid.eq(valid1), mac.i_first.eq(first1), mac.i_last.eq(last1)]
        return select1

    @staticmethod
    def _count(m, word, part, parts):
        """Step the activation buffer address ``(word, part)``, ``part`` in ``range(parts)``
        (a bank or a chunk of the word; with one part, ``part`` stays 0)."""
        if parts > 1:
            m.d.sync += part.eq(part + 1)
            with m.If(part == parts - 1):
                m.d.sync += [part.eq(0), word.eq(word + 1)]
        else:
            m.d.sync += word.eq(word + 1)

    def _elaborate_buffered(self, m, mac, fifo, b_rd, w_raddr, port_busy, credit):
        config = self._config
        classes, steps = config.classes, self._steps
        in_lanes, mults = self._in_lanes, self._mults
        beats = config.features // in_lanes

        # --- Activation buffer: `banks` memories of in_lanes bytes, two sides each. ---------
        # A compute step reads mults bytes: with mults >= in_lanes, beat b of an image lives in
        # bank b % banks at word b // banks and step s reads word s of every bank; with
        # mults < in_lanes, step s reads word s // chunks of the one bank, chunk s % chunks.
        banks = max(1, mults // in_lanes)
        chunks = max(1, in_lanes // mults)
        side_words = beats // banks
        act_rd = []
        act_wr = []
        for n in range(banks):
            mem = Memory(shape=data.ArrayLayout(unsigned(8), in_lanes), depth=2 * side_words,
                         init=[], attrs=_NO_RW_CHECK)
            m.submodules[f"act_mem{n}"] = mem
            act_wr.append(mem.write_port())
            act_rd.append(mem.read_port())

        full = [Signal(name="full_0"), Signal(name="full_1")]

        # Writer: fills side w_side, beat counter w_beat.
        w_side = Signal()
        w_beat = Signal(range(max(2, beats)))
        w_word = Signal(range(max(2, side_words)))
        w_bank = Signal(range(max(2, banks)))   # no zero-width signals: Verilator
        #                                            reads `[-1:0]` as two bits
        m.d.comb += self.i.ready.eq(Mux(w_side, ~full[1], ~full[0]))
        for n in range(banks):
            m.d.comb += [
                act_wr[n].addr.eq(w_side * side_words + w_word),
                act_wr[n].data.eq(self.i.payload),
                act_wr[n].en.eq(self.i.valid & self.i.ready & (w_bank == n)),
            ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += w_beat.eq(w_beat + 1)
            self._count(m, w_word, w_bank, banks)
            with m.If(w_beat == beats - 1):
                m.d.sync += [w_beat.eq(0), w_word.eq(0), w_bank.eq(0), w_side.eq(~w_side)]
                with m.If(w_side):
                    m.d.sync += full[1].eq(1)
                with m.Else():
                    m.d.sync += full[0].eq(1)

        # --- Scheduler: class k, step s of the side r_side. ---------------------------------
        r_side = Signal()
        k = Signal(range(max(2, classes)))
        s = Signal(range(max(2, steps)))
        s_word = Signal(range(max(2, steps // chunks)))
        s_chunk = Signal(range(max(2, chunks)))
        w_addr = Signal(range(classes * steps))

        ready_side = Mux(r_side, full[1], full[0])
        issue = Signal()
        start = Signal()
        # s == 0 and s == steps - 1 as flip-flops, kept with s (no comparator before the
        # scheduler's enables).
        s_first = Signal(init=1)
        s_last = Signal(init=int(steps == 1))
        m.d.comb += [
            issue.eq(ready_side & ~port_busy & (~s_first | (credit < self._fifo_depth))),
            start.eq(issue & s_first),
            w_raddr.eq(w_addr),
        ]
        with m.If(issue):
            m.d.sync += [s_first.eq(s_last),
                         s_last.eq(Mux(s_last, steps == 1, s == steps - 2))]
        for n in range(banks):
            m.d.comb += act_rd[n].addr.eq(
                r_side * side_words + s_word)
        with m.If(issue):
            m.d.sync += [s.eq(s + 1), w_addr.eq(w_addr + 1)]
            self._count(m, s_word, s_chunk, chunks)
            with m.If(s_last):
                m.d.sync += [s.eq(0), s_word.eq(0), s_chunk.eq(0), k.eq(k + 1)]
                with m.If(k == classes - 1):
                    m.d.sync += [k.eq(0), w_addr.eq(0), r_side.eq(~r_side)]
                    # The last reads are sampled at this edge: the side may be refilled.
                    with m.If(r_side):
                        m.d.sync += full[1].eq(0)
                    with m.Else():
                        m.d.sync += full[0].eq(0)

        # Stage 1: memory data valid; present the group to the MAC array.
        chunk1 = self._stage1(m, mac, issue, s_first, s_last, s_chunk, "chunk1")
        if banks > 1:
            group = Cat(*(act_rd[n].data for n in range(banks)))
        elif chunks > 1:
            group = act_rd[0].data.as_value().word_select(chunk1, 8 * mults)
        else:
            group = act_rd[0].data
        m.d.comb += mac.a.eq(group)

        # --- Output: bias add into the FIFO. ------------------------------------------------
        out_k = Signal(range(max(2, classes)))
        m.d.comb += [
            b_rd.addr.eq(out_k),
            fifo.w_data.eq(mac.acc[0] + b_rd.data),
            fifo.w_en.eq(mac.o_valid),
        ]
        with m.If(mac.o_valid):
            m.d.sync += out_k.eq(Mux(out_k == classes - 1, 0, out_k + 1))
        return start
