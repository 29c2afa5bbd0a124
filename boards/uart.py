"""8N1 UART receiver and transmitter with stream interfaces.

Both count ``divisor`` clock cycles per bit (:func:`divisor_for` picks it from the clock and the
baud rate). Bits go least significant first: a start bit (0), 8 data bits, a stop bit (1).
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..errors import CnnforgeError
from ..hw.util import check_int


__all__ = ["divisor_for", "UARTRx", "UARTTx"]


def divisor_for(clk_freq, baud, tolerance=0.02):
    """Clock cycles per bit for ``baud`` at ``clk_freq`` Hz.

    Raises :class:`~cnnforge.errors.CnnforgeError` if the rate is off by more than ``tolerance``
    (2 %: a UART resynchronizes on every start bit and samples mid-bit, so the error over 10 bits
    must stay well under half a bit) or the divisor is below 4.
    """
    divisor = round(clk_freq / baud)
    if divisor < 4:
        raise CnnforgeError(f"{baud} baud needs at least 4 clock cycles per bit; "
                            f"{clk_freq / 1e6:g} MHz gives {clk_freq / baud:.2f}")
    error = abs(clk_freq / divisor - baud) / baud
    if error > tolerance:
        raise CnnforgeError(f"{baud} baud at {clk_freq / 1e6:g} MHz is off by {100 * error:.1f} % "
                            f"(divisor {divisor}); pick a baud rate closer to clock / integer")
    return divisor


def check_divisor(divisor):
    """``divisor`` (clock cycles per bit) as an int >= 4; TypeError/ValueError otherwise."""
    return check_int("divisor", divisor, 4)


class _UART(wiring.Component):
    """What the transmitter and the receiver share: the checked ``divisor`` and the docstring
    template."""

    _doc_template = """
    {description}

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4).

    Members
    -------
    {members}

    {timing}
    """

    def __init__(self, members, *, divisor):
        self._divisor = check_divisor(divisor)
        super().__init__(members)

    @property
    def divisor(self):
        return self._divisor


class UARTTx(_UART):
    __doc__ = _UART._doc_template.format(
        description="UART transmitter: bytes from a stream out as 8N1 frames.",
        members="""i : ``In(stream.Signature(8))``
        Bytes to send. ``ready`` is high while the line is idle and in the last cycle of a stop
        bit, so bytes offered back to back go out at exactly ``10 * divisor`` cycles each.
    tx : ``Out(1)``
        The serial line (idle high).
    busy : ``Out(1)``
        A byte is being sent.""",
        timing="""Throughput: one byte per ``10 * divisor`` cycles (the next start bit follows the
    stop bit directly); latency: the start bit begins the cycle after the transfer.""",
    )

    def __init__(self, *, divisor):
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
            "busy": Out(1),
        }, divisor=divisor)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        timer = Signal(range(div))
        shreg = Signal(10, init=0x3FF)       # stop, data[7:0], start: shifted out LSB first
        bits = Signal(range(11))

        last = (bits == 1) & (timer == 0)     # last cycle of the stop bit
        m.d.comb += [
            self.i.ready.eq((bits == 0) | last),
            self.busy.eq(bits != 0),
            self.tx.eq(shreg[0]),
        ]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                shreg.eq(Cat(C(0, 1), self.i.payload, C(1, 1))),
                bits.eq(10),
                timer.eq(div - 1),
            ]
        with m.Elif(bits == 0):
            pass
        with m.Elif(timer == 0):
            m.d.sync += [
                shreg.eq(Cat(shreg[1:], C(1, 1))),
                bits.eq(bits - 1),
                timer.eq(div - 1),
            ]
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(_UART):
    __doc__ = _UART._doc_template.format(
        description="""UART receiver: 8N1 frames in, a byte stream out.

    The line passes a 2-flip-flop synchronizer. A falling edge starts a frame; the start bit is
    checked half a bit later (a shorter low pulse is a glitch and ignored), then each data bit and
    the stop bit are sampled in the middle of their bit time. A low stop bit is a framing error:
    the byte is dropped and the receiver waits for the line to return high (a break) first.""",
        members="""rx : ``In(1, init=1)``
        The serial line.
    o : ``Out(stream.Signature(8))``
        Received bytes. One byte of buffering: a byte completing while the previous one still
        waits is dropped and ``overrun`` pulses.
    frame_error : ``Out(1)``
        Pulses when a stop bit is low.
    overrun : ``Out(1)``
        Pulses when a byte is dropped for lack of room.""",
        timing="""Latency: a byte is offered 2 cycles (synchronizer) after the middle of its stop
    bit.""",
    )

    def __init__(self, *, divisor):
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "frame_error": Out(1),
            "overrun": Out(1),
        }, divisor=divisor)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        sync0 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [sync0.eq(self.rx), line.eq(sync0)]

        timer = Signal(range(div))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"                   # glitch
                    with m.Else():
                        m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), timer.eq(div - 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                    with m.Else():
                        m.d.sync += bit.eq(bit + 1)
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.comb += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.frame_error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m
