"""A tap-parallel convolution engine: line buffers, a KxK window and one filter group per cycle."""

from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .conv import _bias_shape, _check_lanes, check_conv_arrays, weight_words
from .mac import MACArray
from .params import NetworkConfig, Widths


__all__ = ["WindowConvEngine"]


class WindowConvEngine(wiring.Component):
    """'Valid' KxK convolution of a raster pixel stream: a whole window for ``lanes`` filters
    per cycle.

    Same ports, word formats and output order as :class:`~cnnforge.hw.conv.ConvEngine`, so the
    accelerator can take either; this one spends ``lanes * taps`` multipliers
    (``taps = K*K*in_channels``) to finish a filter group in one cycle instead of ``taps``.

    ``K-1`` line buffers (block RAM, ``input_size`` words of ``in_channels`` bytes) hold the
    rows above the current one. Every accepted pixel reads its column from them (addressed one
    pixel ahead, so the read costs no cycle), shifts the column into the live KxK window
    register and rotates the column back into the line buffers. A pixel that completes a window
    (``x, y >= K-1``) copies the window into a pending register, and from there into the issue
    register, from which the ``filters // lanes`` groups are issued on consecutive cycles to a
    ``MACArray(lanes, taps)``. The input runs up to one window ahead of the issue, so the
    pixels that complete no window (row starts, the first rows) cost no issue cycles. Biases
    are added as results leave the array, on their way into the output FIFO; a group is issued
    only with a FIFO place reserved (credit counting).

    Weight and bias writes (the ConvEngine formats, see :func:`~cnnforge.hw.conv.weight_words`
    and :func:`~cnnforge.hw.conv.bias_words`) take effect in the next cycle: write between
    images for a coherent result.

    Latency
    -------
    With an idle engine, the first group of a window is offered on ``o``
    ``MACArray.LATENCY + 4`` cycles after the pixel completing the window was accepted.

    Throughput
    ----------
    One filter group (``lanes * taps`` multiply-accumulates) per cycle while windows are
    available and one pixel per cycle. Back to back, an image takes :attr:`cycles_per_image`
    cycles: the ``conv_size**2 * filters // lanes`` issue cycles, plus the part of the next
    image's first ``K-1`` rows (``(K-1) * (input_size + 1)`` pixels that complete no window)
    that the one pending window cannot hide; or one cycle per pixel if that is more. The
    reference network at 16 lanes: 1,352 issue cycles + 56 = 1,408 cycles per image.

    Parameters, members
    -------------------
    As :class:`~cnnforge.hw.conv.ConvEngine` (``target`` selects the MAC array variant).
    """

    def __init__(self, config, *, lanes, conv_w, conv_b, target="generic"):
        if not isinstance(config, NetworkConfig):
            raise TypeError(f"config must be a NetworkConfig, not {config!r}")
        lanes = _check_lanes(config, lanes)
        if target not in MACArray.TARGETS:
            raise ValueError(f"target must be one of {', '.join(map(repr, MACArray.TARGETS))}, "
                             f"not {target!r}")
        self._conv_w, self._conv_b = check_conv_arrays(config, conv_w, conv_b)
        widths = Widths(config)
        self._config, self._widths, self._lanes, self._target = config, widths, lanes, target
        self._groups = config.filters // lanes
        self._taps = config.taps
        self._b_chunks, self._b_per = _bias_shape(lanes, self._taps)
        # Issue to FIFO: 1 (weight read) + LATENCY cycles, and the FIFO's own two; margin for
        # a consumer that holds a beat.
        self._fifo_depth = MACArray.LATENCY + 5
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), config.in_channels))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(widths.conv_acc), lanes))),
            "w_en": In(1),
            "w_addr": In(unsigned(max(1, ceil_log2(self._groups * self._taps)))),
            "w_data": In(data.ArrayLayout(signed(8), lanes)),
            "b_en": In(1),
            "b_addr": In(unsigned(max(1, ceil_log2(self._groups * self._b_chunks)))),
            "b_data": In(data.ArrayLayout(signed(widths.conv_bias), self._b_per)),
        })

    @property
    def config(self):
        return self._config

    @property
    def groups(self):
        return self._groups

    @property
    def bias_word_shape(self):
        return self._b_chunks, self._b_per

    @property
    def multipliers(self):
        return self._lanes * self._taps

    @property
    def cycles_per_image(self):
        """Sustained cycles per image, back to back (see Throughput)."""
        cfg = self._config
        fill = (cfg.kernel - 1) * (cfg.input_size + 1)
        return max(cfg.conv_size ** 2 * self._groups + max(0, fill - self._groups),
                   cfg.input_size ** 2)

    def elaborate(self, platform):
        m = Module()
        cfg, widths = self._config, self._widths
        k, n, cin = cfg.kernel, cfg.input_size, cfg.in_channels
        lanes, groups, taps = self._lanes, self._groups, self._taps
        pixel = data.ArrayLayout(unsigned(8), cin)

        # --- Input position and line buffers. -------------------------------------------------
        x = Signal(range(max(2, n)))
        y = Signal(range(max(2, n)))
        x_next = Signal.like(x)
        m.d.comb += x_next.eq(Mux(x == n - 1, 0, x + 1))
        accept = Signal()
        completes = Signal()       # the pixel at (x, y) completes a window
        m.d.comb += completes.eq((x >= k - 1) & (y >= k - 1))

        # lines[j] holds row y-(K-1)+j at column x (j = 0 the oldest).
        lines = []
        column = []                # pixels of column x, top (row y-K+1) to bottom (row y)
        for j in range(k - 1):
            mem = Memory(shape=pixel, depth=n, init=[], attrs={"no_rw_check": 1})
            m.submodules[f"line{j}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            # Read one pixel ahead: on an accept the port takes the next column.
            m.d.comb += rd.addr.eq(Mux(accept, x_next, x))
            lines.append((rd, wr))
            column.append(rd.data)
        column.append(self.i.payload)
        for j, (rd, wr) in enumerate(lines):
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

        # --- Issue: windows wait in a one-window pending register, so the input runs a window
        # ahead and the pixels that complete no window hide behind issue cycles. Taps in the
        # golden order (ky, kx, c): byte t of the MAC operand.
        window_shape = data.ArrayLayout(unsigned(8), taps)
        pending = Signal(window_shape, reset_less=True)
        pending_valid = Signal()
        issue_window = Signal(window_shape, reset_less=True)
        busy = Signal()
        group = Signal(range(max(2, groups)))
        credit = Signal(range(self._fifo_depth + 1))
        issue = Signal()
        last_issue = Signal()
        move = Signal()            # pending -> issue register
        m.d.comb += [
            issue.eq(busy & (credit < self._fifo_depth)),
            last_issue.eq(issue & (group == groups - 1)),
            move.eq(pending_valid & (~busy | last_issue)),
            self.i.ready.eq(~completes | ~pending_valid | move),
            accept.eq(self.i.valid & self.i.ready),
        ]
        with m.If(accept & completes):
            m.d.sync += [pending_valid.eq(1),
                         pending.eq(Cat(*(shifted[r][c] for r in range(k) for c in range(k))))]
        with m.Elif(move):
            m.d.sync += pending_valid.eq(0)
        with m.If(move):
            m.d.sync += [busy.eq(1), group.eq(0), issue_window.eq(pending)]
        with m.Elif(last_issue):
            m.d.sync += busy.eq(0)
        with m.Elif(issue):
            m.d.sync += group.eq(group + 1)

        # Weights: one memory per tap, word g = the lanes' weights of group g at that tap.
        words = weight_words(cfg, lanes, self._conv_w)
        w_rows = []
        for t in range(taps):
            mem = Memory(shape=data.ArrayLayout(signed(8), lanes), depth=groups,
                         init=[[int(v) for v in words[g * taps + t]] for g in range(groups)])
            m.submodules[f"weights{t}"] = mem
            rd, wr = mem.read_port(), mem.write_port()
            m.d.comb += [
                rd.addr.eq(group),
                wr.addr.eq(self.w_addr // taps), wr.data.eq(self.w_data),
                wr.en.eq(self.w_en & (self.w_addr % taps == t)),
            ]
            w_rows.append(rd.data)

        # Stage 1 (weights read): present the group to the array.
        valid1 = Signal()
        window1 = Signal.like(issue_window, reset_less=True)
        m.d.sync += [valid1.eq(issue), window1.eq(issue_window)]
        m.submodules.mac = mac = MACArray(lanes=lanes, taps=taps, a_signed=False,
                                          acc_width=widths.conv_acc, target=self._target)
        m.d.comb += [mac.i_valid.eq(valid1), mac.i_first.eq(1), mac.i_last.eq(1),
                     mac.a.eq(window1)]
        for lane in range(lanes):
            for t in range(taps):
                m.d.comb += mac.b[lane][t].eq(w_rows[t][lane])

        # --- Biases (registers, the ConvEngine word format) and the output FIFO. -------------
        chunks, per = self._b_chunks, self._b_per
        bias = Array(Array(Signal(signed(widths.conv_bias), name=f"bias_{g}_{l}",
                                  init=int(self._conv_b[g * lanes + l]))
                           for l in range(lanes)) for g in range(groups))
        with m.If(self.b_en):
            for g in range(groups):
                for j in range(chunks):
                    with m.If(self.b_addr == g * chunks + j):
                        for e in range(per):
                            if j * per + e < lanes:
                                m.d.sync += bias[g][j * per + e].eq(self.b_data[e])

        out_group = Signal(range(max(2, groups)))
        with m.If(mac.o_valid):
            m.d.sync += out_group.eq(Mux(out_group == groups - 1, 0, out_group + 1))
        out_shape = data.ArrayLayout(signed(widths.conv_acc), lanes)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=out_shape.size, depth=self._fifo_depth)
        result = Signal(out_shape)
        for lane in range(lanes):
            m.d.comb += result[lane].eq(mac.acc[lane] + bias[out_group][lane])
        m.d.comb += [
            fifo.w_data.eq(result), fifo.w_en.eq(mac.o_valid),
            self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        m.d.sync += credit.eq(credit + issue - (self.o.valid & self.o.ready))
        return m
