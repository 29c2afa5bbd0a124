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

from .serial_port import SerialPortModel


__all__ = ["UartModel", "SimTransport"]

PERIOD_NS = 10


class UartModel(SerialPortModel):
    """8N1 UART at ``divisor`` clock periods per bit: ``send`` drives ``rx``, a monitor decodes
    ``tx`` into ``received``."""

    def __init__(self, dut, divisor):
        self._dut = dut
        self.bit_ns = divisor * PERIOD_NS
        super().__init__()
        self.framing_errors = 0
        dut.rx.value = 1

    async def send(self, data):
        # Bit edges on falling clock edges: never racing the sampling edge.
        await FallingEdge(self._dut.clk)
        for byte in data:
            for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self._dut.rx.value = level
                await Timer(self.bit_ns, "ns")

    async def send_levels(self, levels):
        """Drive ``rx`` to each level for one bit time: malformed UART frames (a low stop bit,
        a break)."""
        await FallingEdge(self._dut.clk)
        for level in levels:
            self._dut.rx.value = level
            await Timer(self.bit_ns, "ns")
        self._dut.rx.value = 1

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
            self._got_bytes()


#: USB full speed's 12 MHz bit clock (the device's ``usb`` domain), in picoseconds.
USB_PERIOD_PS = 83_334     # (cocotb's clocks take an even period)


async def usb_serial_port(dut):
    """Attach the host model to a USB core's UTMI port, enumerate the device and open its
    CDC-ACM data endpoints as a serial port: ``(USBSerialModel, device summary)``."""
    from .usb_host import UTMIHost, USBSerialModel
    dut.usb_rst.value = 0
    host = UTMIHost(dut, dut.usb_clk, prefix="utmi_")
    await host.start()
    device = await host.enumerate()
    ep_out, ep_in = device.cdc_data_endpoints()
    summary = {"vid": device.vid, "pid": device.pid, "ep_out": ep_out.number,
               "ep_in": ep_in.number, "address": host.address, "product": device.product,
               "stalled": [str(r) for r in device.stalled]}
    return USBSerialModel(host, ep_out, ep_in), summary


class SimTransport:
    """The host's transport (``write``, ``read``, ``sleep``, ``flush``, ``now``) onto the UART
    model (or a :class:`~cnnforge.sim.verify.usb_host.USBSerialModel`: a serial port over USB).

    Times given in seconds are converted at ``clk_freq`` (the frequency the simulated core was
    built for), so host timeouts mean the same as on a board.
    """

    def __init__(self, uart, clk_freq, period_ns=PERIOD_NS):
        self._uart = uart
        self._ns_per_s = period_ns * clk_freq
        self.sim = True

    def write(self, data):
        resume(self._uart.send)(bytes(data))

    def write_levels(self, levels):
        """The line itself, one level per bit time (framing errors, breaks)."""
        resume(self._uart.send_levels)(list(levels))

    def read(self, n, timeout):
        return resume(self._uart.recv)(n, timeout * self._ns_per_s)

    def sleep(self, seconds):
        resume(self._uart.wait)(seconds * self._ns_per_s)

    def flush(self):
        self._uart.received.clear()

    def pause_reading(self, seconds):
        """(A serial port over USB) the host issues no IN tokens for ``seconds``."""
        self._uart.pause_reading(seconds * self._ns_per_s)

    def now(self):
        """Simulated seconds at the nominal clock."""
        return resume(self._uart.now_ns)() / self._ns_per_s


