"""The USB full-speed host model (sim/verify/usb_host.py): its packets against the USB 2.0
examples and LUNA's own test helpers, then the model against LUNA's CDC-ACM device
(``USBSerialDevice``) in Verilator: enumeration, random writes echoed, a stalled host, a bad
CRC16 and a lost ACK, the rates of continuous bulk streams (sim/verify/tb_usb_loopback.py)."""

import json
import random

import pytest
from amaranth import Cat, DomainRenamer, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from luna.gateware.interface.utmi import UTMIInterface
from luna.gateware.usb.devices.acm import USBSerialDevice

from cnnforge.sim.verify.rtl_runner import BUILD, build_verilog, run_cocotb
from cnnforge.sim.verify.usb_host import (PID, crc5, crc16, data_packet, packet_bits,
                                          parse_packet, sof_packet, stuffed_bits, token_packet)



#: UTMI signals the PHY drives (inputs of the device); the others are the device's outputs.
PHY_TO_DEVICE = {"rx_data", "rx_valid", "rx_active", "rx_error", "line_state", "vbus_valid",
                 "session_valid", "session_end", "host_disconnect", "id_digital", "tx_ready"}


class USBSerialLoopback(wiring.Component):
    """LUNA's CDC-ACM serial device (1209:5AF1) with its UTMI bus as ports ``utmi_<name>``,
    in the ``sync`` domain (12 MHz: one bit time per cycle). What it receives goes back to the
    host through a ``fifo_depth`` FIFO (with the stream's first/last flags: a short OUT
    packet ends the IN transfer too); with ``source_sink`` high it drops what it receives and
    sends a byte counter as fast as the host reads."""

    def __init__(self, *, fifo_depth=16):
        self._fifo_depth = fifo_depth
        self._bus_fields = {name: len(sig) for name, sig in UTMIInterface().fields.items()}
        super().__init__({"source_sink": In(1),
                          **{f"utmi_{name}": (In if name in PHY_TO_DEVICE else Out)(width)
                             for name, width in self._bus_fields.items()}})

    def elaborate(self, platform):
        m = Module()
        bus = UTMIInterface()
        for name in self._bus_fields:
            port, inner = getattr(self, f"utmi_{name}"), getattr(bus, name)
            m.d.comb += inner.eq(port) if name in PHY_TO_DEVICE else port.eq(inner)
        device = USBSerialDevice(bus=bus, idVendor=0x1209, idProduct=0x5AF1)
        m.submodules.device = DomainRenamer({"usb": "sync"})(device)
        m.d.comb += device.connect.eq(1)

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=10, depth=self._fifo_depth)
        counter = Signal(8)
        with m.If(self.source_sink):
            m.d.comb += [device.rx.ready.eq(1),
                         device.tx.valid.eq(1), device.tx.payload.eq(counter)]
            with m.If(device.tx.ready):
                m.d.sync += counter.eq(counter + 1)
        with m.Else():
            m.d.comb += [
                fifo.w_data.eq(Cat(device.rx.payload, device.rx.first, device.rx.last)),
                fifo.w_en.eq(device.rx.valid), device.rx.ready.eq(fifo.w_rdy),
                Cat(device.tx.payload, device.tx.first, device.tx.last).eq(fifo.r_data),
                device.tx.valid.eq(fifo.r_rdy), fifo.r_en.eq(device.tx.ready),
            ]
        return m


# ---- packets ------------------------------------------------------------------------------------

def test_token_and_crc5():
    # USB 2.0 / the CRC paper's examples: SETUP to address 0, endpoint 0 is 2D 00 10.
    assert token_packet(PID.SETUP, 0, 0) == bytes([0x2D, 0x00, 0x10])
    assert crc5(0x15 | (0xE << 7)) == 0x1D
    assert sof_packet(0x710)[0] == 0xA5
    from luna.gateware.test.contrib import usb_packet
    rng = random.Random(5)
    for _ in range(200):
        address, endpoint = rng.randrange(128), rng.randrange(16)
        bits = usb_packet.token_packet(usb_packet.PID.OUT, address, endpoint)
        want = bytes(int(bits[i:i + 8][::-1], 2) for i in range(0, 24, 8))
        assert token_packet(PID.OUT, address, endpoint) == want, (address, endpoint)
        assert parse_packet(want).address == address and parse_packet(want).endpoint == endpoint


