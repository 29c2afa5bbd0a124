"""A hardware test harness for stream blocks: keeps Python off the per-cycle path.

The input words sit in a ROM; a source drives them into the DUT's ``i`` stream with random
valid gaps; a sink takes the DUT's ``o`` stream with random ready backpressure and captures
every word into a memory. The testbench only resets, starts, waits for ``done`` and reads the
captured words back through ``rd_addr``/``rd_data``. Randomness comes from two xorshift32
generators seeded from ``seed``, so every run is reproducible.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


__all__ = ["StreamHarness", "PortLoader", "payload_width"]


def payload_width(port):
    """Width in bits of a stream port's payload."""
    return Shape.cast(port.payload.shape()).width


def xorshift32(x):
    x = x ^ (x << 13)[:32]
    x = x ^ (x >> 17)
    return x ^ (x << 5)[:32]


class StreamHarness(wiring.Component):
    """Drive ``inputs`` through ``dut`` and capture ``n_expected`` output words.

    Parameters
    ----------
    dut : wiring.Component
        A block with a consumer stream port ``i`` and a producer stream port ``o``.
    inputs : list of int
        Raw input payload words.
    n_expected : int
        Number of output words the DUT should produce (the capture memory's depth).
    rom_file : path, optional
        The input words are read by ``sim/verify/rom.v`` from this ``$readmemh`` file (which the caller
        writes) instead of being built into the netlist; the simulation then needs ``rom.v``.

    Members
    -------
    start : In(1)
        Pulse to begin; the seeds and thresholds are sampled then.
    in_gap, out_stall : In(16)
        A cycle is a gap (source offers no new word) when a 16-bit random draw is below
        ``in_gap``; the sink stalls (``ready`` low) when its draw is below ``out_stall``.
    seed : In(32)
        Seed of both generators (must be non-zero).
    done : Out(1)
        All expected words received.
    cycles : Out(32)
        Cycles from ``start`` until ``done``.
    received : Out(32)
        Output words received so far (more than ``n_expected`` means the DUT produced extra).
    rd_addr, rd_data
        Asynchronous read port of the capture memory.
    """

    def __init__(self, dut, inputs, n_expected, rom_file=None):
        if n_expected < 1:
            raise ValueError(f"n_expected must be positive, not {n_expected!r}")
        if len(inputs) < 1:
            raise ValueError("inputs must not be empty")
        self._dut = dut
        self._inputs = [int(x) for x in inputs]
        self._n_expected = n_expected
        self._rom_file = rom_file
        self._in_width = payload_width(dut.i)
        self._out_width = payload_width(dut.o)
        super().__init__({
            "start": In(1),
            "in_gap": In(16),
            "out_stall": In(16),
            "seed": In(32),
            "done": Out(1),
            "cycles": Out(32),
            "received": Out(32),
            "rd_addr": In(range(n_expected)),
            "rd_data": Out(self._out_width),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        n_in = len(self._inputs)

        running = Signal()
        rng_in = Signal(32, init=1)
        rng_out = Signal(32, init=1)
        with m.If(self.start):
            m.d.sync += [running.eq(1), rng_in.eq(self.seed), rng_out.eq(self.seed ^ 0x9E3779B9)]
        with m.Elif(running):
            m.d.sync += [rng_in.eq(xorshift32(rng_in)), rng_out.eq(xorshift32(rng_out))]

        # Source: offer word src_idx; a new word is offered only when the slot is free, and once
        # valid is up it holds (with its payload) until the transfer.
        src_idx = Signal(range(n_in + 1))
        src_valid = Signal()
        if self._rom_file is None:
            m.submodules.rom = rom = Memory(shape=self._in_width, depth=n_in, init=self._inputs)
            rom_rd = rom.read_port(domain="comb")
            m.d.comb += [rom_rd.addr.eq(src_idx), dut.i.payload.eq(rom_rd.data)]
        else:
            # sim/verify/rom.v reads the words from a file: a ROM of millions of words would take
            # minutes to go through the netlist, and the build is reused for new contents.
            rom_data = Signal(self._in_width)
            m.submodules.rom = Instance("cnnforge_rom", p_WIDTH=self._in_width, p_DEPTH=n_in,
                                        p_FILE=str(self._rom_file),
                                        i_addr=src_idx.as_unsigned(), o_data=rom_data)
            m.d.comb += dut.i.payload.eq(rom_data)
        m.d.comb += dut.i.valid.eq(src_valid)
        with m.If(running & (~src_valid | dut.i.ready)):
            next_idx = src_idx + (src_valid & dut.i.ready)
            m.d.sync += [
                src_idx.eq(next_idx),
                src_valid.eq((next_idx < n_in) & (rng_in[:16] >= self.in_gap)),
            ]

        # Sink: ready follows its own random draw; every transfer is captured.
        m.submodules.capture = capture = Memory(shape=self._out_width, depth=self._n_expected,
                                                init=[])
        cap_wr = capture.write_port()
        cap_rd = capture.read_port(domain="comb")
        m.d.comb += [
            dut.o.ready.eq(running & (rng_out[:16] >= self.out_stall)),
            cap_wr.addr.eq(self.received),
            cap_wr.data.eq(dut.o.payload.as_value() if hasattr(dut.o.payload, "as_value")
                           else dut.o.payload),
            cap_wr.en.eq(dut.o.valid & dut.o.ready & (self.received < self._n_expected)),
            cap_rd.addr.eq(self.rd_addr),
            self.rd_data.eq(cap_rd.data),
            self.done.eq(self.received >= self._n_expected),
        ]
        with m.If(dut.o.valid & dut.o.ready):
            m.d.sync += self.received.eq(self.received + 1)
        with m.If(running & ~self.done):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        return m


class PortLoader(wiring.Component):
    """Test wrapper: one input stream carrying both data beats and weight/bias port writes.

    Wraps an engine with a stream ``i``/``o`` and write ports ``w_en/w_addr/w_data`` and
    ``b_en/b_addr/b_data`` (the convolution and dense engines), so a harness ROM can interleave
    model writes with the data at exact points of the stream. Input payload ``kind`` 0: a data
    beat (``data`` = the engine's input payload), 1: weight word, 2: bias word, 3: ignored.
    A write takes effect in the cycle its beat is presented (write beats are always accepted).
    """

    def __init__(self, engine):
        self._engine = engine
        width = max(len(Value.cast(engine.i.payload)), len(Value.cast(engine.w_data)),
                    len(Value.cast(engine.b_data)))
        self.layout = data.StructLayout({"kind": 2, "addr": 16, "data": width})
        super().__init__({"i": In(stream.Signature(self.layout)),
                          "o": Out(stream.Signature(engine.o.payload.shape()))})

    @staticmethod
    def beat(kind, addr, value):
        return {"kind": kind, "addr": addr, "data": value}

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self._engine
        wiring.connect(m, wiring.flipped(self.o), engine=engine.o)
        p = self.i.payload
        is_data = p.kind == 0
        m.d.comb += [
            engine.i.payload.eq(p.data),
            engine.i.valid.eq(self.i.valid & is_data),
            self.i.ready.eq(~is_data | engine.i.ready),
            engine.w_en.eq(self.i.valid & (p.kind == 1)),
            engine.w_addr.eq(p.addr),
            engine.w_data.eq(p.data),
            engine.b_en.eq(self.i.valid & (p.kind == 2)),
            engine.b_addr.eq(p.addr),
            engine.b_data.eq(p.data),
        ]
        return m