@cocotb.test()
async def board_job(dut):
    with open(os.environ["CNNFORGE_TB_JOB"]) as f:
        job = json.load(f)
    module, name = job["function"].split(":")
    func = getattr(importlib.import_module(module), name)

    # (a USB core runs at its real clock: the bus's 12 MHz is real time)
    period_ps = job.get("period_ps", PERIOD_NS * 1000)
    cocotb.start_soon(Clock(dut.clk, period_ps, unit="ps").start())
    # A core whose accelerator runs in its own domain (ClockCrossing) has its clock as a port.
    fast = hasattr(dut, "fast_clk")
    if fast:
        cocotb.start_soon(Clock(dut.fast_clk, job["fast_period_ns"], unit="ns").start())
        dut.fast_rst.value = 1
    # A core with a USB link (boards.usb.USBLink) has its device's UTMI port and clock.
    usb = hasattr(dut, "utmi_rx_data")
    if usb:
        cocotb.start_soon(Clock(dut.usb_clk, USB_PERIOD_PS, unit="ps").start())
        dut.usb_rst.value = 1
    else:
        port = UartModel(dut, job["divisor"])
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    if fast:
        dut.fast_rst.value = 0
    # (a netlist's reset comes from its PLL's lock: the job says how long that takes)
    await ClockCycles(dut.clk, job.get("settle_cycles", 4))
    if usb:
        port, info = await usb_serial_port(dut)
        start_ns = cocotb.simtime.get_sim_time("ns")
    else:
        cocotb.start_soon(port.monitor())
    transport = SimTransport(port, job["clk_freq"], period_ps / 1000)
    result = await bridge(func)(transport, **job.get("args", {}))
    result = {"result": result, "sim_time_ns": cocotb.simtime.get_sim_time("ns")}
    if usb:
        result.update({"framing_errors": 0, "usb": {
            "device": info, "enumerated_ns": start_ns, "host": port.host.stats,
            "port": port.counters}})
    else:
        result["framing_errors"] = port.framing_errors
    with open(job["out"], "w") as f:
        json.dump(result, f)


# ---- host jobs ---------------------------------------------------------------------------------

def _nak(frame):
    """A NAK's ``[code, command]`` (``[code, command, seq]`` for a ``CLASSIFY_IMAGE``)."""
    from cnnforge.boards.protocol import Command
    if frame.command == Command.NAK.value and len(frame.payload) in (2, 3):
        return list(frame.payload)
    return None


def _reply(client, data):
    """Send raw bytes; the record of the next frame (its NAK ``[code, command]`` or None)."""
    client.send(data)
    frame = client.read_frame()
    return {"nak": _nak(frame), "command": frame.command, "payload": frame.payload.hex()}


def _upload(c, transport, upload):
    """Upload a model (``board_scenario``'s ``upload``); ``(payloads, record)``."""
    from cnnforge.boards.protocol import Command, encode
    from cnnforge.hw.accel import PRESETS, ModelMemory, Parallelism
    from cnnforge.sim.reference import model_file
    path = upload.get("model_path")
    model = model_file.load(path) if path else model_file.load()
    par = PRESETS[upload["preset"]]
    if upload.get("target") is not None:
        par = Parallelism(**{**par.to_dict(), "target": upload["target"]})
    memories = upload.get("memories")
    memories = None if memories is None else tuple(ModelMemory[n] for n in memories)
    weights = c.weight_payloads(model, par, memories)
    start = transport.now()
    c.request(Command.WRITE_WEIGHTS, weights[0])
    record = {"frames": len(weights), "bytes": sum(len(w) for w in weights),
              "no_model": _reply(c, encode(Command.CLASSIFY)),
              "loaded_during": c.ping()["model_loaded"]}
    for payload in weights[1:]:
        c.request(Command.WRITE_WEIGHTS, payload)
    record["seconds"] = transport.now() - start
    record["loaded_after"] = c.ping()["model_loaded"]
    return weights, record


def upload_network_and_classify(transport, images, model_path, lanes, folded=None):
    """Upload the layer-list model at ``model_path`` for the parallelism ``lanes`` (``{layer
    index: count}``, as :class:`~cnnforge.hw.network.LayerParallelism`; or with ``folded``,
    ``{"lanes", "target"}``, for a :class:`~cnnforge.hw.folded.FoldedMapping`), then classify
    ``images``; ``{"upload": record, "results": [classification]}``, the record with whether
    the device had a model before and after the upload."""
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import Command
    from cnnforge.hw.network import LayerParallelism
    from cnnforge.sim.reference import model_file
    from cnnforge.hw.folded import FoldedMapping
    qnet = model_file.load_network(model_path)
    if folded is not None:
        par = FoldedMapping(qnet.network, folded["lanes"], target=folded["target"])
    else:
        par = LayerParallelism(qnet.network, {int(k): tuple(v) if isinstance(v, list) else v
                                              for k, v in lanes.items()})
    c = Client(transport, timeout=0.05)
    before = c.ping()["model_loaded"]
    weights = c.weight_payloads(qnet, par)
    for payload in weights:
        c.request(Command.WRITE_WEIGHTS, payload)
    record = {"frames": len(weights), "loaded_before": before,
              "loaded_after": c.ping()["model_loaded"]}
    return {"upload": record,
            "results": [asdict(c.classify(np.asarray(image, np.uint8))) for image in images]}


