"""The protocol engine (boards/link.py) with a small fake accelerator, through its UART pins.

The fake sums the pixels and derives its result beats from the sum, so every field of every
reply is predictable; the real accelerator runs in tests/test_board_top.py.
"""

import numpy as np
import pytest
from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from cnnforge.sim.verify.board_system import run_sim_job
from cnnforge.boards.link import Link
from cnnforge.boards.protocol import PROTOCOL_VERSION, Command, Error
from cnnforge.hw.params import NetworkConfig, SoftmaxFormat, Widths

CONFIG = NetworkConfig()
DELAY = 3000                 # cycles from the last pixel to the first result beat


def result_layout(config):
    widths = Widths(config)
    return data.StructLayout({"logit": signed(widths.dense_acc),
                              "prob": unsigned(SoftmaxFormat.prob_bits),
                              "cls": unsigned(widths.class_index)})


class FakeAccel(wiring.Component):
    def __init__(self, config):
        self._config = config
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), config.in_channels))),
            "o": Out(stream.Signature(result_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.input_size ** 2
        total = Signal(32)
        count = Signal(range(n + 1))
        wait = Signal(range(DELAY + 1))
        beat = Signal(range(cfg.classes))
        phase = Signal()
        pixel = Signal(8)
        pixel_valid = Signal()
        m.d.sync += [phase.eq(~phase), pixel_valid.eq(0)]
        with m.If(pixel_valid):
            m.d.sync += total.eq(total + pixel)
        with m.FSM():
            with m.State("SUM"):
                m.d.comb += self.i.ready.eq(phase)              # a gap every other cycle
                with m.If(self.i.valid & self.i.ready):
                    m.d.sync += [pixel.eq(self.i.payload[0]), pixel_valid.eq(1),
                                 count.eq(count + 1)]
                    with m.If(count == n - 1):
                        m.d.sync += wait.eq(DELAY)
                        m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    m.d.sync += [                         # registered outputs, no multiplier
                        beat.eq(0),
                        self.o.payload.logit.eq(total - 300_000),
                        self.o.payload.prob.eq(total),
                        self.o.payload.cls.eq(total[:3]),
                    ]
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += [beat.eq(beat + 1),
                                 self.o.payload.logit.eq(self.o.payload.logit + total),
                                 self.o.payload.prob.eq(self.o.payload.prob + 7)]
                    with m.If(beat == cfg.classes - 1):
                        m.d.sync += [total.eq(0), count.eq(0)]
                        m.next = "SUM"
        return m


def fake_result(image):
    s = int(np.asarray(image, np.int64).sum())
    k = np.arange(CONFIG.classes)
    return {"cls": s & 7, "logits": [int(x) for x in s * (k + 1) - 300_000],
            "probs": [int(x) & 0xFFFF for x in s + 7 * k]}


def check_result(got, image, where):
    exp = fake_result(image)
    for key in ("cls", "logits", "probs"):
        assert got[key] == exp[key], f"{where}: {key} {got[key]} != {exp[key]}"


def check_board_scenario(out, images, fault_images, check):
    """Assertions shared with tests/test_board_top.py: ``check(result, image, where)``."""
    job = out["result"]
    assert out["framing_errors"] == 0
    info = job["info"]
    assert {k: info[k] for k in ("version", "input_size", "in_channels", "classes")} == \
        {"version": PROTOCOL_VERSION, "input_size": CONFIG.input_size,
         "in_channels": CONFIG.in_channels, "classes": CONFIG.classes}
    assert info["model_loaded"]
    assert len(job["images"]) == len(images)
    for n, (got, image) in enumerate(zip(job["images"], images)):
        check(got, image, f"image {n}")
        assert got["cycles"] > 0
    img_a, img_b = fault_images
    f = job["faults"]

    def nak(record, code, command):
        assert record["nak"] == [code.value, command], \
            f"expected NAK {code.name} for 0x{command:02x}, got {record}"

    nak(f["flipped_bit"]["reply"], Error.BAD_CRC, Command.LOAD_IMAGE.value)
    nak(f["flipped_bit"]["classify"], Error.NO_IMAGE, Command.CLASSIFY.value)
    check(f["flipped_bit"]["after"], img_a, "after flipped bit")
    assert f["flipped_length"]["reply"]["nak"] is not None
    nak(f["truncated"]["reply"], Error.TIMEOUT, Command.LOAD_IMAGE.value)
    assert f["garbage"]["reply"]["nak"] is None
    assert f["garbage"]["reply"]["command"] == Command.PING.value | 0x80
    nak(f["unknown_command"]["reply"], Error.UNKNOWN_COMMAND, 0x42)
    nak(f["bad_length"]["reply"], Error.BAD_LENGTH, Command.PING.value)
    nak(f["oversized_length"]["reply"], Error.BAD_LENGTH, Command.PING.value)
    nak(f["read_weights"]["reply"], Error.UNSUPPORTED, Command.READ_WEIGHTS.value)
    nak(f["train"]["reply"], Error.UNSUPPORTED, Command.TRAIN.value)
    assert not info["trainable"]
    pinged = ["flipped_length", "truncated", "garbage", "unknown_command", "bad_length",
              "oversized_length", "read_weights", "train"]
    if not info["writable"]:
        assert info["word_bytes"] == 0
        nak(f["write_weights"]["reply"], Error.UNSUPPORTED, Command.WRITE_WEIGHTS.value)
        pinged.append("write_weights")
    elif "weights_bad_crc" in f:
        nak(f["weights_bad_crc"]["reply"], Error.BAD_CRC, Command.WRITE_WEIGHTS.value)
        nak(f["weights_bad_crc"]["classify"], Error.NO_IMAGE, Command.CLASSIFY.value)
        check(f["weights_bad_crc"]["after"], img_a, "after a weight frame with a bad CRC")
        nak(f["weights_bad_memory"]["reply"], Error.BAD_MEMORY, Command.WRITE_WEIGHTS.value)
        nak(f["weights_bad_length"]["reply"], Error.BAD_LENGTH, Command.WRITE_WEIGHTS.value)
        pinged += ["weights_bad_memory", "weights_bad_length"]
        busy = f["weights_busy"]
        assert busy["naks"] == [[Error.BUSY.value, Command.WRITE_WEIGHTS.value]], busy["naks"]
        assert len(busy["results"]) == 1
        check(busy["results"][0], img_a, "classify during a WRITE_WEIGHTS")
        check(busy["after"], img_a, "model and image unchanged by a BUSY WRITE_WEIGHTS")
    for name in pinged:
        assert f[name]["after"] == info, name
    nak(f["busy_ping"]["first"], Error.BUSY, Command.PING.value)
    check(f["busy_ping"]["second"], img_a, "classify answered after a BUSY")
    assert f["busy_ping"]["cycles"] > 0
    assert f["busy_load"]["naks"] == [[Error.BUSY.value, Command.LOAD_IMAGE.value]]
    assert len(f["busy_load"]["results"]) == 1
    check(f["busy_load"]["results"][0], img_a, "classify during a LOAD_IMAGE")
    check(f["busy_load"]["after"], img_a, "image unchanged by a BUSY LOAD_IMAGE")
    check(f["final"]["after"], img_b, "final")


@pytest.mark.parametrize("divisor", [4, 7])
def test_link_with_fake_accelerator(divisor):
    rng = np.random.default_rng(divisor)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(4)]
    images.append(np.zeros((28, 28), np.uint8))
    images.append(np.full((28, 28), 255, np.uint8))
    fault_images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(2)]
    clk_freq = 3_000_000 * divisor
    link = Link(accel=FakeAccel(CONFIG), config=CONFIG, divisor=divisor,
                timeout=round(0.002 * clk_freq))
    out = run_sim_job(f"link_fake_{divisor}", link, "cnnforge.sim.verify.tb_board:board_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [im.tolist() for im in fault_images]},
                      divisor=divisor, clk_freq=clk_freq)
    check_board_scenario(out, images, fault_images, check_result)
    cycles = out["result"]["images"][0]["cycles"]
    # 784 pixels at one per 2 cycles, the delay, 10 beats: the capture's stalls are not counted.
    assert 2 * 784 + DELAY <= cycles <= 2 * 784 + DELAY + 50, cycles


def test_link_validation():
    with pytest.raises(TypeError, match="config must be a NetworkConfig"):
        Link(accel=None, config={}, divisor=4, timeout=10)
    with pytest.raises(ValueError, match="timeout must be a positive number of cycles, not 0"):
        Link(accel=None, config=CONFIG, divisor=4, timeout=0)
    with pytest.raises(ValueError, match="divisor must be at least 4"):
        Link(accel=None, config=CONFIG, divisor=2, timeout=10)
