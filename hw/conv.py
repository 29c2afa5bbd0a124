"""The convolution engine: a pixel ring buffer, a tap scheduler and a time-multiplexed MAC array."""

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .mac import MACArray
from .util import (ChannelBlock, check_bias_array, check_choice, check_config, check_int,
                   check_int8_array, check_lanes, pack_fields, REPLICA)
from .params import Widths


__all__ = ["ConvInterface", "ConvEngine", "weight_words", "bias_words", "check_conv_arrays"]


def check_conv_arrays(config, conv_w, conv_b):
    """``conv_w``, ``conv_b`` as int64 arrays; ValueError naming the problem otherwise."""
    k, cin, f = config.kernel, config.in_channels, config.filters
    return (check_int8_array("conv_w", conv_w, (f, k, k, cin)),
            check_bias_array("conv_b", conv_b, (f,), Widths(config).conv_bias_max))


def bias_shape(lanes, taps):
    """``(words_per_group, biases_per_word)`` of the bias memory.

    The biases of a group are loaded one memory word per cycle during the group's taps, so a
    group needs at most ``taps`` words: ``words_per_group`` is the largest power of two
    ``<= min(taps, lanes)``.
    """
    chunks = 1 << (min(taps, lanes).bit_length() - 1)
    return chunks, -(-lanes // chunks)


def weight_words(config, lanes, conv_w, channels=1):
    """Weight memory words in write-port address order.

    With ``steps = taps // channels``, word ``g * steps + s`` holds, in element
    ``l * channels + j``, the weight of filter ``g * lanes + l`` at tap ``t = s * channels + j``,
    ``t = (ky * K + kx) * in_channels + c`` (the golden model's im2col order; ``channels`` input
    channels are multiplied per cycle). Returns a list of ``filters // lanes * steps`` lists of
    ``lanes * channels`` ints.
    """
    flat = np.asarray(conv_w).reshape(config.filters, config.taps).astype(np.int64)
    steps = config.taps // channels
    return [[int(flat[g * lanes + l, s * channels + j]) for l in range(lanes)
             for j in range(channels)]
            for g in range(config.filters // lanes) for s in range(steps)]


def bias_words(config, lanes, conv_b, channels=1):
    """Bias memory words in write-port address order.

    With ``(chunks, per) = ConvEngine.bias_word_shape``, word ``g * chunks + j`` holds, in
    element ``k``, the bias of filter ``g * lanes + j * per + k`` (0 where ``j * per + k >=
    lanes``). Returns a list of ``filters // lanes * chunks`` lists of ``per`` ints.
    """
    chunks, per = bias_shape(lanes, config.taps // channels)
    b = np.asarray(conv_b).astype(np.int64)
    return [[int(b[g * lanes + j * per + k]) if j * per + k < lanes else 0 for k in range(per)]
            for g in range(config.filters // lanes) for j in range(chunks)]


#: The read and write ports of every memory here never touch the same word in the same cycle
#: (ring-buffer occupancy, separate banks), so Yosys need not emulate read-during-write
#: behaviour (on iCE40 that emulation costs a register and a bypass mux per data bit).
_NO_RW_CHECK = {"no_rw_check": 1}


def _index(count):
    """Shape of a counter over ``range(count)``, at least one bit (no zero-width signals)."""
    return unsigned(max(1, ceil_log2(count)))


class ConvInterface(ChannelBlock):
    _doc_template = """
    {description}

    Weight and bias write ports
    ---------------------------
    The weight memory holds ``filters // lanes * taps`` words of ``lanes`` int8 weights (see
    :func:`weight_words`): address ``g * taps + t`` holds, in lane ``l``, the weight of filter
    ``g * lanes + l`` at tap ``t = (ky * K + kx) * in_channels + c``. The bias memory holds
    ``chunks`` words per filter group of ``per`` biases each, ``(chunks, per) =``
    :attr:`bias_word_shape` (``chunks`` is the largest power of two ``<= min(taps, lanes)``,
    ``per = ceil(lanes / chunks)``; the reference network at 16 lanes: 8 words of 2): address
    ``g * chunks + j``, element ``k`` is the bias of filter ``g * lanes + j * per + k`` (see
    :func:`bias_words`). A write is one cycle with ``w_en`` (``b_en``) high; addresses out of
    range are ignored. Writes may come at any time, also while an image is being computed:
    every word is double-buffered (two banks and a per-word bank bit), a write goes to the bank
    the running image does not use, and the banks are switched between images. {write_timing}
    A reset does not undo writes: the engine keeps computing with the latest words written.
    {sections}
    Parameters
    ----------
    config : NetworkConfig
        The network; ``input_size``, ``in_channels``, ``kernel`` and ``filters`` are used.
    lanes : int
        Filters computed in parallel (MAC lanes); must divide ``config.filters``.
    conv_w : numpy array ``(F, K, K, Cin)`` of int8
        Initial weights (both banks).
    conv_b : numpy array ``(F,)`` of integers within ``Widths(config).conv_bias_max``
        Initial biases (both banks).
    target : str
        MAC array target, one of ``MACArray.TARGETS`` (:class:`~cnnforge.hw.mac.MACArray`):
        ``"generic"`` (plain products: Yosys infers one MULT18X18D each on ECP5 unless
        ``-nodsp``), ``"ice40"`` (two 8x8 products per SB_MAC16) or ``"ecp5"`` (one explicit
        MULT18X18D each in a board build, so that ``synth_ecp5 -nodsp`` keeps every other
        product in LUTs).{parameters}

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(unsigned(8), in_channels)))``
        Pixels, raster order, images back to back.
    o : ``Out(stream.Signature(data.ArrayLayout(signed(Widths(config).conv_acc), lanes)))``
        For every output position (raster order) ``filters // lanes`` beats; beat ``g`` carries
        the accumulators (bias included) of filters ``g*lanes .. g*lanes + lanes - 1``.
    w_en : ``In(1)``, w_addr : ``In(unsigned(max(1, ceil_log2(filters // lanes * taps))))``,
    w_data : ``In(data.ArrayLayout(signed(8), lanes))``
        Weight write port.
    b_en : ``In(1)``, b_addr : ``In(unsigned(max(1, ceil_log2(filters // lanes * chunks))))``,
    b_data : ``In(data.ArrayLayout(signed(Widths(config).conv_bias), per))``
        Bias write port.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`NetworkConfig` or ``lanes``{type_errors} is not an
        integer.
    ValueError
        If ``lanes`` does not divide the filters, the weight/bias arrays have the wrong shape or
        out-of-range values, or ``target`` is unknown{value_errors}.
    """

    __doc__ = _doc_template.format(
        description="""
    'Valid' KxK convolution of a raster pixel stream, ``lanes`` filters per cycle: the
    interface, checks and derived numbers shared by :class:`ConvEngine` and
    :class:`~cnnforge.hw.conv_window.WindowConvEngine`, so that the accelerator takes either.
    """.strip(),
        write_timing="When a write takes effect is up to the engine.",
        sections="",
        parameters="",
        type_errors="",
        value_errors="",
    )

    def __init__(self, config, *, lanes, conv_w, conv_b, target, channels=1):
        self._config = check_config(config)
        self._lanes = check_lanes(config, lanes, requirement="a positive integer")
        self._channels = check_int("channels", channels, 1)
        if config.in_channels % self._channels:
            raise ValueError(f"channels must divide in_channels ({config.in_channels}), not "
                             f"{channels!r}")
        self._target = check_choice("target", target, MACArray.TARGETS)
        self._conv_w, self._conv_b = check_conv_arrays(config, conv_w, conv_b)
        self._widths = widths = Widths(config)
        self._groups = config.filters // self._lanes
        self._taps = config.taps
        self._steps = config.taps // self._channels     # weight words (cycles) per group
        self._w_abits = max(1, ceil_log2(self._groups * self._steps))
        self._b_chunks, self._b_per = bias_shape(self._lanes, self._steps)
        self._b_abits = max(1, ceil_log2(self._groups * self._b_chunks))
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), config.in_channels))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(widths.conv_acc), self._lanes))),
            "w_en": In(1),
            "w_addr": In(unsigned(self._w_abits)),
            "w_data": In(data.ArrayLayout(signed(8), self._lanes * self._channels)),
            "b_en": In(1),
            "b_addr": In(unsigned(self._b_abits)),
            "b_data": In(data.ArrayLayout(signed(widths.conv_bias), self._b_per)),
        })

    # -- derived numbers, for tests and reports ---------------------------------------------------

    @property
    def target(self):
        return self._target

    @property
    def channels(self):
        """Input channels multiplied per cycle and lane."""
        return self._channels

    @property
    def multipliers(self):
        """int8 multipliers: ``lanes * channels``."""
        return self._lanes * self._channels

    @property
    def bias_word_shape(self):
        """``(chunks, per)``: bias memory words per filter group, biases per word."""
        return self._b_chunks, self._b_per

    @property
    def fifo_depth(self):
        """Output FIFO entries (credits: results a started group may be waiting for)."""
        return self._fifo_depth