def test_data_packet_and_crc16():
    assert crc16(b"\x00\x01\x02\x03") == 0x7AEF
    assert data_packet(PID.DATA1, b"") == bytes([0x4B, 0x00, 0x00])
    from luna.gateware.test.contrib import usb_packet
    rng = random.Random(6)
    for size in (1, 2, 8, 63, 64):
        payload = bytes(rng.randrange(256) for _ in range(size))
        packet = data_packet(PID.DATA0, payload)
        assert list(packet[-2:]) == usb_packet.crc16(list(payload))
        assert parse_packet(packet).payload == payload and parse_packet(packet).crc_ok
        assert not parse_packet(data_packet(PID.DATA0, payload, corrupt_crc=True)).crc_ok
    with pytest.raises(ValueError, match="check bits"):
        parse_packet(bytes([0x2E]))


def test_bit_stuffing():
    # The SYNC ends in a 1: five more 1s make six. ACK is 0xD2 = 0,1,0,0,1,0,1,1 (LSB first).
    assert stuffed_bits(bytes([0xD2])) == [0]
    assert stuffed_bits(bytes([0xFF])) == [1]                  # 1 + 5 ones, then a run of 3
    assert stuffed_bits(bytes([0xFF, 0xFF, 0xFF])) == [1, 1, 2]
    assert stuffed_bits(bytes([0xC3, 0xFF, 0xFF, 0x00])) == [0, 1, 2, 0]
    assert packet_bits(bytes([0xD2])) == 8 + 8 + 3
    assert packet_bits(data_packet(PID.DATA0, bytes(64) + b"")) == 8 + 67 * 8 + 3 + sum(
        stuffed_bits(data_packet(PID.DATA0, bytes(64))))


# ---- against LUNA -------------------------------------------------------------------------------

def test_usb_host_against_luna_serial():
    name = "usb_loopback"
    path = build_verilog(USBSerialLoopback(), name)
    out = BUILD / name / "usb_results.json"
    out.unlink(missing_ok=True)
    run_cocotb(name, [path], "top", "cnnforge.sim.verify.tb_usb_loopback",
               {"CNNFORGE_TB_OUT": out})
    results = json.loads(out.read_text())
    assert set(results) == {"enumeration", "echo", "stalled", "bad_crc", "rates"}
    # LUNA implements SET_LINE_CODING and stalls the class requests it does not know.
    assert results["enumeration"]["stalled"] == ["SET_CONTROL_LINE_STATE"]
    stalled = results["stalled"]
    assert stalled["out_naks_while_paused"] > 0
    rates = results["rates"]
    # 19 64-byte packets per 1 ms frame: 1.216 MB/s (a little more over a window that does
    # not start on a frame boundary); a stream that does not keep up would be well below.
    for key in ("out_bytes_per_s", "in_bytes_per_s"):
        assert 1.1e6 < rates[key] < 1.25e6, (key, rates[key])
    echo = results["echo"]
    # Both directions share the frame's 19 packets.
    assert 0.4e6 < echo["echo_bytes_per_s"] < 0.62e6, echo
    print(f"USB FS against LUNA: bulk OUT {rates['out_bytes_per_s'] / 1e3:.0f} kB/s, bulk IN "
          f"{rates['in_bytes_per_s'] / 1e3:.0f} kB/s of simulated time; loopback of "
          f"{echo['bytes']} bytes in {echo['writes']} writes {echo['echo_bytes_per_s'] / 1e3:.0f} "
          f"kB/s each way; stalled host: {stalled['accepted_while_paused']} bytes taken, "
          f"{stalled['out_naks_while_paused']} NAKs while not reading")
