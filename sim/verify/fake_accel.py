"""A stand-in accelerator behind the host link, whose replies are predictable from the image
(the link's tests; ``cnnforge bench-link`` measures a link's own rate with it)."""

import numpy as np
from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...hw.params import SoftmaxFormat, Widths


__all__ = ["fake_result_layout", "FakeAccel"]


def fake_result_layout(config):
    widths = Widths(config)
    return data.StructLayout({"logit": signed(widths.dense_acc),
                              "prob": unsigned(SoftmaxFormat.prob_bits),
                              "cls": unsigned(widths.class_index)})


class FakeAccel(wiring.Component):
    """A stand-in for the accelerator behind the link: it sums the pixels, every channel (a beat
    every other cycle), and derives its result beats from the sum, ``delay`` cycles after the
    last pixel, so every field of every reply is predictable. The link's tests use it, and
    ``cnnforge bench-link`` measures a link's own rate with it (``delay=1``: an accelerator
    that is never the bottleneck)."""

    #: Cycles from the last pixel to the first result beat (default).
    DELAY = 3000

    def __init__(self, config, delay=DELAY):
        self._config = config
        self._delay = delay
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), config.in_channels))),
            "o": Out(stream.Signature(fake_result_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.input_size ** 2
        total = Signal(32)
        count = Signal(range(n + 1))
        wait = Signal(range(self._delay + 1))
        beat = Signal(range(cfg.classes))
        phase = Signal()
        pixel = Signal(range(255 * cfg.in_channels + 1))     # a beat's channels, summed
        pixel_valid = Signal()
        m.d.sync += [phase.eq(~phase), pixel_valid.eq(0)]
        with m.If(pixel_valid):
            m.d.sync += total.eq(total + pixel)
        with m.FSM():
            with m.State("SUM"):
                m.d.comb += self.i.ready.eq(phase)              # a gap every other cycle
                with m.If(self.i.valid & self.i.ready):
                    m.d.sync += [pixel.eq(sum(self.i.payload[c] for c in range(cfg.in_channels))),
                                 pixel_valid.eq(1),
                                 count.eq(count + 1)]
                    with m.If(count == n - 1):
                        m.d.sync += wait.eq(self._delay)
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

    @staticmethod
    def result(image, config):
        """The reply to ``image``: the sum ``s`` of its pixels gives the class ``s & 7``, the
        logits ``s * (k + 1) - 300,000`` and the probabilities ``s + 7 * k`` (16 bits)."""
        s = int(np.asarray(image, np.int64).sum())
        k = np.arange(config.classes)
        return {"cls": s & 7, "logits": [int(x) for x in s * (k + 1) - 300_000],
                "probs": [int(x) & 0xFFFF for x in s + 7 * k]}
