"""The stream harness itself: it passes a correct block and catches broken ones."""

import pytest
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from cnnforge.sim.verify.rtl_runner import run_stream_test


class Increment(wiring.Component):
    """A one-register stream stage computing x + 1 (optionally dropping the handshake rule)."""

    def __init__(self, *, broken=None):
        self._broken = broken
        super().__init__({"i": In(stream.Signature(unsigned(12))),
                          "o": Out(stream.Signature(unsigned(12)))})

    def elaborate(self, platform):
        m = Module()
        if self._broken == "ignores_ready":
            m.d.comb += self.i.ready.eq(1)
        else:
            m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += [self.o.valid.eq(self.i.valid),
                         self.o.payload.eq(self.i.payload + (2 if self._broken == "adds_two" else 1))]
        return m


WORDS = list(range(0, 4000, 3))


def test_correct_block_passes_every_stall_setting():
    result = run_stream_test("harness_increment", Increment, inputs=WORDS,
                             expected=[(x + 1) & 0xFFF for x in WORDS])
    result.assert_ok()
    # One word per cycle without stalls: the no-stall run takes len(WORDS) + latency cycles.
    assert result.runs[0].cycles <= len(WORDS) + 3
    assert result.runs[-1].cycles > 2 * len(WORDS)   # the heavy-stall run really stalled


@pytest.mark.parametrize("broken, message", [
    ("adds_two", "word 0 is 0x2, expected 0x1"),
    ("ignores_ready", "timed out|output words, expected"),
])
def test_broken_block_is_caught(broken, message):
    result = run_stream_test(f"harness_broken_{broken}", lambda: Increment(broken=broken),
                             inputs=WORDS, expected=[(x + 1) & 0xFFF for x in WORDS])
    with pytest.raises(AssertionError, match=message):
        result.assert_ok()
