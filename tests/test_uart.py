"""UART receiver and transmitter: an echo top in cocotb against a bit-level UART model."""

import pytest
from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from cnnforge.boards.uart import UARTRx, UARTTx, divisor_for
from cnnforge.errors import CnnforgeError
from cnnforge.sim.verify.rtl_runner import build_verilog, run_cocotb


class UartEcho(wiring.Component):
    rx: In(1, init=1)
    tx: Out(1, init=1)
    hold: In(1)
    frame_errors: Out(8)
    overruns: Out(8)

    def __init__(self, divisor):
        self._divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = UARTRx(divisor=self._divisor)
        m.submodules.tx = tx = UARTTx(divisor=self._divisor)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8, depth=4)
        m.d.comb += [
            rx.rx.eq(self.rx), self.tx.eq(tx.tx),
            fifo.w_data.eq(rx.o.payload), fifo.w_en.eq(rx.o.valid), rx.o.ready.eq(fifo.w_rdy),
            tx.i.payload.eq(fifo.r_data), tx.i.valid.eq(fifo.r_rdy & ~self.hold),
            fifo.r_en.eq(tx.i.ready & ~self.hold),
        ]
        with m.If(rx.frame_error):
            m.d.sync += self.frame_errors.eq(self.frame_errors + 1)
        with m.If(rx.overrun):
            m.d.sync += self.overruns.eq(self.overruns + 1)
        return m


@pytest.mark.parametrize("divisor", [4, 13])
def test_uart_echo(divisor):
    name = f"uart_echo_{divisor}"
    path = build_verilog(UartEcho(divisor), name)
    run_cocotb(name, [path], "top", "cnnforge.sim.verify.tb_uart",
               {"CNNFORGE_UART_DIVISOR": divisor})


def test_divisor_for():
    assert divisor_for(12e6, 3_000_000) == 4
    assert divisor_for(30e6, 3_000_000) == 10
    assert divisor_for(100e6, 3_000_000) == 33          # 1 % off
    with pytest.raises(CnnforgeError, match="off by"):
        divisor_for(12e6, 2_700_000)                     # 4.44 -> 4: 11 % off
    with pytest.raises(CnnforgeError, match="at least 4"):
        divisor_for(12e6, 4_000_000)


@pytest.mark.parametrize("cls", [UARTRx, UARTTx])
def test_divisor_validation(cls):
    with pytest.raises(ValueError, match="divisor must be at least 4, not 3"):
        cls(divisor=3)
    with pytest.raises(TypeError, match="divisor must be an integer, not 'x'"):
        cls(divisor="x")
