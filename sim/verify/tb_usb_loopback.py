"""cocotb testbench of the USB host model against LUNA's CDC-ACM device (tests/test_usb_host.py
builds the top: the device on UTMI ports, what it receives sent back through a small FIFO;
``source_sink`` high drops what it receives and sends a byte counter instead).

Each test resets the top, attaches the host (bus reset) and enumerates, then: the descriptors
and the address; random writes echoed in order; a host that stops reading for 2 ms while it
writes; an OUT packet with a wrong CRC16 and a lost ACK, each delivered once; the bulk OUT and
IN rates of a continuous stream. Numbers for the pytest side go to ``CNNFORGE_TB_OUT`` (JSON,
one key per test).
"""

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from cnnforge.sim.verify.usb_host import BULK_OVERHEAD_BYTES, Outcome, UTMIHost, USBSerialModel

#: The usb domain: 12 MHz, one bit time per cycle.
PERIOD_PS = 83_333
VID, PID = 0x1209, 0x5AF1
#: What the device buffers of OUT data before it must NAK: its OUT endpoint's FIFO (127),
#: the loopback FIFO (16 + 1), the IN endpoint's two packet buffers (128).
DEVICE_BUFFER = 127 + 17 + 128


def record(key, value):
    if "CNNFORGE_TB_OUT" not in os.environ:
        return
    path = Path(os.environ["CNNFORGE_TB_OUT"])
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = value
    path.write_text(json.dumps(results))


async def attach(dut, source_sink=0):
    """Reset the top, attach the host (bus reset) and enumerate: ``(host, info, serial
    port)``."""
    cocotb.start_soon(Clock(dut.clk, PERIOD_PS, period_high=PERIOD_PS // 2, unit="ps").start())
    dut.source_sink.value = source_sink
    host = UTMIHost(dut, dut.clk, prefix="utmi_")
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await host.start()
    info = await host.enumerate(address=5)
    ep_out, ep_in = info.cdc_data_endpoints()
    serial = USBSerialModel(host, ep_out, ep_in, max_packet=ep_out.max_packet)
    return host, info, serial


@cocotb.test()
async def enumeration(dut):
    """The descriptors, the address, the class requests; a second reset and enumeration."""
    host, info, serial = await attach(dut)
    assert (info.vid, info.pid) == (VID, PID), f"{info.vid:04x}:{info.pid:04x}"
    assert info.address == host.address == 5
    assert info.max_packet0 == 64
    assert (info.manufacturer, info.product) == ("LUNA", "USB-to-serial")
    classes = [(i.cls, i.subclass, i.protocol) for i in info.interfaces]
    assert classes == [(0x02, 0x02, 0x01), (0x0A, 0x00, 0x00)], classes
    notify = info.interfaces[0].endpoints
    assert [(e.address, e.kind) for e in notify] == [(0x83, "interrupt")], notify
    ep_out, ep_in = info.cdc_data_endpoints()
    assert (ep_out.address, ep_in.address) == (0x04, 0x84)
    assert ep_out.max_packet == ep_in.max_packet == 64
    # The device answers at its new address and ignores the old one.
    serial.pause_reading(1e9)
    assert (await host.bulk_in(4))[0] == Outcome.NAK
    pid, _, _ = await host.in_transaction(4, address=0)
    assert pid is None, f"the device answered address 0 with {pid}"
    assert host.stats["late_sofs"] == 0
    enumerated_ms = host.now_ns() / 1e6
    # A second bus reset (as Linux does) takes the device back to address 0.
    await host.reset()
    assert (await host.in_transaction(4, address=5))[0] is None
    again = await host.enumerate(address=9)
    assert (again.vid, again.pid, host.address) == (VID, PID, 9)
    assert again.config_descriptor == info.config_descriptor
    assert (await host.bulk_in(4))[0] == Outcome.NAK
    assert host.stats["late_sofs"] == 0
    record("enumeration", {"stalled": info.stalled, "frame": host.frame,
                           "config_bytes": len(info.config_descriptor),
                           "sofs": host.stats["sofs"], "enumerated_ms": enumerated_ms})


@cocotb.test()
async def echo_random_writes(dut):
    """Writes of random sizes (exact multiples of 64 among them) come back equal, in order."""
    host, _, serial = await attach(dut)
    rng = random.Random(1)
    sizes = [1, 64, 63, 65, 128, 192, 7, 256] + [rng.randrange(1, 300) for _ in range(16)]
    sizes += [64 * rng.randrange(1, 4) for _ in range(4)]
    data = bytes(rng.randrange(256) for _ in range(sum(sizes)))
    start = host.now_ns()
    at = 0
    for size in sizes:
        await serial.send(data[at:at + size])
        at += size
    sent = host.now_ns()
    got = await serial.recv(len(data), 20e6)
    done = host.now_ns()
    assert len(got) == len(data), f"{len(got)} of {len(data)} bytes came back"
    first_bad = next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), None)
    assert first_bad is None, f"byte {first_bad} differs: {got[first_bad]} != {data[first_bad]}"
    assert await serial.recv(1, 100_000) == b"", "more bytes came back than were sent"
    assert host.stats["late_sofs"] == 0
    record("echo", {"bytes": len(data), "writes": len(sizes),
                    "out_bytes_per_s": len(data) / (sent - start) * 1e9,
                    "echo_bytes_per_s": len(data) / (done - start) * 1e9,
                    "counters": serial.counters, "host": host.stats})