def upload_and_classify(transport, images, upload):
    """Upload a model (as ``board_scenario``), then classify ``images``; ``[classification]``."""
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client
    c = Client(transport, timeout=0.05)
    _upload(c, transport, upload)
    return [asdict(c.classify(np.asarray(image, np.uint8))) for image in images]


def stream_scenario(transport, images, fault_images):
    """Streamed classification (``Client.classify_many``) in every reply mode and coding, then
    its fault cases, each followed by a good streamed image.

    Returns ``{"info", "modes": {name: {"results", "seconds"}}, "faults": {name: record},
    "legacy"}``; the pytest side checks every result against the golden model and every NAK.
    """
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import (Command, ReplyMode, StreamResult, encode,
                                          stream_payload, zero_run_encode)

    c = Client(transport, timeout=0.05)
    out = {"info": c.ping(), "modes": {}, "faults": {}}
    images = [np.asarray(im, np.uint8) for im in images]
    img_a, img_b = (np.asarray(x, np.uint8) for x in fault_images)
    for name, mode, coding in (("all_auto", ReplyMode.ALL, "auto"),
                               ("logits_raw", ReplyMode.LOGITS, "raw"),
                               ("class_zero_run", ReplyMode.CLASS, "zero-run")):
        start = transport.now()
        results = c.classify_many(images, mode, coding)
        out["modes"][name] = {"results": [asdict(r) for r in results],
                              "seconds": transport.now() - start}
    faults = out["faults"]

    def frame(seq, image, mode=ReplyMode.ALL, coding="zero-run", body=None):
        payload = stream_payload(seq, image, mode, coding)
        return encode(Command.CLASSIFY_IMAGE, payload if body is None else payload[:2] + body)

    def replies(data, n):
        c.send(data)
        got = []
        for _ in range(n):
            f = c.read_frame()
            nak = _nak(f)
            got.append({"nak": nak} if nak else asdict(StreamResult.from_payload(
                f.payload, out["info"]["classes"], ReplyMode.ALL)))
        return got

    def after():
        return asdict(c.classify_many([img_a], ReplyMode.ALL)[0])

    # More images than slots without waiting: the third finds no free buffer (the first is
    # still being read by the accelerator), is NAKed BUSY with its sequence number, and the
    # two others are classified.
    three = b"".join(frame(20 + k, im) for k, im in enumerate((img_a, img_b, img_a)))
    faults["over_window"] = {"replies": replies(three, 3), "after": after()}
    max_run = out["info"]["max_run"]
    code = zero_run_encode(img_b.tobytes())
    zero_at = code.index(0)
    for name, body in (
            ("run_of_0", code[:zero_at + 1] + b"\x00" + code[zero_at + 2:]),
            ("run_over_limit", code[:zero_at + 1] + bytes([max_run + 1]) + code[zero_at + 2:]),
            ("short_code", code[:-1] if code[-2] else code[:-2]),
            ("long_code", code + b"\x05"),
            ("dangling_zero", code + b"\x00"),
            ("short_raw", img_b.tobytes()[:-1])):
        coding = "raw" if name.endswith("raw") else "zero-run"
        faults[name] = {"replies": replies(frame(30, img_b, coding=coding, body=body), 1),
                        "after": after()}
    for name, mode_byte in (("reply_mode_3", 3), ("unknown_mode_bit", 0x0C)):
        payload = bytes([31, mode_byte]) + code
        faults[name] = {"replies": replies(encode(Command.CLASSIFY_IMAGE, payload), 1),
                        "after": after()}
    bad = bytearray(frame(32, img_b))
    bad[len(bad) // 2] ^= 0x10
    faults["flipped_bit"] = {"replies": replies(bytes(bad), 1), "after": after()}
    # A LOAD_IMAGE while a streamed image computes: BUSY; a streamed image during a
    # LOAD_IMAGE classification: BUSY (they share the image buffers).
    faults["load_during_stream"] = {
        "replies": replies(frame(33, img_b) + encode(Command.LOAD_IMAGE, img_a.tobytes()), 2),
        "after": after()}
    c.load_image(img_b)
    c.send(encode(Command.CLASSIFY) + frame(34, img_a))
    first, second = c.read_frame(), c.read_frame()
    faults["stream_during_classify"] = {"first": _nak(first), "second": second.command,
                                        "after": after()}
    # The decoder's worst case at the line rate: runs of the device's longest, back to back,
    # starting on an odd pixel (a byte, then two pixels a cycle) and on an even one, ending
    # inside a word and on the image's last pixel.
    runs = np.zeros_like(img_a)
    runs.flat[0], runs.flat[3 * max_run + 2], runs.flat[-1] = 7, 255, 1
    runs_code = zero_run_encode(runs.tobytes(), max_run)
    assert runs_code.count(bytes([0, max_run])) >= 5
    faults["longest_runs"] = {"image": runs.tolist(),
                              "replies": replies(frame(35, runs, body=runs_code), 1),
                              "after": after()}
    # The one-image-at-a-time commands still work after streaming.
    out["legacy"] = asdict(c.classify(img_b))
    return out


def streamed_images(transport, images):
    """``classify_many`` of ``images`` (every reply with logits and probabilities, the image
    coding the host's choice): the replies, as dicts."""
    from dataclasses import asdict
    import numpy as np
    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import ReplyMode
    c = Client(transport, timeout=0.05)
    c.ping()
    return [asdict(r) for r in c.classify_many([np.asarray(im, np.uint8) for im in images],
                                               ReplyMode.ALL)]


def stalled_host_stream(transport, images, pause_s):
    """Streamed classification (every reply with logits and probabilities) while the host
    stops reading for ``pause_s`` from the first request on (a serial port over USB: the host
    issues no IN tokens meanwhile). ``{"results", "paused_s", "first_reply_s"}``: the replies,
    the time from the first request to the end, and to the first reply read."""
    from dataclasses import asdict
    import numpy as np
    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import ReplyMode
    c = Client(transport, timeout=pause_s + 0.05)
    c.ping()
    start = transport.now()
    first = []

    def progress(done, total):
        if not first:
            first.append(transport.now() - start)

    transport.pause_reading(pause_s)
    results = c.classify_many([np.asarray(im, np.uint8) for im in images], ReplyMode.ALL,
                              progress=progress)
    return {"results": [asdict(r) for r in results], "paused_s": transport.now() - start,
            "first_reply_s": first[0]}


def usb_board_scenario(transport, images, fault_images, stream_images, pause_s):
    """:func:`board_scenario`, then :func:`stalled_host_stream`: one simulation (one build)."""
    return {"scenario": board_scenario(transport, images, fault_images),
            "stalled": stalled_host_stream(transport, stream_images, pause_s)}


def board_scenario(transport, images, fault_images, upload=None, timeout=0.05):
    """Optionally upload a model, classify ``images``, then the fault cases, each followed by
    a good request.

    ``upload``: ``{"model_path", "preset", "target", "memories"}`` — the model (None: the
    committed one) for the preset's parallelism (``target`` replaced unless None), only the
    named :class:`~cnnforge.hw.accel.ModelMemory` memories (None: all). Its first frame is
    followed by a ``CLASSIFY`` (``NO_MODEL``: the upload is incomplete). ``timeout``: seconds
    the host waits for a reply, longer than the device's inter-byte timeout (a board build's
    is 0.1 s; the simulation cores' 2 ms).

    Returns ``{"info", "images": [classification...], "faults": {name: record}, "upload"}``;
    the pytest side checks every record (results against the golden model, NAK codes).
    """
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import LAST, ClassifyResult, Command, encode

    c = Client(transport, timeout=timeout)
    out = {"info_at_start": c.ping(), "images": [], "faults": {}}

    def reply(data):
        return _reply(c, data)

    weights = None
    if upload is not None:
        weights, out["upload"] = _upload(c, transport, upload)
    out["info"] = c.ping()
    classes = out["info"]["classes"]
    for image in images:
        out["images"].append(asdict(c.classify(np.asarray(image, np.uint8))))
    img_a, img_b = (np.asarray(x, np.uint8) for x in fault_images)
    faults = out["faults"]

    def result(frame):
        return asdict(ClassifyResult.from_payload(frame.payload, classes))

    # A flipped bit in a LOAD_IMAGE: BAD_CRC; the image is gone (NO_IMAGE); a reload works.
    bad = bytearray(encode(Command.LOAD_IMAGE, img_a.tobytes()))
    bad[200] ^= 0x08
    faults["flipped_bit"] = {"reply": reply(bad), "classify": reply(encode(Command.CLASSIFY)),
                             "after": asdict(c.classify(img_a))}
    # A LOAD_IMAGE with a good CRC but a byte too few or too many: BAD_LENGTH, and the
    # image loaded before is gone (NO_IMAGE), not classified again.
    for name, data in (("short_load", img_b.tobytes()[:-1]), ("long_load", img_b.tobytes() + b"\0")):
        c.load_image(img_a)
        faults[name] = {"reply": reply(encode(Command.LOAD_IMAGE, data)),
                        "classify": reply(encode(Command.CLASSIFY)),
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
    faults["read_weights"] = {"reply": reply(encode(Command.READ_WEIGHTS, bytes(6))),
                              "after": c.ping()}
    faults["train"] = {"reply": reply(encode(Command.TRAIN, bytes([3]) + img_a.tobytes())),
                       "after": c.ping()}
    word = out["info"]["word_bytes"]
    if not out["info"]["writable"]:
        faults["write_weights"] = {"reply": reply(encode(Command.WRITE_WEIGHTS, bytes(8))),
                                   "after": c.ping()}
    elif weights is not None:
        # A weight frame with a flipped bit in a word: BAD_CRC and nothing written (the next
        # classification is still exact); the staging discarded the image (NO_IMAGE).
        bad = bytearray(encode(Command.WRITE_WEIGHTS, weights[-1]))
        bad[8] ^= 0x10
        faults["weights_bad_crc"] = {"reply": reply(bad),
                                     "classify": reply(encode(Command.CLASSIFY)),
                                     "after": asdict(c.classify(img_a))}
        faults["weights_bad_memory"] = {
            "reply": reply(encode(Command.WRITE_WEIGHTS, bytes([0x07 | LAST, 0, 0]) + bytes(word))),
            "after": c.ping()}
        faults["weights_bad_length"] = {
            "reply": reply(encode(Command.WRITE_WEIGHTS, bytes(3 + word + 1))),
            "after": c.ping()}
        # A weight frame during a classification: BUSY; neither the model nor the image move.
        # (The bad frames above were staged: the image is gone, load it again.)
        c.load_image(img_a)
        c.send(encode(Command.CLASSIFY) + encode(Command.WRITE_WEIGHTS, bytes(weights[-1][:3])
                                                 + bytes(len(weights[-1]) - 3)))
        frames = [c.read_frame(), c.read_frame()]
        faults["weights_busy"] = {"naks": [n for n in map(_nak, frames) if n],
                                  "results": [result(f) for f in frames if _nak(f) is None],
                                  "after": asdict(c.classify_loaded())}
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
    # Requests sent without waiting for the replies: each answered, in order.
    c.send(encode(Command.PING) * 8)
    faults["pipelined_pings"] = [{"command": f.command, "nak": _nak(f)}
                                 for f in [c.read_frame() for _ in range(8)]]
    faults["pipelined_after"] = c.ping()
    # A LOAD_IMAGE and a CLASSIFY sent together: the CLASSIFY waits for the load's reply.
    c.send(encode(Command.LOAD_IMAGE, img_b.tobytes()) + encode(Command.CLASSIFY))
    first, second = c.read_frame(), c.read_frame()
    faults["pipelined_load"] = {"first": first.command, "second": result(second)}
    faults["final"] = {"ping": c.ping(), "after": asdict(c.classify(img_b))}
    return out


def board_train_scenario(transport, images, labels, check_image, ranges, ranges_after):
    """On-chip training through the protocol: ``TRAIN`` steps (each reply and the step's
    cycles), ``READ_WEIGHTS`` of the value ``ranges`` (``[(first, count)]``), a ``CLASSIFY``
    with the new weights, then the fault cases of training, each followed by a good request,
    and ``READ_WEIGHTS`` of ``ranges_after``.

    Returns ``{"info", "steps": [{"result", "cycles"}], "values": [[...]], "after": result,
    "faults": {...}, "values_after": [[...]]}``; the pytest side compares with the golden
    trainer.
    """
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client
    from cnnforge.boards.protocol import (MAX_READ_VALUES, ClassifyResult, Command, encode,
                                          read_weights_payload, train_payload)
    from cnnforge.hw.params import NetworkConfig
    from cnnforge.hw.train import dump_order

    config = NetworkConfig()
    dump_words = sum(n for _, n in dump_order(config))
    c = Client(transport, timeout=0.05)
    out = {"info": c.ping(), "steps": [], "faults": {}}

    def reply(data):
        return _reply(c, data)

    for image, label in zip(images, labels):
        result = c.train(np.asarray(image, np.uint8), label)
        out["steps"].append({"result": asdict(result), "cycles": c.read_cycles()})
    out["values"] = [c.read_values(first, count) for first, count in ranges]
    check = np.asarray(check_image, np.uint8)
    # The last training image is still loaded: classified with the weights after its step.
    out["loaded"] = asdict(c.classify_loaded())
    out["after"] = asdict(c.classify(check))
    f = out["faults"]
    img = np.asarray(images[0], np.uint8)
    f["bad_label"] = {"reply": reply(encode(Command.TRAIN, train_payload(img.tobytes(), 200))),
                      "after": c.ping()}
    f["train_bad_length"] = {"reply": reply(encode(Command.TRAIN, bytes(10))), "after": c.ping()}
    bad = bytearray(encode(Command.TRAIN, train_payload(img.tobytes(), labels[0])))
    bad[300] ^= 0x04
    f["train_bad_crc"] = {"reply": reply(bad), "classify": reply(encode(Command.CLASSIFY)),
                          "after": c.ping()}
    f["read_count_0"] = {"reply": reply(encode(Command.READ_WEIGHTS, bytes(6))),
                         "after": c.ping()}
    f["read_past_end"] = {
        "reply": reply(encode(Command.READ_WEIGHTS, read_weights_payload(dump_words - 3, 4))),
        "after": c.ping()}
    f["read_too_many"] = {
        "reply": reply(encode(Command.READ_WEIGHTS,
                              read_weights_payload(0, MAX_READ_VALUES + 1))),
        "after": c.ping()}
    f["read_bad_length"] = {"reply": reply(encode(Command.READ_WEIGHTS, bytes(5))),
                            "after": c.ping()}
    # A PING during a training step: BUSY, then the step's reply.
    c.send(encode(Command.TRAIN, train_payload(img.tobytes(), labels[0])) + encode(Command.PING))
    frames = [c.read_frame(), c.read_frame()]
    f["busy_train"] = {"naks": [n for n in map(_nak, frames) if n],
                       "commands": [fr.command for fr in frames],
                       "results": [asdict(ClassifyResult.from_payload(fr.payload, config.classes))
                                   for fr in frames if _nak(fr) is None]}
    out["values_after"] = [c.read_values(first, count) for first, count in ranges_after]
    out["final"] = asdict(c.classify(check))
    return out


#: The kinds of round of :func:`fuzz_scenario`, and how often each is drawn.
FUZZ_KINDS = {"ping": 3, "classify": 2, "garbage": 2, "garbage_sync": 3, "framing_error": 2,
              "break": 1, "truncated": 2, "wrong_length": 2, "bad_crc": 2, "oversized": 1, "pipelined": 2}


def fuzz_scenario(transport, images, seed, rounds, drain_s=0.004):
    """Seeded fuzzing of the link: ``rounds`` rounds, each a valid request checked right here
    (PING) or recorded for the golden model (LOAD_IMAGE + CLASSIFY of one of ``images``), or a
    fault with the answer the protocol documents: garbage (no answer, or NAKs once it holds SYNC
    bytes), a byte with a low stop bit or a break inside a frame (NAKs: the frame is lost), a
    truncated frame (``TIMEOUT``), a LOAD_IMAGE one byte short or long (``BAD_LENGTH``, then
    ``CLASSIFY`` answers ``NO_IMAGE``), a bad CRC (``BAD_CRC``), an oversized length
    (``BAD_LENGTH``), 2-7 PINGs and READ_CYCLES back to back (each answered, in order). After
    every fault the replies are drained (``drain_s`` of silence: the
    device's inter-byte timeout and its NAK) and the next round must be answered exactly.

    Returns ``{"info", "problems": [text], "classified": [[image index, result]], "counts"}``.
    """
    import random
    from dataclasses import asdict

    import numpy as np

    from cnnforge.boards.host import Client, LinkError
    from cnnforge.boards.protocol import REPLY, SYNC, Command, Error, encode

    rng = random.Random(seed)
    c = Client(transport, timeout=0.05)
    info = c.ping()
    out = {"info": info, "problems": [], "classified": [], "counts": {}}
    problems = out["problems"]
    images = [np.asarray(im, np.uint8) for im in images]
    kinds, weights = zip(*FUZZ_KINDS.items())

    def drain():
        """Every frame until ``drain_s`` of silence: ``[nak or None]``."""
        got = []
        while True:
            try:
                got.append(_nak(c.read_frame(timeout=drain_s)))
            except LinkError as e:
                if "no reply" not in str(e):
                    problems.append(f"round {n}: {e}")
                return got

    def expect(kind, naks, allowed, answered=False):
        """Only NAKs with a code in ``allowed`` (and, if ``answered``, the request's reply: the
        malformed byte was dropped and the frame around it arrived whole)."""
        codes = {a.value for a in allowed}
        if any((code is None and not answered) or (code is not None and code[0] not in codes)
               for code in naks):
            problems.append(f"round {n} ({kind}): replies {naks}, expected NAKs of "
                            f"{sorted(a.name for a in allowed)}")

    def byte_levels(byte, stop=1):
        return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]

    any_error = set(Error)
    for n in range(rounds):
        kind = rng.choices(kinds, weights)[0]
        out["counts"][kind] = out["counts"].get(kind, 0) + 1
        if kind == "ping":
            got = c.ping()
            if got != info:
                problems.append(f"round {n}: PING answered {got}")
        elif kind == "classify":
            k = rng.randrange(len(images))
            out["classified"].append([k, asdict(c.classify(images[k]))])
        elif kind in ("garbage", "garbage_sync"):
            data = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            if kind == "garbage":
                data = bytes(b for b in data if b != SYNC)
            else:
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = SYNC
            c.send(bytes(data))
            naks = drain()
            expect(kind, naks, any_error)
            if kind == "garbage" and naks:
                problems.append(f"round {n}: garbage without SYNC answered {naks}")
        elif kind in ("framing_error", "break"):
            frame = encode(Command.PING)
            cut = rng.randrange(1, len(frame))
            levels = [lv for b in frame[:cut] for lv in byte_levels(b)]
            if kind == "framing_error":
                levels += byte_levels(rng.randrange(256), stop=0) + [1]
            else:
                levels += [0] * rng.randrange(12, 60) + [1]
            transport.write_levels(levels)
            c.send(frame[cut:])
            expect(kind, drain(), any_error, answered=True)
        elif kind == "truncated":
            frame = encode(Command.LOAD_IMAGE, images[0].tobytes())
            c.send(frame[:rng.randrange(1, len(frame) - 1)])
            expect(kind, drain(), {Error.TIMEOUT})
        elif kind == "wrong_length":
            c.load_image(images[0])
            data = images[0].tobytes()
            data = data[:-1] if rng.random() < 0.5 else data + bytes([rng.randrange(256)])
            c.send(encode(Command.LOAD_IMAGE, data))
            expect(kind, drain(), {Error.BAD_LENGTH})
            c.send(encode(Command.CLASSIFY))
            naks = drain()
            if naks != [[Error.NO_IMAGE.value, Command.CLASSIFY.value]]:
                problems.append(f"round {n}: CLASSIFY after a failed load answered {naks}")
        elif kind == "bad_crc":
            frame = bytearray(encode(Command.PING, b""))
            frame[-1 - rng.randrange(2)] ^= 1 << rng.randrange(8)
            c.send(bytes(frame))
            expect(kind, drain(), {Error.BAD_CRC})
        elif kind == "oversized":
            c.send(bytes([SYNC, Command.LOAD_IMAGE.value, 0xFF, 0xFF]))
            expect(kind, drain(), {Error.BAD_LENGTH})
        elif kind == "pipelined":
            # Requests back to back: each answered, in order.
            sent = [rng.choice((Command.PING, Command.READ_CYCLES))
                    for _ in range(rng.randrange(2, 8))]
            c.send(b"".join(encode(r) for r in sent))
            got = []
            for r in sent:
                try:
                    f = c.read_frame()
                except LinkError as e:
                    got.append(str(e))
                    continue
                nak = _nak(f)
                got.append(nak if nak else f.command)
            if got != [r.value | REPLY for r in sent]:
                problems.append(f"round {n} (pipelined {[r.name for r in sent]}): answered {got}")
    out["final"] = c.ping() == info
    return out
