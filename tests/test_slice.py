"""RegisterSlice: random valid/ready against an in-order scoreboard (Amaranth's simulator)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnforge.hw.slice import RegisterSlice


@pytest.mark.parametrize("p_valid, p_ready", [(1.0, 1.0), (0.7, 0.5), (1.0, 0.3), (0.3, 1.0)])
def test_random_handshakes(p_valid, p_ready):
    """Every beat arrives once, in order; ``o.valid``/payload hold until taken; one beat per
    cycle with a free output; ``i.ready`` never depends on ``o.ready`` in the same cycle."""
    rng = np.random.default_rng(int(p_valid * 10 + p_ready * 100))
    beats = [int(v) for v in rng.integers(0, 1 << 12, 400)]
    dut = RegisterSlice(12)
    got = []
    cycles = []

    async def bench(ctx):
        sent = 0
        held = None
        for cycle in range(4000):
            if sent == len(beats) and len(got) == len(beats):
                cycles.append(cycle)
                break
            valid = sent < len(beats) and rng.random() < p_valid
            ready = rng.random() < p_ready
            ctx.set(dut.i.valid, valid)
            ctx.set(dut.i.payload, beats[sent] if sent < len(beats) else 0)
            i_ready = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 0)
            assert ctx.get(dut.i.ready) == i_ready       # no path from o.ready
            ctx.set(dut.o.ready, ready)
            o_valid, o_payload = ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            if held is not None:                          # offered and not taken: held
                assert o_valid and o_payload == held
            if o_valid and ready:
                got.append(o_payload)
                held = None
            elif o_valid:
                held = o_payload
            if valid and i_ready:
                sent += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == beats
    if p_valid == p_ready == 1.0:
        assert cycles[0] == len(beats) + 1                # one beat per cycle, latency 1
