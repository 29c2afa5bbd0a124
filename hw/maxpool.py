"""Streaming max-pool with argmax over channel-group beats in raster order."""


from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .util import ChannelBlock, check_config, check_lanes
from .params import Widths


__all__ = ["MaxPool"]


class MaxPool(ChannelBlock):
    """``pool x pool`` max-pool, stride ``pool``, with the argmax of every window, on a stream.

    Bit-identical to :func:`cnnforge.sim.reference.golden.maxpool`: the value is the window maximum and
    ``argmax = dy * pool + dx`` is the first maximum in raster order (a later position replaces
    the running maximum only when strictly greater).

    The input is the Requantize output: the ``conv_size x conv_size`` activations in raster
    order (y, then x), ``filters // lanes`` beats per position, beat ``g`` holding channels
    ``g*lanes .. g*lanes + lanes - 1``. The output is one beat per pooled position (raster order)
    and channel group, in the same group order. Positions are counted from reset; images follow
    each other with no gap (an image is exactly ``conv_size**2 * filters // lanes`` beats).

    The running maxima (value and argmax for every lane) of the windows of the current pool
    row live in a :class:`~amaranth.lib.memory.Memory` of ``conv_size // pool * filters // lanes``
    entries, addressed by ``(window column, group)``; every beat reads its entry (synchronous,
    write-transparent read port: a beat sees the update of the beat just before it) and writes
    it back, except the last beat of a window, which goes to the output register instead.

    Pipeline::

        cycle t:     beat transferred; position counters decode first/last-of-window and the
                     entry address, which goes to the read port
        cycle t + 1: stage 1 holds the beat; compare with the entry read; write back, or (last
                     position of the window) load o.payload and raise o.valid
        cycle t + 2: the pooled beat is offered on ``o``

    Latency
    -------
    :attr:`LATENCY` = 2 cycles: the last beat of a window transferred in cycle ``t`` is offered
    on ``o`` in cycle ``t + 2``.

    Throughput
    ----------
    One input beat per cycle, sustained, across positions and back-to-back images. ``i.ready``
    stays high unless the output is backpressured: it drops only while stage 1 holds the last
    beat of a window and the previous output has not been taken (``o.valid & ~o.ready``).

    Resources
    ---------
    No multipliers; ``lanes`` byte comparators and the running-maximum memory of
    :attr:`memory_depth` x ``lanes * (8 + pool_index)`` bits (26 x 160 for the reference network
    at 16 lanes: 10 ``SB_RAM40_4K``, bound by the width).

    Parameters
    ----------
    config : NetworkConfig
        The network: ``conv_size``, ``pool``, ``filters``; argmax width
        :attr:`~cnnforge.hw.params.Widths.pool_index`.
    lanes : int
        Channels per beat; must divide ``config.filters``.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(unsigned(8), lanes)))``
        Activations.
    o : ``Out(stream.Signature(data.StructLayout({"value": data.ArrayLayout(unsigned(8), lanes),
    "argmax": data.ArrayLayout(unsigned(pool_index), lanes)})))``
        Pooled activations and the window position of each.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`NetworkConfig` or ``lanes`` is not an integer.
    ValueError
        If ``lanes`` does not divide ``filters``.
    """

    LATENCY = 2

    def __init__(self, config, *, lanes):
        self._config = check_config(config)
        self._lanes = lanes = check_lanes(config, lanes)
        self._widths = Widths(config)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(self._widths.act), lanes))),
            "o": Out(stream.Signature(self.result_layout)),
        })

    @property
    def result_layout(self):
        return data.StructLayout({
            "value": data.ArrayLayout(unsigned(self._widths.act), self._lanes),
            "argmax": data.ArrayLayout(unsigned(self._widths.pool_index), self._lanes),
        })

    @property
    def memory_depth(self):
        """Entries of the running-maximum memory: ``conv_size // pool * filters // lanes``."""
        return self._config.pool_size * self.groups

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes, groups, pool = self._lanes, self.groups, cfg.pool
        cols = cfg.pool_size
        depth = self.memory_depth
        layout = self.result_layout

        m.submodules.partial = mem = Memory(shape=layout, depth=depth, init=[])
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=(wr,))

        # Stage 1 and its handshake: it can always finish, except a window's last beat while the
        # output register is still full.
        v1 = Signal()
        first1 = Signal()
        emit1 = Signal()
        index1 = Signal(unsigned(self._widths.pool_index))
        addr1 = Signal(range(depth))
        value1 = Signal(self.i.payload.shape(), reset_less=True)
        adv = Signal()
        m.d.comb += adv.eq(~v1 | ~emit1 | ~self.o.valid | self.o.ready)

        # Position counters: group, column inside the window, window column, row inside the
        # window. conv_size is a multiple of pool, so rows wrap at the image end: no row count.
        g = Signal(range(groups))
        dx = Signal(range(pool))
        wx = Signal(range(cols))
        dy = Signal(range(pool))
        addr = Signal(range(depth))
        m.d.comb += [
            self.i.ready.eq(adv),
            addr.eq(wx * groups + g),
            rd.addr.eq(addr),
            rd.en.eq(adv),
        ]
        with m.If(self.i.valid & adv):
            last_g = g == groups - 1
            last_dx = dx == pool - 1
            last_wx = wx == cols - 1
            m.d.sync += g.eq(Mux(last_g, 0, g + 1))
            with m.If(last_g):
                m.d.sync += dx.eq(Mux(last_dx, 0, dx + 1))
                with m.If(last_dx):
                    m.d.sync += wx.eq(Mux(last_wx, 0, wx + 1))
                    with m.If(last_wx):
                        m.d.sync += dy.eq(Mux(dy == pool - 1, 0, dy + 1))
        with m.If(adv):
            m.d.sync += [
                v1.eq(self.i.valid),
                first1.eq((dy == 0) & (dx == 0)),
                emit1.eq((dy == pool - 1) & (dx == pool - 1)),
                index1.eq(dy * pool + dx),
                addr1.eq(addr),
                value1.eq(self.i.payload),
            ]

        # Stage 1: compare with the running maximum (strictly greater replaces).
        new = Signal(layout)
        for k in range(lanes):
            take = first1 | (value1[k] > rd.data.value[k])
            m.d.comb += [
                new.value[k].eq(Mux(take, value1[k], rd.data.value[k])),
                new.argmax[k].eq(Mux(take, index1, rd.data.argmax[k])),
            ]
        m.d.comb += [
            wr.addr.eq(addr1),
            wr.data.eq(new),
            wr.en.eq(v1 & ~emit1),
        ]
        with m.If(v1 & emit1 & adv):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(new)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
