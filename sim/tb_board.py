"""cocotb testbench of a board core (:class:`cnnforge.boards.link.Link`) through its UART pins.

A bit-level UART model drives the core's ``rx`` pin and decodes its ``tx`` pin (Python runs once
per bit, never per clock). The host side is ordinary blocking host code — a job function
``f(transport, **args)`` named ``"module:function"`` in the job file (``CNNFORGE_TB_JOB``) —
run in a :func:`cocotb.task.bridge` thread; its :class:`SimTransport` reads and writes through
the UART model with :func:`cocotb.task.resume`, so simulated time only advances while the host
waits for the device, exactly as with a serial port. The job's return value (JSON) goes to the
job's ``out`` file.
"""

import importlib
import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, FallingEdge, Timer


__all__ = ["UartModel", "SimTransport"]

PERIOD_NS = 10


class UartModel:
    """8N1 UART at ``divisor`` clock periods per bit: ``send`` drives ``rx``, a monitor decodes
    ``tx`` into ``received``."""

    def __init__(self, dut, divisor):
        self._dut = dut
        self.bit_ns = divisor * PERIOD_NS
        self.received = bytearray()
        self.framing_errors = 0
        dut.rx.value = 1

    async def send(self, data):
        # Bit edges on falling clock edges: never racing the sampling edge.
        await FallingEdge(self._dut.clk)
        for byte in data:
            for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self._dut.rx.value = level
                await Timer(self.bit_ns, "ns")

    async def monitor(self):
        tx = self._dut.tx
        while True:
            await FallingEdge(tx)
            await Timer(self.bit_ns // 2, "ns")
            if tx.value:
                continue                                  # glitch
            byte = 0
            for i in range(8):
                await Timer(self.bit_ns, "ns")
                byte |= int(tx.value) << i
            await Timer(self.bit_ns, "ns")
            if not tx.value:
                self.framing_errors += 1
                continue
            self.received.append(byte)

    async def recv(self, n, timeout_ns):
        waited = 0
        step = 10 * self.bit_ns
        while len(self.received) < n and waited < timeout_ns:
            await Timer(step, "ns")
            waited += step
        data = bytes(self.received[:n])
        del self.received[:n]
        return data

    async def wait(self, ns):
        await Timer(max(1, round(ns)), "ns")

    async def now_ns(self):
        return cocotb.simtime.get_sim_time("ns")


class SimTransport:
    """The host's transport (``write``, ``read``, ``sleep``, ``flush``, ``now``) onto the UART
    model.

    Times given in seconds are converted at ``clk_freq`` (the frequency the simulated core was
    built for), so host timeouts mean the same as on a board.
    """

    def __init__(self, uart, clk_freq):
        self._uart = uart
        self._ns_per_s = PERIOD_NS * clk_freq
        self.sim = True

    def write(self, data):
        resume(self._uart.send)(bytes(data))

    def read(self, n, timeout):
        return resume(self._uart.recv)(n, timeout * self._ns_per_s)

    def sleep(self, seconds):
        resume(self._uart.wait)(seconds * self._ns_per_s)

    def flush(self):
        self._uart.received.clear()

    def now(self):
        """Simulated seconds at the nominal clock."""
        return resume(self._uart.now_ns)() / self._ns_per_s


@cocotb.test()
async def board_job(dut):
    with open(os.environ["CNNFORGE_TB_JOB"]) as f:
        job = json.load(f)
    module, name = job["function"].split(":")
    func = getattr(importlib.import_module(module), name)

    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    uart = UartModel(dut, job["divisor"])
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)
    cocotb.start_soon(uart.monitor())
    transport = SimTransport(uart, job["clk_freq"])
    result = await bridge(func)(transport, **job.get("args", {}))
    result = {"result": result, "framing_errors": uart.framing_errors,
              "sim_time_ns": cocotb.simtime.get_sim_time("ns")}
    with open(job["out"], "w") as f:
        json.dump(result, f)


