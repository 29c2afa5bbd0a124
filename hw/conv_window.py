"""A tap-parallel convolution engine: line buffers, a KxK window and one filter group per cycle."""

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from .conv import ConvInterface, bias_words, weight_words
from .mac import MACArray
from .util import check_int


__all__ = ["WindowConvEngine", "weight_words", "bias_words"]


#: Reads and writes of every memory here never touch the same word in the same cycle (writes go
#: to the bank no image reads, line buffers are written behind the read address).
_NO_RW_CHECK = {"no_rw_check": 1}


def _index(count):
    """Shape of a counter over ``range(count)``, at least one bit."""
    return unsigned(max(1, ceil_log2(count)))


def _banked(m, name, words, en, addr, swap, write_in_swap=True):
    """Per-word bank bits of a double-banked memory set (the ConvEngine scheme).

    ``cur[a]`` is the bank the running image reads, ``new[a]`` the bank holding the latest write
    of word ``a``. ``swap`` (an image's first read cycle) makes ``new`` current: the image
    reads bank ``use = swap ? new : cur`` from that cycle on. A write goes to ``~use[a]``, the
    bank no image reads from now on, and becomes the newest; so a write in the swap cycle
    itself goes to the next image. Returns ``(use, write, write_bank)``, ``use(indices,
    select)`` the bit ``use[indices[select]]``: the words' bits of ``new`` and ``cur`` are
    selected first and ``swap`` (late: it comes from the issue decision) picks between them
    last. With ``write_in_swap=False`` the caller guarantees that no write is decided in a swap
    cycle, and a write's bank is ``~cur[a]`` alone (``swap`` stays off the write's path).
    """
    cur = Signal(words, name=f"{name}_cur", reset_less=True)
    new = Signal(words, name=f"{name}_new", reset_less=True)
    write = Signal(name=f"{name}_write")
    wbank = Signal(name=f"{name}_wbank")
    new_next = Signal(words, name=f"{name}_new_next")

    def use(indices, select):
        indices = list(indices)
        return Mux(swap, Cat(*(new[a] for a in indices)).bit_select(select, 1),
                   Cat(*(cur[a] for a in indices)).bit_select(select, 1))

    m.d.comb += [
        write.eq(en & (addr < words)),
        wbank.eq(~use(range(words), addr) if write_in_swap
                 else ~Cat(*(cur[a] for a in range(words))).bit_select(addr, 1)),
        new_next.eq(new),
    ]
    with m.If(write):
        m.d.comb += new_next.bit_select(addr, 1).eq(wbank)
    m.d.sync += new.eq(new_next)
    with m.If(swap):
        m.d.sync += cur.eq(new)
    return use, write, wbank


