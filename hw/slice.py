"""A stream register slice: both directions of a handshake cut by flip-flops."""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["RegisterSlice"]


class RegisterSlice(wiring.Component):
    """A two-entry skid buffer between a producer and a consumer of ``shape`` payloads.

    ``o.valid``/``o.payload`` and ``i.ready`` are flip-flops, so no combinational path runs
    through the slice in either direction (a timing cut between blocks whose handshakes would
    otherwise chain). Order and values are unchanged.

    Latency
    -------
    1 cycle: a beat transferred on ``i`` in cycle ``t`` is offered on ``o`` in cycle ``t + 1``.

    Throughput
    ----------
    One beat per cycle, sustained. When ``o`` stalls, the beat in flight is kept in the skid
    register and ``i.ready`` drops from the next cycle on.

    Resources
    ---------
    Two payload registers (output and skid), a 2:1 multiplexer, two flags.

    Parameters
    ----------
    shape : shape-like
        The payload.

    Members
    -------
    i : ``In(stream.Signature(shape))``
    o : ``Out(stream.Signature(shape))``
    """

    def __init__(self, shape):
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        skid = Signal.like(self.i.payload, reset_less=True)
        skid_valid = Signal()
        take = Signal()
        m.d.comb += [
            self.i.ready.eq(~skid_valid),
            take.eq(self.i.valid & self.i.ready),
        ]
        with m.If(~self.o.valid | self.o.ready):
            # The output register is free (or leaves now): the skid entry first.
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(take)]
        with m.Elif(take):
            m.d.sync += skid_valid.eq(1)
        # The skid register takes every beat taken (it is read only while skid_valid): its
        # enable does not wait for o.ready, which comes from the consumer's side of the die.
        with m.If(take):
            m.d.sync += skid.eq(self.i.payload)
        return m