# ---- host jobs ---------------------------------------------------------------------------------

def _nak(frame):
    from cnnforge.boards.protocol import Command
    if frame.command == Command.NAK.value and len(frame.payload) == 2:
        return [frame.payload[0], frame.payload[1]]
    return None


def board_scenario(transport, images, fault_images):
    """Classify ``images``, then the fault cases, each followed by a good request.

    Returns ``{"info", "images": [classification...], "faults": {name: record}}``; the pytest
    side checks every record (results against the golden model, NAK codes).
    """
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import ClassifyResult, Command, encode

    c = Client(transport, timeout=0.05)
    out = {"info": c.ping(), "images": [], "faults": {}}
    classes = out["info"]["classes"]
    for image in images:
        out["images"].append(asdict(c.classify(np.asarray(image, np.uint8))))
    img_a, img_b = (np.asarray(x, np.uint8) for x in fault_images)
    faults = out["faults"]

    def reply(data):
        c.send(data)
        frame = c.read_frame()
        return {"nak": _nak(frame), "command": frame.command, "payload": frame.payload.hex()}

    def result(frame):
        return asdict(ClassifyResult.from_payload(frame.payload, classes))

    # A flipped bit in a LOAD_IMAGE: BAD_CRC; the image is gone (NO_IMAGE); a reload works.
    bad = bytearray(encode(Command.LOAD_IMAGE, img_a.tobytes()))
    bad[200] ^= 0x08
    faults["flipped_bit"] = {"reply": reply(bad), "classify": reply(encode(Command.CLASSIFY)),
                             "after": asdict(c.classify(img_a))}
    # A flipped bit in the header's length: BAD_LENGTH or BAD_CRC, never silence.
    bad = bytearray(encode(Command.PING))
    bad[2] ^= 0x01
    faults["flipped_length"] = {"reply": reply(bad), "after": c.ping()}
    # A frame cut off mid-payload: TIMEOUT after the inter-byte timeout.
    faults["truncated"] = {"reply": reply(encode(Command.LOAD_IMAGE, img_b.tobytes())[:300]),
                           "after": c.ping()}
    # Garbage (no SYNC byte) before a frame is skipped silently.
    faults["garbage"] = {"reply": reply(b"\x00\x13\xff\x5a junk \x7f" + encode(Command.PING)),
                         "after": c.ping()}
    faults["unknown_command"] = {"reply": reply(encode(0x42)), "after": c.ping()}
    faults["bad_length"] = {"reply": reply(encode(Command.PING, b"abc")), "after": c.ping()}
    faults["oversized_length"] = {"reply": reply(bytes([0xA5, Command.PING.value, 0xFF, 0xFF])),
                                  "after": c.ping()}
    faults["write_weights"] = {"reply": reply(encode(Command.WRITE_WEIGHTS, bytes(8))),
                               "after": c.ping()}
    faults["read_weights"] = {"reply": reply(encode(Command.READ_WEIGHTS, bytes(6))),
                              "after": c.ping()}
    # A PING during a classification: BUSY, then the classification's reply.
    c.load_image(img_a)
    c.send(encode(Command.CLASSIFY) + encode(Command.PING))
    first, second = c.read_frame(), c.read_frame()
    faults["busy_ping"] = {"first": {"nak": _nak(first), "command": first.command},
                           "second": result(second), "cycles": c.read_cycles()}
    # A LOAD_IMAGE started during a classification: BUSY, and the image stays as it was.
    c.send(encode(Command.CLASSIFY) + encode(Command.LOAD_IMAGE, img_b.tobytes()))
    frames = [c.read_frame(), c.read_frame()]
    naks = [_nak(f) for f in frames]
    results = [result(f) for f in frames if _nak(f) is None]
    faults["busy_load"] = {"naks": [n for n in naks if n], "results": results,
                           "after": asdict(c.classify_loaded())}
    faults["final"] = {"ping": c.ping(), "after": asdict(c.classify(img_b))}
    return out