@cocotb.test()
async def stalled_host(dut):
    """The host stops reading for 2 ms and keeps writing: the device fills its buffers, then
    NAKs; nothing is lost and everything comes back once the host reads again."""
    host, _, serial = await attach(dut)
    rng = random.Random(2)
    data = bytes(rng.randrange(256) for _ in range(1500))
    pause_ns = 2e6
    start = host.now_ns()
    serial.pause_reading(pause_ns)
    # (send returns once the device has ACKed every byte: after the pause)
    writer = cocotb.start_soon(serial.send(data))
    await serial.wait(pause_ns - 100_000)
    accepted_while_paused = len(data) - serial.pending
    naks_while_paused = serial.counters["out_naks"]
    in_while_paused = serial.counters["in_naks"] + serial.counters["in_packets"]
    assert serial.received == b"" and in_while_paused == 0, "the host read while paused"
    assert naks_while_paused > 0, "the device never NAKed a host that stopped reading"
    assert accepted_while_paused <= DEVICE_BUFFER, \
        f"{accepted_while_paused} bytes accepted while nothing was read"
    await writer
    got = await serial.recv(len(data), 20e6)
    assert got == data, f"{len(got)} of {len(data)} bytes back, equal: {got == data[:len(got)]}"
    assert await serial.recv(1, 100_000) == b""
    record("stalled", {"accepted_while_paused": accepted_while_paused,
                       "out_naks_while_paused": naks_while_paused,
                       "ms_until_all_back": (host.now_ns() - start) / 1e6,
                       "counters": serial.counters})


@cocotb.test()
async def bad_crc_and_lost_ack(dut):
    """An OUT packet with a wrong CRC16 gets no handshake and its retry is delivered once; a
    packet resent after a lost ACK (same toggle) is ACKed and dropped by the device."""
    host, _, serial = await attach(dut)
    rng = random.Random(3)
    first = bytes(rng.randrange(256) for _ in range(100))
    serial.corrupt_next_out()
    await serial.send(first)
    assert serial.counters["out_timeouts"] == 1, serial.counters
    assert await serial.recv(len(first), 5e6) == first
    second = bytes(rng.randrange(256) for _ in range(100))
    serial.lose_next_ack()
    await serial.send(second)
    assert serial.counters["out_lost_acks"] == 1, serial.counters
    assert await serial.recv(len(second) + 1, 2e6) == second
    record("bad_crc", {"counters": serial.counters})


@cocotb.test()
async def stream_rates(dut):
    """Continuous bulk OUT (the device drops the data) and IN (the device sends a counter as
    fast as it is read): the rates in bytes per second of simulated time."""
    host, _, serial = await attach(dut, source_sink=1)
    size = 16 * 1024
    serial.pause_reading(1e12)
    sofs = host.stats["sofs"]
    start = host.now_ns()
    await serial.send(bytes(size))
    out_ns = host.now_ns() - start
    out_frames = host.stats["sofs"] - sofs
    serial.resume_reading()
    start = host.now_ns()
    got = await serial.recv(size, 50e6)
    in_ns = host.now_ns() - start
    assert got == bytes(i & 0xFF for i in range(size)), "the counter came back out of order"
    assert serial.counters["out_naks"] == 0
    out_rate, in_rate = size / out_ns * 1e9, size / in_ns * 1e9
    assert host.stats["busiest_frame"] == 19, host.stats     # (USB 2.0 table 5-9)
    # A host that allows fewer bulk transactions per frame: the rate follows.
    host.bulk_frame_bytes, host.stats["busiest_frame"] = 8 * (64 + BULK_OVERHEAD_BYTES), 0
    serial.pause_reading(1e12)
    start = host.now_ns()
    await serial.send(bytes(4096))
    limited_rate = 4096 / (host.now_ns() - start) * 1e9
    assert host.stats["busiest_frame"] == 8, host.stats
    assert 0.9 * 8 * 64e3 < limited_rate < 1.2 * 8 * 64e3, limited_rate   # (window phase)
    record("rates", {"out_bytes_per_s": out_rate, "in_bytes_per_s": in_rate,
                     "out_bytes_per_s_at_8_per_frame": limited_rate,
                     "out_frames": out_frames, "bytes": size,
                     "counters": serial.counters, "host": host.stats})
