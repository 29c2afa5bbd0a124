"""cocotb testbench of the UART pair (tests/test_uart.py builds the echo top around them).

The DUT echoes every received byte through a 4-byte FIFO (``hold`` stops the echo) and counts
framing errors and overruns. A bit-level UART model drives ``rx`` and decodes ``tx``.
"""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from cnnforge.sim.verify.tb_board import PERIOD_NS, UartModel

DIVISOR = int(os.environ["CNNFORGE_UART_DIVISOR"])


async def setup(dut):
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.hold.value = 0
    uart = UartModel(dut, DIVISOR)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 3)
    cocotb.start_soon(uart.monitor())
    return uart


async def send_bits(dut, levels, bit_ps):
    await FallingEdge(dut.clk)
    for level in levels:
        dut.rx.value = level
        await Timer(bit_ps, "ps")


def frame(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


@cocotb.test()
async def echo_every_byte_value(dut):
    uart = await setup(dut)
    rng = random.Random(DIVISOR)
    data = bytes(range(256)) + bytes(rng.randrange(256) for _ in range(256))
    await uart.send(data)
    got = await uart.recv(len(data), 40 * uart.bit_ns)
    assert got == data, f"echo differs at byte {next(i for i, (a, b) in enumerate(zip(got + bytes(len(data)), data)) if a != b)}"
    assert uart.framing_errors == 0
    assert int(dut.frame_errors.value) == 0 and int(dut.overruns.value) == 0


@cocotb.test()
async def baud_mismatch(dut):
    """A host 2.5 % fast and 2.5 % slow (10 bits back to back) still decodes."""
    uart = await setup(dut)
    for factor in (0.975, 1.025):
        bit_ps = round(uart.bit_ns * 1000 * factor)
        data = bytes([0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x7E])
        levels = [lv for b in data for lv in frame(b)]
        await send_bits(dut, levels + [1], bit_ps)
        got = await uart.recv(len(data), 40 * uart.bit_ns)
        assert got == data, f"factor {factor}: {got.hex()} != {data.hex()}"


@cocotb.test()
async def glitch_break_and_framing_error(dut):
    uart = await setup(dut)
    bit_ps = uart.bit_ns * 1000
    # A low pulse shorter than half a bit is not a start bit.
    await FallingEdge(dut.clk)
    dut.rx.value = 0
    await Timer(PERIOD_NS, "ns")
    dut.rx.value = 1
    await Timer(3 * uart.bit_ns, "ns")
    # A low stop bit: framing error, byte dropped; then a long break; then normal bytes.
    await send_bits(dut, frame(0x3C, stop=0) + [0] * 15 + [1, 1], bit_ps)
    await uart.send(b"\x5a\xc3")
    got = await uart.recv(2, 40 * uart.bit_ns)
    assert got == b"\x5a\xc3", got.hex()
    assert int(dut.frame_errors.value) == 1


@cocotb.test()
async def overrun_drops_and_recovers(dut):
    uart = await setup(dut)
    dut.hold.value = 1
    await uart.send(bytes(range(1, 8)))            # FIFO 4 + RX buffer 1 = 5 kept, 2 dropped
    await Timer(20 * uart.bit_ns, "ns")
    assert int(dut.overruns.value) == 2, int(dut.overruns.value)
    dut.hold.value = 0
    got = await uart.recv(5, 80 * uart.bit_ns)
    assert got == bytes(range(1, 6)), got.hex()
    await uart.send(b"ok")
    assert await uart.recv(2, 40 * uart.bit_ns) == b"ok"
