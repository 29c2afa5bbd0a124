"""Per-channel requantization of conv accumulators to uint8 activations (ReLU fused)."""


import numpy as np
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .util import ChannelBlock, check_config, check_int, check_lanes
from .params import Widths


__all__ = ["Requantize"]


class Requantize(ChannelBlock):
    """``out = clip((acc * requant_mult[f] + 2**(shift-1)) >> shift, 0, 255)`` on a stream.

    Bit-identical to :func:`cnnforge.sim.reference.golden.requantize`: arithmetic shift, rounding half up
    (towards +inf), ReLU fused as the lower clip, saturation at 255.

    Beats carry ``lanes`` accumulators of consecutive channels, in the ConvEngine's output order:
    for each conv output position ``filters // lanes`` beats, beat ``g`` holding filters
    ``g*lanes .. g*lanes + lanes - 1``. The channel of each lane is tracked by counting beats
    (from reset; a stream must carry whole positions). The output has the same beat structure.

    ``parallel`` multipliers serve the ``lanes`` lanes: a beat is cut into
    ``steps = lanes // parallel`` parts of ``parallel`` lanes that go through the multiplier one
    per cycle; the output beat is reassembled before it leaves.

    Pipeline (a valid/ready stream pipeline; a stage takes new data whenever it is empty or
    its content moves on, so bubbles collapse and backpressure stalls every stage)::

        part cycle: i.payload part s selected, multiplier memory word addressed
        stage 1:    accumulator part registered, multipliers read (the memory's register)
        stage 2:    operand registers: the multipliers copied, the accumulator clamped at 0
                    (ReLU before the product: exact, see the code), so that they can sit
                    beside their multiplier while the memory's register sits with the memory
        stage 3:    partial products acc * digit registered, one per DIGIT (8) bits of the
                    multiplier (two unsigned 20 x 8 products for the reference widths)
        stage 4:    partial products summed (shifted) plus the rounding constant, registered
        output:     shift and saturate (an OR of high bits); the last part of a beat loads
                    o.payload, o.valid

    No stage holds more than one LUT multiplier of ``(conv_acc - 1) x DIGIT`` bits or one
    ``requant_product``-bit adder, and no stage both routes far and computes, so every stage
    of the products is a short path.

    Stall-free mode
    ---------------
    With ``stall_free=True`` the pipeline registers have no enables: every stage moves on every
    cycle, a valid bit travelling with the data. A beat's last part is admitted only with a
    place reserved for its result in an output FIFO of :attr:`fifo_depth` beats (credit
    counting, as the window convolution's output), so ``o.ready`` reaches only that FIFO and
    the credit counter, and ``i.ready`` depends on flip-flops alone. The standard mode's
    pipeline-wide advance signal drives the enable of every pipeline register (about 3,000 for
    16 lanes): on a large device that one net is routed across the die.

    Latency
    -------
    :attr:`latency` cycles: an input beat transferred (``i.valid & i.ready``, which happens
    with its last part) in cycle ``t`` is offered on ``o`` (``o.valid``) in cycle
    ``t + latency``: :attr:`LATENCY` = 5, or 6 stall-free (one more through the output FIFO).

    Throughput
    ----------
    ``parallel / lanes`` beats per cycle sustained (one beat every ``steps`` cycles; one per
    cycle when ``parallel == lanes``), under no backpressure, with no idle cycle between beats,
    positions or images. Standard mode: ``i.ready`` depends combinationally on ``o.ready``
    through one pipeline-wide advance signal (stages stall together).

    Resources
    ---------
    ``parallel`` unsigned multipliers of ``(conv_acc - 1) x requant_mult`` bits (20 x 16 for
    the reference network), each built as ``requant_mult / DIGIT`` LUT multipliers of
    ``(conv_acc - 1) x DIGIT`` and one adder (no DSP: Yosys maps none with ``synth_ice40``
    without ``-dsp`` or ``synth_ecp5 -nodsp``), the multiplier memory (``filters // parallel``
    words of ``parallel * 16`` bits), the pipeline registers (per multiplier
    ``2 * conv_acc + 15`` + ``2 * (conv_acc - 1 + DIGIT)`` + ``requant_product`` bits) and
    ``lanes - parallel`` reassembly bytes. Stall-free: the output FIFO
    (``fifo_depth - 1`` words of ``8 * lanes`` bits in memory, one in its output register) and
    a credit counter.

    Parameters
    ----------
    config : NetworkConfig
        The network; widths come from :class:`~cnnforge.hw.params.Widths` (``conv_acc``,
        ``requant_mult``, ``requant_product``).
    lanes : int
        Accumulators per beat; must divide ``config.filters``.
    requant_mult : array of int, shape ``(filters,)``
        Initial contents of the per-channel multiplier memory, ``0 .. 2**16 - 1``.
    requant_shift : int
        The right shift, ``1 .. Widths.requant_shift_max`` (an elaboration constant).
    parallel : int or None
        Number of multipliers; must divide ``lanes``. Default: ``lanes``.
    digit : int or None
        Multiplier bits per partial product, ``1 .. requant_mult``; default :attr:`DIGIT`.
        ``digit=requant_mult`` makes one whole product per multiplier (stage 3), which is what
        Yosys's ``ice40_dsp`` maps onto SB_MAC16 (the iCE40 target); 8-bit digits keep LUT
        multipliers short (ECP5 ``-nodsp``). The latency and the results do not depend on it.
    stall_free : bool
        Pipeline registers without enables and an output FIFO; see "Stall-free mode". The
        results do not depend on it.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(signed(conv_acc), lanes)))``
        Conv accumulators.
    o : ``Out(stream.Signature(data.ArrayLayout(unsigned(8), lanes)))``
        Activations.
    mult_en : ``In(1)``
        Write ``mult_data`` as the multiplier of channel ``mult_addr`` (takes effect for parts
        addressed from the next cycle on; write while the stream is idle for a clean switch).
    mult_addr : ``In(range(filters))``
        Channel written.
    mult_data : ``In(unsigned(requant_mult))``
        New multiplier.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`NetworkConfig`, or an integer argument is not an
        integer.
    ValueError
        If ``lanes`` does not divide ``filters``, ``parallel`` does not divide ``lanes``,
        ``requant_mult`` has the wrong shape or a value out of range, or ``requant_shift`` or
        ``digit`` is out of range.
    """

    LATENCY = 5
    #: Multiplier bits per partial product (stage 2).
    DIGIT = 8

    def __init__(self, config, *, lanes, requant_mult, requant_shift, parallel=None, digit=None,
                 stall_free=False):
        self._config = check_config(config)
        self._lanes = lanes = check_lanes(config, lanes)
        widths = Widths(config)
        parallel = lanes if parallel is None else check_int("parallel", parallel, 1)
        if lanes % parallel:
            raise ValueError(f"parallel must divide lanes ({lanes}), not {parallel!r}")
        digit = self.DIGIT if digit is None else check_int("digit", digit, 1, widths.requant_mult)
        self._digit = digit
        if not isinstance(stall_free, bool):
            raise TypeError(f"stall_free must be a bool, not {stall_free!r}")
        self._stall_free = stall_free
        shift = check_int("requant_shift", requant_shift, 1, widths.requant_shift_max)
        try:
            mult = np.asarray(requant_mult)
        except Exception:
            raise TypeError(f"requant_mult must be an array of integers, not "
                            f"{requant_mult!r}") from None
        if mult.dtype == bool or not np.issubdtype(mult.dtype, np.integer):
            raise TypeError(f"requant_mult must be an array of integers, not {requant_mult!r}")
        if mult.shape != (config.filters,):
            raise ValueError(f"requant_mult must have shape ({config.filters},), not "
                             f"{mult.shape!r}")
        mult_max = (1 << widths.requant_mult) - 1
        if mult.size and (int(mult.min()) < 0 or int(mult.max()) > mult_max):
            raise ValueError(f"requant_mult values must be in 0..{mult_max}, not "
                             f"{int(mult.min())}..{int(mult.max())}")

        self._widths = widths
        self._parallel = parallel
        self._shift = shift
        self._mult = [int(x) for x in mult]
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(widths.conv_acc), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(widths.act), lanes))),
            "mult_en": In(1),
            "mult_addr": In(range(config.filters)),
            "mult_data": In(unsigned(widths.requant_mult)),
        })

    @property
    def parallel(self):
        return self._parallel

    @property
    def steps(self):
        """Cycles per beat: ``lanes // parallel``."""
        return self._lanes // self._parallel

    @property
    def stall_free(self):
        return self._stall_free

    @property
    def latency(self):
        """Cycles from an input beat's transfer to its result offered on ``o``."""
        return self.LATENCY + (1 if self._stall_free else 0)

    @property
    def fifo_depth(self):
        """Stall-free mode: output FIFO entries (credits); 0 in standard mode.

        A place is reserved at admission and freed when its beat leaves: ``latency`` cycles to
        the offer, one to see the credit come back, one of margin, so a consumer that is always
        ready never sees a gap."""
        return self.latency + 2 if self._stall_free else 0

    @property
    def requant_shift(self):
        return self._shift

    @property
    def requant_mult(self):
        """The initial multipliers (a copy)."""
        return np.array(self._mult, dtype=np.uint16)

    @property
    def cycles_per_image(self):
        """Sustained cycles per image: ``conv_size**2 * filters // lanes`` beats of
        :attr:`steps` cycles."""
        cfg = self._config
        return cfg.conv_size ** 2 * (cfg.filters // self._lanes) * self.steps

    def elaborate(self, platform):
        m = Module()
        w = self._widths
        lanes, par, steps = self._lanes, self._parallel, self.steps
        words = self._config.filters // par
        acc_w, act_w, mult_w = w.conv_acc, w.act, w.requant_mult

        # Multiplier memory: word j holds the multipliers of channels j*par .. j*par + par - 1,
        # the channels of one part. Written one channel at a time (granularity of one lane).
        mult_row = data.ArrayLayout(unsigned(mult_w), par)
        m.submodules.mult = mem = Memory(
            shape=mult_row, depth=words,
            init=[self._mult[j * par:(j + 1) * par] for j in range(words)])
        wr = mem.write_port(granularity=1)
        rd = mem.read_port()
        m.d.comb += [
            wr.addr.eq(self.mult_addr // par),
            wr.en.eq(Mux(self.mult_en, Const(1, par) << (self.mult_addr % par), 0)),
        ]
        for k in range(par):
            m.d.comb += wr.data[k].eq(self.mult_data)

        # Handshake. Standard mode: the whole pipeline advances together, when the last stage's
        # content moves on into asm (not the last part) or into the output register (free, or
        # leaving this cycle). Empty stages are not squeezed out under backpressure: a
        # per-stage `empty | next advances` chain would put every stage between o.ready and
        # i.ready, on one path with the convolution's output enables.
        # Stall-free mode: every stage advances every cycle; a beat's last part is admitted
        # only with a place in the output FIFO reserved (`room`).
        n = 4
        v = [Signal(name=f"v{k + 1}") for k in range(n)]
        last = [Signal(name=f"last{k + 1}") for k in range(n)]
        adv = [Signal(name=f"adv{k + 1}") for k in range(n)]
        room = Signal(init=1)
        if self._stall_free:
            m.d.comb += adv[n - 1].eq(1)
        else:
            m.d.comb += [
                adv[n - 1].eq(~v[n - 1] | ~last[n - 1] | ~self.o.valid | self.o.ready),
                room.eq(1),
            ]
        for k in reversed(range(n - 1)):
            m.d.comb += adv[k].eq(adv[k + 1])

        # Part cycle: which part of the presented beat goes next, and its multiplier word.
        word = Signal(range(words))
        is_last = Signal()
        go = Signal()       # a part enters stage 1
        m.d.comb += [
            go.eq(adv[0] & self.i.valid & (~is_last | room)),
            self.i.ready.eq(adv[0] & is_last & room),
            rd.addr.eq(word),
            rd.en.eq(adv[0]),
        ]
        with m.If(go):
            m.d.sync += word.eq(Mux(word == words - 1, 0, word + 1))
        if steps > 1:
            part = Signal(range(steps))
            parts = [Signal(range(steps), name=f"part{k + 1}") for k in range(n)]
            # `part == steps - 1` as a flip-flop: it is in i.ready, whose loads (the upstream
            # register slice's enables) are many and wide.
            is_last_r = Signal(init=int(steps == 1))
            m.d.comb += is_last.eq(is_last_r)
            with m.If(go):
                m.d.sync += [part.eq(Mux(is_last, 0, part + 1)),
                             is_last_r.eq(Mux(is_last, 0, part == steps - 2))]
            selected = self.i.payload.as_value().word_select(part, par * acc_w)
        else:
            m.d.comb += is_last.eq(1)
            selected = self.i.payload.as_value()

        # Control of every stage: valid, last part, part number.
        with m.If(adv[0]):
            m.d.sync += [v[0].eq(go), last[0].eq(is_last)]
            if steps > 1:
                m.d.sync += parts[0].eq(part)
        for k in range(1, n):
            with m.If(adv[k]):
                m.d.sync += [v[k].eq(v[k - 1]), last[k].eq(last[k - 1])]
                if steps > 1:
                    m.d.sync += parts[k].eq(parts[k - 1])

        # Stage 1: the accumulator part registered, the multipliers in the memory's read register.
        acc1 = Signal(data.ArrayLayout(signed(acc_w), par), reset_less=True)
        with m.If(adv[0]):
            m.d.sync += acc1.eq(selected)

        # Stage 2: operand registers, near-copies: the memory's read register sits with the
        # memory, these with their multiplier, so no stage has both a long route and logic.
        # ReLU first: the multiplier is >= 0, so a negative accumulator gives a product <= 0,
        # (product + 2**(shift-1)) >> shift <= 0 and the output 0, exactly as an accumulator
        # of 0 does; the multiplier then only sees conv_acc - 1 unsigned bits.
        mag_w = acc_w - 1
        acc2 = Signal(data.ArrayLayout(unsigned(mag_w), par), reset_less=True)
        mult2 = Signal(mult_row, reset_less=True)
        with m.If(adv[1]):
            m.d.sync += mult2.eq(rd.data)
            for k in range(par):
                m.d.sync += acc2[k].eq(Mux(acc1[k] < 0, 0, acc1[k][:mag_w]))

        # Stage 3: partial products acc * (DIGIT-bit digit d of the multiplier), registered
        # (unsigned, conv_acc - 1 + DIGIT bits).
        digits = [(lo, min(self._digit, mult_w - lo)) for lo in range(0, mult_w, self._digit)]
        pp3 = [[Signal(unsigned(mag_w + width), name=f"pp3_{k}_{d}", reset_less=True)
                for d, (lo, width) in enumerate(digits)] for k in range(par)]
        with m.If(adv[2]):
            for k in range(par):
                for d, (lo, width) in enumerate(digits):
                    m.d.sync += pp3[k][d].eq(acc2[k] * mult2[k][lo:lo + width])

        # Stage 4: the product (the partial products summed, < 2**(requant_product - 1)) plus
        # the rounding constant 2**(shift-1), registered.
        half = 1 << (self._shift - 1)
        rounded_w = max(w.requant_product - 1, self._shift) + 1
        rounded4 = [Signal(unsigned(rounded_w), name=f"rounded4_{k}", reset_less=True)
                    for k in range(par)]
        with m.If(adv[3]):
            for k in range(par):
                total = half
                for d, (lo, width) in enumerate(digits):
                    total = (pp3[k][d] << lo) + total
                m.d.sync += rounded4[k].eq(total)

        # Output (combinational into asm / o.payload): shift, saturate at 255.
        act_max = (1 << act_w) - 1
        res = []
        for k in range(par):
            q = Signal(unsigned(max(rounded_w - self._shift, 1)), name=f"q_{k}")
            r = Signal(unsigned(act_w), name=f"res_{k}")
            m.d.comb += [
                q.eq(rounded4[k] >> self._shift),
                r.eq(Mux(q > act_max, act_max, q[:act_w])),
            ]
            res.append(r)
        res = Cat(*res)
        # Reassembly: parts 0..steps-2 wait in asm; the last part loads the output register.
        if steps > 1:
            asm = Signal((lanes - par) * act_w, reset_less=True)
            for p in range(steps - 1):
                with m.If(v[n - 1] & (parts[n - 1] == p)):
                    m.d.sync += asm.word_select(p, par * act_w).eq(res)
            beat = Cat(asm, res)
        else:
            beat = res
        done = v[n - 1] & last[n - 1]
        if self._stall_free:
            # The output FIFO: a place reserved with each admitted beat (credit), freed when its
            # beat leaves; so it never overflows and the pipeline never waits for o.ready.
            m.submodules.out_fifo = fifo = SyncFIFOBuffered(width=lanes * act_w,
                                                            depth=self.fifo_depth)
            credit = Signal(range(self.fifo_depth + 1), init=self.fifo_depth)
            credit_next = Signal.like(credit)
            reserve = self.i.valid & self.i.ready
            release = self.o.valid & self.o.ready
            # `room` (= credit != 0) is a flip-flop: it is i.ready, and the upstream register
            # slice's load enables hang on it, so no logic sits between the counter and them.
            m.d.comb += credit_next.eq(credit - reserve + release)
            m.d.sync += [credit.eq(credit_next), room.eq(credit_next != 0)]
            m.d.comb += [
                fifo.w_data.eq(beat),
                fifo.w_en.eq(done),
                self.o.payload.eq(fifo.r_data),
                self.o.valid.eq(fifo.r_rdy),
                fifo.r_en.eq(self.o.ready),
            ]
        else:
            with m.If(done & adv[n - 1]):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(beat)]
            with m.Elif(self.o.ready):
                m.d.sync += self.o.valid.eq(0)
        return m