class ConvEngine(ConvInterface):
    __doc__ = ConvInterface._doc_template.format(
        description="""
    'Valid' KxK convolution of a raster pixel stream, ``lanes`` filters per cycle, windows every
    ``config.stride`` pixels (1 or 2; a :class:`~cnnforge.hw.params.StageConfig`'s input is
    already padded and cropped so that the last window ends on the last pixel).

    Pixels are written into a ring buffer (one block RAM word of ``in_channels`` bytes per
    pixel) as they arrive. A scheduler walks the output positions in raster order; for each
    position it runs the ``filters // lanes`` filter groups one after the other, and for each
    group the ``taps = K*K*in_channels`` taps in the golden order ``(ky, kx, c)``: one tap per
    cycle, the pixel byte read from the ring buffer and broadcast to all lanes of the
    :class:`~cnnforge.hw.mac.MACArray`, the ``lanes`` int8 weights of ``(group, tap)`` read from
    the weight memory. The biases of the group are read from a narrow bias memory, a few per
    cycle during the group's taps, into a staging register, and added as the accumulations leave
    the array, on their way into a small output FIFO.

    The ring buffer holds ``buffer_depth`` pixels (a power of two >= ``2*(K-1)*N + 2*K``), so
    the input can run up to a window and a half ahead of the computation: the fill of image
    ``n + 1`` (its first K-1 rows and K pixels) is taken while image ``n``'s last positions are
    computed, and images follow each other with no gap in the stream.

    The MAC pipeline cannot stall, so a filter group is started only when a place in the output
    FIFO (``fifo_depth`` entries, ``2 + ceil((MACArray.LATENCY + 2) / taps)``) is reserved for
    its result: credit counting, no combinational path from ``o.ready`` to the scheduler or to
    ``i.ready``.
    """.strip(),
        write_timing="""A write takes
    effect from the first image whose computation starts after it: everything written before
    the first pixel of image ``n`` is accepted applies to image ``n``; nothing written after the
    last pixel of image ``n`` was accepted affects image ``n`` (for ``conv_size > 1``).""",
        sections="""
    Latency
    -------
    With an idle engine, the first output beat of a position is valid ``taps + 5`` cycles after
    the window's bottom-right pixel was accepted (``taps + 6`` for an image's first position, one
    cycle of bank switch); the following groups of that position follow every ``taps`` cycles.

    Throughput
    ----------
    One tap-group (``lanes`` multiply-accumulates) per cycle, sustained, when input arrives
    every cycle and the output is not stalled: ``conv_size**2 * taps * filters / lanes``
    cycles per image plus :attr:`SWITCH_CYCLES` (3) idle cycles between images (the last bias
    read completes before the weight/bias banks switch). A single image also pays the initial
    fill, ``(K-1)*input_size + K`` pixels, and the pipeline latency (``taps + 6``). In steady
    state the engine needs one pixel per output position (``taps * filters / lanes`` cycles);
    it accepts up to one pixel per cycle while the ring buffer has room. The reference network
    (28x28, 32 filters of 3x3): 12,168 cycles per image at 16 lanes, 24,336 at 8 lanes and
    6,084 at 32 lanes.
    """,
        parameters="""
    channels : int
        Input channels multiplied per cycle and lane (must divide ``in_channels``): ``lanes *
        channels`` multipliers, ``taps // channels`` cycles per filter group; the weight words
        hold ``lanes * channels`` weights (:func:`weight_words`).
    read_stage : bool
        One more pipeline stage between the memories and the MAC array (the pixel word
        registered out of the block RAM before its channel group is selected, the weight word
        read a cycle later from registered addresses): one cycle more latency, for fast
        clocks; results and throughput are the same.
    sum_levels : int or None
        The MAC array's adder levels per pipeline stage (:class:`~cnnforge.hw.mac.MACArray`):
        ``None`` products and sums in one stage each; 2 for fast clocks on LUT fabric (products
        split into two registered 8x4 partial products). Results and throughput do not depend
        on it.""",
        type_errors="",
        value_errors="",
    )

    #: Idle cycles between the last tap of an image and the first tap of the next, with the next
    #: window ready (the last bias read is done, then one cycle switches the banks).
    SWITCH_CYCLES = 3

    def __init__(self, config, *, lanes, conv_w, conv_b, target="generic", channels=1,
                 read_stage=False, sum_levels=None):
        super().__init__(config, lanes=lanes, conv_w=conv_w, conv_b=conv_b, target=target,
                         channels=channels)
        if not isinstance(read_stage, bool):
            raise TypeError(f"read_stage must be a bool, not {read_stage!r}")
        self._read_stage = read_stage
        self._sum_levels = None if sum_levels is None else check_int("sum_levels", sum_levels, 1)
        self._mac_latency = MACArray.latency_for(taps=self._channels, sum_levels=sum_levels)
        k, n = config.kernel, config.input_size
        # Room for a window and a half, and at least for a window plus the pixels the next row
        # of positions needs (with stride 2 a row step moves the window by two input rows).
        need = (k - 1) * n + k
        self._buffer_depth = 1 << ceil_log2(max(2 * need, need + self.row_step + k))
        # A group lives taps cycles in the array, LATENCY + 2 in the pipeline, and up to taps more
        # in the consumer (a Requantize with fewer multipliers than lanes holds each beat for
        # lanes / parallel cycles): one entry per taps cycles of that, so the array never waits.
        self._fifo_depth = 2 + -(-(self._mac_latency + 2 + read_stage) // self._steps)

    @property
    def row_step(self):
        """Pixels from the top-left pixel of a row's last window to the next row's first:
        ``stride * input_size - (conv_size - 1) * stride``."""
        cfg = self._config
        return cfg.stride * cfg.input_size - (cfg.conv_size - 1) * cfg.stride

    @property
    def buffer_depth(self):
        """Pixels held by the ring buffer."""
        return self._buffer_depth

    @property
    def cycles_per_position(self):
        """Sustained cycles per output position: ``taps // channels * filters // lanes``."""
        return self._steps * self._groups

    @property
    def cycles_per_image(self):
        """Sustained cycles per image in a back-to-back stream (compute plus bank switch)."""
        return (self._config.conv_size ** 2 * self.cycles_per_position + self.SWITCH_CYCLES
                + self._read_stage)

    # -- hardware ---------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        cfg, widths = self._config, self._widths
        n, k, cin = cfg.input_size, cfg.kernel, cfg.in_channels
        stride = cfg.stride
        lanes, groups, taps = self._lanes, self._groups, self._steps
        channels = self._channels
        cin_steps = cin // channels       # channel groups per pixel
        last_pos = cfg.conv_size - 1
        depth = self._buffer_depth
        need = (k - 1) * n + k            # pixels from a window's top-left to its bottom-right + 1
        words = groups * taps
        acc_w, bias_w = widths.conv_acc, widths.conv_bias

        # -- pixel ring buffer ------------------------------------------------------------------
        # `ahead` counts the pixels written from the current position's top-left pixel `p0` on:
        # a position may start when its window is complete (ahead >= need); a pixel may be
        # written while the ring has room (ahead < depth). Both compare registers only.
        m.submodules.pixels = pixels = Memory(shape=8 * cin, depth=depth, init=[],
                                              attrs=_NO_RW_CHECK)
        pix_wr = pixels.write_port()
        pix_rd = pixels.read_port()
        wptr = Signal(range(depth))
        ahead = Signal(range(depth + 1))
        accept = Signal()
        # In the deep pipeline the input's ready comes from a copy of the fill count kept beside
        # the input (updated alike), so the scheduler's own count is not pulled toward it.
        ahead_in = Signal.like(ahead, attrs={REPLICA: 1}) if self._read_stage else ahead
        m.d.comb += [
            self.i.ready.eq(ahead_in < depth),
            accept.eq(self.i.valid & self.i.ready),
            pix_wr.addr.eq(wptr),
            pix_wr.data.eq(self.i.payload.as_value()),
            pix_wr.en.eq(accept),
        ]
        with m.If(accept):
            m.d.sync += wptr.eq(wptr + 1)

        # -- weight and bias memories, double-buffered per word ---------------------------------
        # cur[a]: bank the running image reads; newest[a]: bank holding the latest write. A write
        # goes to bank ~cur[a]; when an image starts, cur <= newest.
        w_init = [pack_fields(word, 8)
                  for word in weight_words(cfg, lanes, self._conv_w, channels)]
        w_init = w_init + [0] * ((1 << self._w_abits) - words)
        m.submodules.weights = wmem = Memory(shape=8 * lanes * channels, depth=2 << self._w_abits,
                                             init=w_init + w_init, attrs=_NO_RW_CHECK)
        chunks, per = self._b_chunks, self._b_per
        b_words = groups * chunks
        b_init = [pack_fields(word, bias_w)
                  for word in bias_words(cfg, lanes, self._conv_b, channels)]
        b_init = b_init + [0] * ((1 << self._b_abits) - b_words)
        m.submodules.biases = bmem = Memory(shape=bias_w * per, depth=2 << self._b_abits,
                                            init=b_init + b_init, attrs=_NO_RW_CHECK)
        w_wr, w_rd = wmem.write_port(), wmem.read_port()
        b_wr, b_rd = bmem.write_port(), bmem.read_port()

        # Reset-less: a reset does not undo writes (the memories keep their contents).
        w_cur, w_new = Signal(words, reset_less=True), Signal(words, reset_less=True)
        b_cur, b_new = Signal(b_words, reset_less=True), Signal(b_words, reset_less=True)
        w_new_next, b_new_next = Signal(words), Signal(b_words)
        swap = Signal()
        # (deep pipeline: the bank bits switch on a copy of `swap` beside them, below)
        swap_banks = Signal(attrs={REPLICA: 1}) if self._read_stage else swap
        for (en, addr, payload, size, cur, new, new_next, port) in (
                (self.w_en, self.w_addr, self.w_data, words, w_cur, w_new, w_new_next, w_wr),
                (self.b_en, self.b_addr, self.b_data, b_words, b_cur, b_new, b_new_next, b_wr)):
            write = Signal()
            bank = Signal()
            m.d.comb += [
                write.eq(en & (addr < size)),
                bank.eq(~cur.bit_select(addr, 1)),
                port.addr.eq(Cat(addr, bank)),
                port.data.eq(payload.as_value()),
                port.en.eq(write),
                new_next.eq(new),
            ]
            with m.If(write):
                m.d.comb += new_next.bit_select(addr, 1).eq(bank)
            m.d.sync += new.eq(new_next)
            with m.If(swap_banks):
                m.d.sync += cur.eq(new_next)

        # -- scheduler (stage 0): one tap per cycle ----------------------------------------------
        t = Signal(_index(taps))           # tap within the group
        c = Signal(_index(cin_steps))      # channel group of the tap
        kx = Signal(_index(k))             # kernel column of the tap
        g = Signal(_index(groups))         # filter group
        ox = Signal(_index(last_pos + 1))  # output position
        oy = Signal(_index(last_pos + 1))
        p0 = Signal(range(depth))          # ring address of the position's top-left pixel
        pa = Signal(range(depth))          # ring address of the tap's pixel
        wa = Signal(self._w_abits)         # weight word: g * taps + t
        at_image = Signal(init=1)          # the next position is an image's first
        swapped = Signal()                 # ... and the banks were switched for it
        quiet = Signal(range(self.SWITCH_CYCLES))     # cycles until the last bias read is done
        credit = Signal(range(self._fifo_depth + 1))  # results started and not yet delivered
        issue = Signal()
        start = Signal()
        advance = Signal()
        swap_request_raw = Signal()        # the banks may switch for the next image
        swap_request = Signal()
        # A window is complete: `ahead >= need` (in the deep pipeline from registers, below).
        window_ok = Signal()
        step = Signal(range(max(need, self.row_step, stride) + 1))

        if self._read_stage:
            # Flip-flops beside the counters instead of comparators after them: the scheduler's
            # enables (the fill count's update, the window-complete compare) start from
            # registers.
            last_tap = Signal(init=int(taps == 1))
            last_group = Signal(init=int(groups == 1))
            ox_last = Signal(init=int(last_pos == 0))
            oy_last = Signal(init=int(last_pos == 0))
        else:
            last_tap = t == taps - 1
            last_group = g == groups - 1
            ox_last = ox == last_pos
            oy_last = oy == last_pos
        if taps > 1:
            with m.If(t != 0):
                m.d.comb += issue.eq(1)
        group_start = (t == 0) if taps > 1 else 1
        with m.If(group_start):
            if groups > 1:
                with m.If(g != 0):
                    m.d.comb += [issue.eq(credit < self._fifo_depth),
                                 start.eq(credit < self._fifo_depth)]
            with m.If((g == 0) & window_ok):
                with m.If(at_image & ~swapped):
                    m.d.comb += swap_request_raw.eq(quiet == 0)
                with m.Elif(credit < self._fifo_depth):
                    m.d.comb += [issue.eq(1), start.eq(1)]

        if self._read_stage:
            # The bank switch registered (it enables every word's bank bit, all over the
            # device): requested once, done the next cycle; the image starts the cycle after.
            pending = Signal()
            m.d.comb += swap_request.eq(swap_request_raw & ~pending)
            m.d.sync += [swap.eq(swap_request), swap_banks.eq(swap_request)]
            with m.If(swap_request):
                m.d.sync += pending.eq(1)
            with m.If(swap):
                m.d.sync += pending.eq(0)
        else:
            m.d.comb += swap.eq(swap_request_raw)
        with m.If(swap):
            m.d.sync += swapped.eq(1)
        with m.If(start & (g == 0)):
            m.d.sync += [at_image.eq(0), swapped.eq(0)]

        with m.If(issue):
            m.d.sync += quiet.eq(self.SWITCH_CYCLES - 1)
        with m.Elif(quiet != 0):
            m.d.sync += quiet.eq(quiet - 1)

        # Output position step, in pixels, after the last tap of the last group.
        with m.If(~ox_last):
            m.d.comb += step.eq(stride)
        with m.Elif(~oy_last):
            m.d.comb += step.eq(self.row_step)
        with m.Else():
            m.d.comb += step.eq(need)
        m.d.comb += advance.eq(issue & last_tap & last_group)

        # In the deep pipeline the tap counters have copies beside their far loads, updated
        # alike from the scheduler's decision: `t`, `g`, `c` beside the weight address and
        # stage 1, the pixel address (`pa`, `p0`) beside the pixel memory; the scheduler's own
        # registers then load only the scheduler (placed as one cluster).
        def copy(sig):
            return Signal.like(sig, name=f"{sig.name}_copy", attrs={REPLICA: 1})
        if self._read_stage:
            t_w, g_w, c_w, pa_r, p0_r = copy(t), copy(g), copy(c), copy(pa), copy(p0)
        else:
            t_w, g_w, c_w, pa_r, p0_r = t, g, c, pa, p0
        pixel_done = (c == cin_steps - 1) if cin_steps > 1 else 1
        kx_done = (kx == k - 1) & pixel_done
        with m.If(issue):
            m.d.sync += [t.eq(Mux(last_tap, 0, t + 1)), wa.eq(Mux(wa == words - 1, 0, wa + 1))]
            # Pixel address of the next tap: c fastest, then kx, then ky.
            if cin_steps > 1:
                m.d.sync += c.eq(Mux(pixel_done, 0, c + 1))
            with m.If(pixel_done):
                m.d.sync += kx.eq(Mux(kx == k - 1, 0, kx + 1))
            with m.If(last_tap):
                m.d.sync += g.eq(Mux(last_group, 0, g + 1))
            for pa_, p0_ in {(id(pa), id(p0)): (pa, p0), (id(pa_r), id(p0_r)): (pa_r, p0_r)}.values():
                with m.If(pixel_done):
                    m.d.sync += pa_.eq(pa_ + 1)
                with m.If(kx_done):
                    with m.If(~last_tap):
                        m.d.sync += pa_.eq(pa_ + (n - k + 1))
                    with m.Elif(~last_group):
                        m.d.sync += pa_.eq(p0_)
                    with m.Else():
                        m.d.sync += [pa_.eq(p0_ + step), p0_.eq(p0_ + step)]
            if self._read_stage:
                m.d.sync += t_w.eq(Mux(last_tap, 0, t_w + 1))
                if cin_steps > 1:
                    m.d.sync += c_w.eq(Mux(pixel_done, 0, c_w + 1))
                with m.If(last_tap):
                    m.d.sync += g_w.eq(Mux(last_group, 0, g_w + 1))

        if self._read_stage:
            with m.If(issue):
                m.d.sync += last_tap.eq(Mux(last_tap, taps == 1, t == taps - 2))
                with m.If(last_tap):
                    m.d.sync += last_group.eq(Mux(last_group, groups == 1, g == groups - 2))
            with m.If(advance):
                m.d.sync += ox_last.eq(Mux(ox_last, last_pos == 0, ox == last_pos - 1))
                with m.If(ox_last):
                    m.d.sync += oy_last.eq(Mux(oy_last, last_pos == 0, oy == last_pos - 1))

        with m.If(advance):
            with m.If(~ox_last):
                m.d.sync += ox.eq(ox + 1)
            with m.Else():
                m.d.sync += [ox.eq(0), oy.eq(Mux(oy == last_pos, 0, oy + 1))]
                with m.If(oy == last_pos):
                    m.d.sync += at_image.eq(1)
        ahead_next = Signal.like(ahead)
        m.d.comb += ahead_next.eq(ahead + accept - Mux(advance, step, 0))
        m.d.sync += ahead.eq(ahead_next)
        if self._read_stage:
            m.d.sync += ahead_in.eq(ahead_in + accept - Mux(advance, step, 0))
        if self._read_stage:
            # From registers only: whether the window is complete if the position stays, and
            # if it moves on (by `step`, known from flip-flops), chosen by whether it moved.
            # A pixel accepted in the cycle before is not counted yet: never too early, at most
            # a cycle late when the input is exactly on time.
            ok_stay, ok_move, moved = Signal(), Signal(), Signal()
            m.d.sync += [ok_stay.eq(ahead >= need), ok_move.eq(ahead >= need + step),
                         moved.eq(advance)]
            m.d.comb += window_ok.eq(Mux(moved, ok_move, ok_stay))
        else:
            m.d.comb += window_ok.eq(ahead >= need)

        xfer = self.o.valid & self.o.ready
        m.d.sync += credit.eq(credit + start - xfer)

        m.d.comb += pix_rd.addr.eq(pa_r)
        if self._read_stage:
            # The weight word is read a cycle later, from registered address and bank bit (the
            # bank bit is a multiplexer over every word's bit), to arrive with the registered
            # pixel word. The address is the tap's `g * taps + t`, not the counter `wa`: no
            # enable from the scheduler's decision reaches across the die to the weights.
            word = t_w if groups == 1 else t_w + g_w * taps
            wa_r = Signal.like(wa, reset_less=True)
            bank_r = Signal(reset_less=True)
            m.d.sync += [wa_r.eq(word), bank_r.eq(w_cur.bit_select(word, 1))]
            m.d.comb += w_rd.addr.eq(Cat(wa_r, bank_r))
        else:
            m.d.comb += w_rd.addr.eq(Cat(wa, w_cur.bit_select(wa, 1)))

        # -- stage 1: memory data into the MAC array ---------------------------------------------
        s1_valid = Signal()
        s1_first = Signal(reset_less=True)
        s1_last = Signal(reset_less=True)
        s1_c = Signal.like(c, reset_less=True)
        s1_g = Signal.like(g, reset_less=True)
        s1_t = Signal.like(t, reset_less=True)
        m.d.sync += [
            s1_valid.eq(issue), s1_first.eq(t_w == 0), s1_last.eq(last_tap), s1_c.eq(c_w),
            s1_g.eq(g_w), s1_t.eq(t_w),
        ]
        pixel_word = pix_rd.data
        if self._read_stage:
            # One more stage: the pixel word registered straight out of the block RAM (whose
            # clock-to-output is most of a 100 MHz cycle), the channel group selected after it.
            stage2 = [Signal.like(x, name=f"{x.name}_r", reset_less=x is not s1_valid)
                      for x in (s1_valid, s1_first, s1_last, s1_c, s1_g, s1_t)]
            m.d.sync += [r.eq(x) for r, x in zip(stage2, (s1_valid, s1_first, s1_last, s1_c,
                                                          s1_g, s1_t))]
            s1_valid, s1_first, s1_last, s1_c, s1_g, s1_t = stage2
            pixel_word = Signal.like(pix_rd.data, name="pixel_word", reset_less=True)
            m.d.sync += pixel_word.eq(pix_rd.data)

        m.submodules.mac = mac = MACArray(lanes=lanes, taps=channels, a_signed=False,
                                          acc_width=acc_w, target=self._target,
                                          sum_levels=self._sum_levels)
        m.d.comb += [
            mac.i_valid.eq(s1_valid),
            mac.i_first.eq(s1_first),
            mac.i_last.eq(s1_last),
        ]
        group = (pixel_word.word_select(s1_c, 8 * channels) if cin_steps > 1 else pixel_word)
        for j in range(channels):
            m.d.comb += mac.a[j].eq(group[8 * j:8 * j + 8])
        for l in range(lanes):
            for j in range(channels):
                e = l * channels + j
                m.d.comb += mac.b[l][j].eq(w_rd.data[8 * e:8 * e + 8])

        # Biases: during taps j < chunks of a group, bias word g * chunks + j is read (two
        # cycles after the tap, so that the staging register changes only after the previous
        # group's o_valid) and shifted into the staging register, complete by the group's o_valid.
        jbits = chunks.bit_length() - 1
        # With a MAC array deeper than MACArray.LATENCY (pipelined sums), its results come
        # later: the bias reads follow as much later.
        b_valid, b_t, b_g = s1_valid, s1_t, s1_g
        for k in range(self._mac_latency - MACArray.LATENCY):
            delayed = (Signal(name=f"bias_valid_{k}"), Signal.like(s1_t, name=f"bias_t_{k}"),
                       Signal.like(s1_g, name=f"bias_g_{k}"))
            m.d.sync += [d.eq(x) for d, x in zip(delayed, (b_valid, b_t, b_g))]
            b_valid, b_t, b_g = delayed
        s2_load = Signal()
        s2_word = Signal(self._b_abits, reset_less=True)
        s3_load = Signal()
        m.d.sync += [
            s2_load.eq(b_valid & (b_t < chunks)),
            s2_word.eq(Cat(b_t[:jbits], b_g)),
            s3_load.eq(s2_load),
        ]
        m.d.comb += b_rd.addr.eq(Cat(s2_word, b_cur.bit_select(s2_word, 1)))
        staged = Signal(chunks * per * bias_w, reset_less=True)
        with m.If(s3_load):
            if chunks > 1:
                m.d.sync += staged.eq(Cat(staged[per * bias_w:], b_rd.data))
            else:
                m.d.sync += staged.eq(b_rd.data)
        result = Cat(
            (mac.acc[l] + staged[bias_w * l:bias_w * (l + 1)].as_signed())[:acc_w]
            for l in range(lanes))

        # -- output FIFO: registers, shifting towards entry 0 (the offered word) ------------------
        fdepth = self._fifo_depth
        entries = [Signal(acc_w * lanes, name=f"out_{j}", reset_less=True) for j in range(fdepth)]
        fill = Signal(range(fdepth + 1))
        write_at = Signal(range(fdepth + 1))
        m.d.comb += [
            self.o.valid.eq(fill != 0),
            self.o.payload.eq(entries[0]),
            write_at.eq(fill - xfer),
        ]
        for j in range(fdepth):
            with m.If(mac.o_valid & (write_at == j)):
                m.d.sync += entries[j].eq(result)
            if j + 1 < fdepth:
                with m.Elif(xfer):
                    m.d.sync += entries[j].eq(entries[j + 1])
        m.d.sync += fill.eq(fill + mac.o_valid - xfer)
        return m