class WindowConvEngine(ConvInterface):
    __doc__ = ConvInterface._doc_template.format(
        description="""
    'Valid' KxK convolution of a raster pixel stream: a whole window for ``lanes`` filters
    per cycle.

    Same ports, word formats, write-port semantics and output order as
    :class:`~cnnforge.hw.conv.ConvEngine` (:class:`~cnnforge.hw.conv.ConvInterface`), so the
    accelerator can take either; this one spends ``lanes * taps`` multipliers
    (``taps = K*K*in_channels``, a
    ``MACArray(lanes, taps, a_signed=False, acc_width=Widths(config).conv_acc)``) to finish a
    filter group in one cycle instead of ``taps``.

    Datapath
    --------
    ``K-1`` line buffers (``amaranth.lib.memory.Memory``, ``input_size`` words of
    ``in_channels`` bytes, asynchronous reads: distributed RAM) hold the rows above the current
    one. Every accepted pixel reads its column from them (addressed by the column register, so
    the read costs no cycle), shifts the column into the live KxK window register and writes the
    column, moved up by one row, back into the line buffers. A pixel that completes a window
    (``x, y >= K-1``) pushes the window (bytes in the golden tap order ``(ky, kx, c)``, plus an
    "image's first window" flag) into a window FIFO of :attr:`window_fifo_depth` entries. The
    window at the FIFO head is issued to the MAC array ``filters // lanes`` times, one filter
    group per cycle (group ``g``: the weights of filters ``g*lanes ..``), then popped. The FIFO
    lets the input run ahead of the array by the pixels that complete no window (an image's
    first ``K-1`` rows and ``K-1`` pixels, the ``K-1`` pixels starting each row), so that
    back-to-back images keep the array busy.

    Weights live in ``taps`` memories (one per tap, ``2 * groups`` words of ``lanes`` int8: two
    banks), all read in the issue cycle. Biases live in ``chunks`` memories (two banks of
    ``groups`` words of ``per`` biases) and are read as the group's sums leave the array; sums
    plus biases go into an output FIFO of :attr:`fifo_depth` entries. The MAC pipeline cannot
    stall: a group is issued only with a place in the output FIFO reserved for its result
    (credit counting; no combinational path from ``o.ready`` to the issue logic or ``i.ready``).
    """.strip(),
        write_timing="""They switch
    when an image's first window is issued: a write takes effect from the first image
    whose first group is issued after the write reaches the banks (weight writes are registered
    twice on the way and land in the memories two cycles after their bank is chosen, so four
    cycles after the write cycle; an image's first issue waits while a weight write is between
    its bank choice and landing, and comes at least ``(K-1)*N + K`` cycles after its first
    pixel). So everything written before an image's first pixel is accepted applies to it, and
    nothing written after the last pixel of image ``n`` was accepted affects image ``n`` (for
    ``conv_size**2 > window_fifo_depth + 1``: image ``n`` has started issuing by then). Bias
    writes travel the MAC array's latency (:attr:`MACArray.latency`) in cycles of delay, in step
    with the bias reads (a group's biases are read that many cycles after its weights).""",
        sections="""
    Latency
    -------
    With an idle engine, the first beat of a window is offered on ``o`` :attr:`latency`
    (MAC array latency + 5: :attr:`LATENCY` = 8 with ``sum_levels=None``, 10 with 2) cycles
    after the pixel completing the window was accepted (window FIFO 2, weight read 1, MAC
    array 3 or more, output FIFO 2); the window's other groups follow in the next cycles.

    Throughput
    ----------
    One filter group (``lanes * taps`` multiply-accumulates) per cycle while windows are
    available; at most one pixel per cycle. Back to back (input every cycle, output never
    stalled) an image takes :attr:`cycles_per_image` =
    ``max(input_size**2, conv_size**2 * filters // lanes)`` cycles, no idle cycle between
    images: the window FIFO is deep enough that the next image's fill is taken while the last
    windows of the current one are computed. When the array is the bottleneck a run of ``N``
    images, first pixel to last output beat, takes ``N * cycles_per_image + (K-1) * input_size
    + K + latency`` cycles (the first image's fill, the last window's latency); when the pixels
    are, ``N * input_size**2`` plus the windows still queued at the last pixel (up to
    ``window_fifo_depth * groups`` cycles) plus ``latency``. The reference network (28x28, 32
    filters of 3x3): at 16 lanes (144 multipliers) 1,352 cycles per image (4 images back to
    back: 4 * 1,352 + 59 + 8 = 5,475 cycles); at 8 lanes (72) 2,704 (2 images: 5,475); at 32
    lanes (288) the pixels limit it to 784 (676 issue cycles).

    Resources
    ---------
    ``lanes * taps`` multipliers (one MULT18X18D each on ECP5), ``lanes`` adder trees of
    ``taps`` products. Memories: ``K-1`` line buffers of ``input_size x 8*in_channels`` bits
    (distributed RAM), the window FIFO (``window_fifo_depth - 1`` words of ``8*taps + 1`` bits;
    reference at 16 lanes: 31 x 73), ``taps`` weight memories of ``2*groups x 8*lanes`` bits
    (two read ports each: both banks), ``chunks`` bias memories of ``2*groups x
    per*conv_bias`` bits, the output FIFO (``fifo_depth - 1`` words of ``lanes * conv_acc``
    bits). Registers: the KxK window and the FIFOs' output registers, one issue window
    (``8*taps``), ``2*groups*(taps + chunks)`` bank bits, the bias write delay line.
    """,
        parameters="""
    sum_levels : int or None
        The MAC array's adder levels per pipeline stage (:class:`~cnnforge.hw.mac.MACArray`):
        ``None`` the whole tap sum in one cycle; 2 for fast clocks (the latency grows by 2 for
        ``taps`` = 9). Results and throughput do not depend on it.""",
        type_errors=" or ``sum_levels`` (if not None)",
        value_errors=", or ``sum_levels`` is below 1",
    )

    #: Cycles from accepting the pixel that completes a window to its first beat on ``o``
    #: (idle engine) with ``sum_levels=None``; :attr:`latency` in general.
    LATENCY = MACArray.LATENCY + 5

    def __init__(self, config, *, lanes, conv_w, conv_b, target="generic", sum_levels=None):
        super().__init__(config, lanes=lanes, conv_w=conv_w, conv_b=conv_b, target=target)
        if config.stride != 1:
            raise ValueError(f"the window engine computes stride 1 only, not stride "
                             f"{config.stride} (use ConvEngine)")
        self._sum_levels = None if sum_levels is None else check_int("sum_levels", sum_levels, 1)
        self._mac_latency = MACArray.latency_for(taps=self._taps, sum_levels=sum_levels)
        # Output FIFO: a group's place is reserved at issue and freed when its beat leaves;
        # issue -> FIFO write is 1 + MAC latency cycles, FIFO write -> offered 2, and one to
        # see the credit come back: 7 cycles of round trip for a 3-cycle array, 8 places keep
        # the array busy.
        self._fifo_depth = self._mac_latency + 5
        # Window FIFO: at an image boundary the input takes the next image's fill
        # ((K-1)*N + K pixels, one per cycle) while the array works through the buffered
        # windows (`groups` cycles each), plus the FIFO's own 2-cycle latency (32 windows for
        # the reference network at 16 lanes). With one group per window the array keeps up
        # with the pixels and a short FIFO does.
        n, k = config.input_size, config.kernel
        fill = (k - 1) * n + k
        if self._groups == 1:
            self._wfifo_depth = 4
        else:
            self._wfifo_depth = max(4, -(-(fill + 2) // self._groups) + 1)

    @property
    def latency(self):
        """Cycles from accepting the pixel that completes a window to its first beat on ``o``
        (idle engine): the MAC array's latency + 5."""
        return self._mac_latency + 5

    @property
    def multipliers(self):
        """int8 multipliers of the MAC array: ``lanes * taps``."""
        return self._lanes * self._taps

    @property
    def window_fifo_depth(self):
        """Windows the input may run ahead of the issue (window FIFO entries)."""
        return self._wfifo_depth

    @property
    def cycles_per_position(self):
        """Issue cycles per output position: ``filters // lanes``."""
        return self._groups

    @property
    def cycles_per_image(self):
        """Sustained cycles per image, back to back (see Throughput)."""
        cfg = self._config
        return max(cfg.conv_size ** 2 * self._groups, cfg.input_size ** 2)

    # -- hardware ---------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        cfg, widths = self._config, self._widths
        k, n, cin = cfg.kernel, cfg.input_size, cfg.in_channels
        lanes, groups, taps = self._lanes, self._groups, self._taps
        chunks, per = self._b_chunks, self._b_per
        bias_w, acc_w = widths.conv_bias, widths.conv_acc
        pixel = data.ArrayLayout(unsigned(8), cin)

        # --- Input position and line buffers. -------------------------------------------------
        x = Signal(_index(n))
        y = Signal(_index(n))
        x_next = Signal.like(x)
        m.d.comb += x_next.eq(Mux(x == n - 1, 0, x + 1))
        accept = Signal()
        completes = Signal()       # the pixel at (x, y) completes a window
        first = Signal()           # ... the image's first window
        m.d.comb += [completes.eq(((x >= k - 1) & (y >= k - 1)) if k > 1 else 1),
                     first.eq((x == k - 1) & (y == k - 1))]

        # Line buffer j holds row y-(K-1)+j at column x (j = 0 the oldest).
        column = []                # pixels of column x, top (row y-K+1) to bottom (row y)
        ports = []
        for j in range(k - 1):
            mem = Memory(shape=pixel, depth=n, init=[], attrs=_NO_RW_CHECK)
            m.submodules[f"line{j}"] = mem
            # Asynchronous read at the column register x (distributed RAM): no path from the
            # input handshake to the read address. Column x is only written on an accept,
            # with the value read in that same cycle, so the read sees what a registered read
            # of the next column would have.
            rd, wr = mem.read_port(domain="comb"), mem.write_port()
            m.d.comb += rd.addr.eq(x)
            ports.append(wr)
            column.append(rd.data)
        column.append(self.i.payload)
        for j, wr in enumerate(ports):
            m.d.comb += [wr.addr.eq(x), wr.data.eq(column[j + 1]), wr.en.eq(accept)]

        # Live window: window[r][c], r = ky, c = kx; the new column enters at c = K-1.
        window = [[Signal(pixel, name=f"win_{r}_{c}", reset_less=True) for c in range(k)]
                  for r in range(k)]
        shifted = [[window[r][c + 1] if c + 1 < k else column[r] for c in range(k)]
                   for r in range(k)]
        with m.If(accept):
            for r in range(k):
                for c in range(k):
                    m.d.sync += window[r][c].eq(shifted[r][c])
            m.d.sync += x.eq(x_next)
            with m.If(x == n - 1):
                m.d.sync += y.eq(Mux(y == n - 1, 0, y + 1))

        # --- Window FIFO: taps bytes in the golden order (ky, kx, c), then the first flag. -----
        m.submodules.windows = wfifo = SyncFIFOBuffered(width=8 * taps + 1,
                                                         depth=self._wfifo_depth)
        m.d.comb += [
            wfifo.w_data.eq(Cat(*(shifted[r][c] for r in range(k) for c in range(k)), first)),
            wfifo.w_en.eq(accept & completes),
            self.i.ready.eq(~completes | wfifo.w_rdy),
            accept.eq(self.i.valid & self.i.ready),
        ]
        head = wfifo.r_data[:8 * taps]
        head_first = wfifo.r_data[8 * taps]

        # --- Issue (cycle 0): group g of the head window, a place in the output FIFO reserved.
        group = Signal(_index(groups))
        credit = Signal(range(self._fifo_depth + 1))
        credit_ok = Signal(init=1)  # credit < fifo_depth, registered (issue from flip-flops)
        w_moving = Signal(name="w_write3")  # a weight write between its bank choice and landing
        w_landing = Signal(name="w_en4")    # a weight write lands at the end of this cycle
        issue = Signal()
        last_group = Signal()
        opens = Signal()           # the head group would start an image (switch the banks)
        swap = Signal()            # an image's first issue: the weight/bias banks switch
        b_en1 = Signal(name="b_en_1", reset_less=True)     # a bias write one cycle old
        w_deciding = Signal(name="w_write2")    # a weight write's bank is chosen this cycle
        m.d.comb += [
            opens.eq((group == 0) & head_first),
            # The banks do not switch while a weight write's bank is chosen (so its choice
            # needs no switch decision: the issue logic stays off the path into the bank
            # register) nor until it has landed (its bank was chosen with the
            # banks before the switch: the image would read its word before it lands);
            # nor when a bias write would land as the delayed switch reaches the biases (the
            # same, L cycles later: see "Biases").
            issue.eq(wfifo.r_rdy & credit_ok
                     & ~(opens & (w_deciding | w_moving | w_landing | b_en1))),
            last_group.eq(group == groups - 1),
            wfifo.r_en.eq(issue & last_group),
            swap.eq(issue & opens),
        ]
        with m.If(issue):
            m.d.sync += group.eq(Mux(last_group, 0, group + 1))
        xfer = Signal()
        credit_next = Signal.like(credit)
        m.d.comb += [xfer.eq(self.o.valid & self.o.ready),
                     credit_next.eq(credit + issue - xfer)]
        m.d.sync += [credit.eq(credit_next), credit_ok.eq(credit_next < self._fifo_depth)]

        # Weights: memory t holds, at (bank, g), the lanes' weights of group g at tap t.
        w_words = weight_words(cfg, lanes, self._conv_w)
        # The write port is registered twice before the bank machinery: the port's sources may
        # sit far away, and the division of the address by taps (a constant: group and tap)
        # is deep logic that gets a cycle of its own.
        # The bank chosen for a write (cycle 2) is registered with it before the memories are
        # written, and the memories' write address and per-tap write enables are registered
        # once more (cycle 4, the end of which it lands): the word select of the bank bits and
        # the tap decode each reach the distributed RAM across the die, so both hops start at
        # flip-flops.
        # Writes take effect four cycles later, far less than an image's fill before its swap.
        w_en1, w_en2 = Signal(name="w_en1"), Signal(name="w_en2")
        w_addr1 = Signal.like(self.w_addr, name="w_addr1", reset_less=True)
        w_addr2 = Signal.like(self.w_addr, name="w_addr2", reset_less=True)
        w_data1 = Signal.like(self.w_data, name="w_data1", reset_less=True)
        w_data2 = Signal.like(self.w_data, name="w_data2", reset_less=True)
        w_group = Signal(range(max(2, groups)), name="w_group2", reset_less=True)
        w_tap = Signal(range(max(2, taps)), name="w_tap2", reset_less=True)
        m.d.sync += [
            w_en1.eq(self.w_en), w_addr1.eq(self.w_addr), w_data1.eq(self.w_data),
            w_en2.eq(w_en1), w_addr2.eq(w_addr1), w_data2.eq(w_data1),
            w_group.eq(w_addr1 // taps), w_tap.eq(w_addr1 % taps),
            w_deciding.eq(w_en1 & (w_addr1 < groups * taps)),
        ]
        w_use, w_write, w_wbank = _banked(m, "w", groups * taps, w_en2, w_addr2, swap,
                                          write_in_swap=False)
        w_bank3 = Signal(name="w_bank3", reset_less=True)
        w_group3 = Signal.like(w_group, name="w_group3", reset_less=True)
        w_tap3 = Signal.like(w_tap, name="w_tap3", reset_less=True)
        w_data3 = Signal.like(self.w_data, name="w_data3", reset_less=True)
        m.d.sync += [w_moving.eq(w_write), w_bank3.eq(w_wbank), w_group3.eq(w_group),
                     w_tap3.eq(w_tap), w_data3.eq(w_data2)]
        w_addr4 = Signal(range(2 * groups), name="w_addr4", reset_less=True)
        w_data4 = Signal.like(self.w_data, name="w_data4", reset_less=True)
        w_we4 = Signal(taps, name="w_we4")
        m.d.sync += [w_landing.eq(w_moving), w_addr4.eq(Mux(w_bank3, groups, 0) + w_group3),
                     w_data4.eq(w_data3)]
        for t in range(taps):
            m.d.sync += w_we4[t].eq(w_moving & (w_tap3 == t))
        w_rows = []
        for t in range(taps):
            init = [w_words[g * taps + t] for g in range(groups)]
            mem = Memory(shape=data.ArrayLayout(signed(8), lanes), depth=2 * groups,
                         init=init + init, attrs=_NO_RW_CHECK)
            m.submodules[f"weights{t}"] = mem
            # Both banks are read (two read ports addressed by the group counter alone) and
            # the bank picked after the read registers: the bank decision (from the issue, the
            # swap) reaches a flip-flop per tap, not the address pins of every memory.
            rd0, rd1, wr = mem.read_port(), mem.read_port(), mem.write_port()
            bank = Signal(name=f"w_bank_read{t}")
            m.d.sync += bank.eq(w_use((g * taps + t for g in range(groups)), group))
            m.d.comb += [
                rd0.addr.eq(group),
                rd1.addr.eq(groups + group),
                wr.addr.eq(w_addr4),
                wr.data.eq(w_data4),
                wr.en.eq(w_we4[t]),
            ]
            w_rows.append(Mux(bank, rd1.data.as_value(), rd0.data.as_value()))

        # --- Cycle 1: weights read; the group enters the MAC array (sums valid in cycle 4). --
        valid1 = Signal()
        window1 = Signal(8 * taps, reset_less=True)
        m.d.sync += [valid1.eq(issue), window1.eq(head)]
        m.submodules.mac = mac = MACArray(lanes=lanes, taps=taps, a_signed=False,
                                          acc_width=acc_w, target=self._target,
                                          sum_levels=self._sum_levels)
        m.d.comb += [mac.i_valid.eq(valid1), mac.i_first.eq(1), mac.i_last.eq(1),
                     mac.a.eq(window1)]
        for lane in range(lanes):
            for t in range(taps):
                m.d.comb += mac.b[lane][t].eq(w_rows[t].word_select(lane, 8))

        # --- Biases: the whole bank machinery runs the MAC latency behind the issue (group,
        # swap and the write port delayed alike), so a group's biases are read in that cycle,
        # arrive with its sums, and come from the bank its weights came from.
        # A bias write is registered once more after its bank is chosen, so that the memories'
        # write address comes from flip-flops (the bank decision is logic, and the distributed
        # RAM it addresses lies across the die); it lands a cycle after the decision. The only
        # read that could see the word before it lands is the first group after a switch of
        # the banks in that cycle, and the issue does not switch banks while a bias write
        # is one cycle old at the port: it would reach the switch exactly then.
        b_group, b_swap = group, swap
        b_en, b_addr, b_data = self.b_en, self.b_addr, self.b_data
        m.d.sync += b_en1.eq(self.b_en)
        for d in range(1, mac.latency + 1):
            nxt = (Signal.like(b_group, name=f"b_group_{d}", reset_less=True),
                   Signal(name=f"b_swap_{d}", reset_less=True),
                   Signal(name=f"b_en_{d}", reset_less=True),
                   Signal.like(self.b_addr, name=f"b_addr_{d}", reset_less=True),
                   Signal.like(self.b_data, name=f"b_data_{d}", reset_less=True))
            m.d.sync += [nxt[0].eq(b_group), nxt[1].eq(b_swap), nxt[2].eq(b_en),
                         nxt[3].eq(b_addr), nxt[4].eq(b_data)]
            b_group, b_swap, b_en, b_addr, b_data = nxt
        b_use, b_write, b_wbank = _banked(m, "b", groups * chunks, b_en, b_addr, b_swap)
        jbits = ceil_log2(chunks)
        b_landing = Signal(name="b_landing")
        b_land_addr = Signal(range(2 * groups), name="b_land_addr", reset_less=True)
        b_land_chunk = Signal(max(1, jbits), name="b_land_chunk", reset_less=True)
        b_land_data = Signal.like(b_data, name="b_land_data", reset_less=True)
        m.d.sync += [b_landing.eq(b_write),
                     b_land_addr.eq(Mux(b_wbank, groups, 0) + b_addr[jbits:]),
                     b_land_data.eq(b_data)]
        if jbits:
            m.d.sync += b_land_chunk.eq(b_addr[:jbits])
        b_words = bias_words(cfg, lanes, self._conv_b)
        b_rows = []
        for j in range(chunks):
            init = [b_words[g * chunks + j] for g in range(groups)]
            mem = Memory(shape=data.ArrayLayout(signed(bias_w), per), depth=2 * groups,
                         init=init + init, attrs=_NO_RW_CHECK)
            m.submodules[f"biases{j}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            bank = b_use((g * chunks + j for g in range(groups)), b_group)
            m.d.comb += [
                rd.addr.eq(Mux(bank, groups, 0) + b_group),
                wr.addr.eq(b_land_addr),
                wr.data.eq(b_land_data),
                wr.en.eq(b_landing & ((b_land_chunk == j) if jbits else 1)),
            ]
            b_rows.append(rd.data)

        # --- Output FIFO. ----------------------------------------------------------------------
        out_shape = data.ArrayLayout(signed(acc_w), lanes)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=out_shape.size,
                                                    depth=self._fifo_depth)
        result = Signal(out_shape)
        for lane in range(lanes):
            m.d.comb += result[lane].eq(mac.acc[lane] + b_rows[lane // per][lane % per])
        m.d.comb += [
            fifo.w_data.eq(result), fifo.w_en.eq(mac.o_valid),
            self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        return m
