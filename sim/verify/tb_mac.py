"""cocotb testbench for :class:`cnnforge.hw.mac.MACArray` (a tiny non-stream block: per-cycle).

Reads its job from the JSON file named by ``CNNFORGE_TB_JOB``::

    {"inputs": [[valid, first, last, a_bits, b_bits], ...],   # one entry per clock cycle
     "variants": ["generic", "ice40"],                         # output port prefixes
     "drain": 8, "out": "results.json"}

The toplevel has the MAC's input ports (``i_valid``, ``i_first``, ``i_last``, ``a``, ``b``)
and, per variant ``v``, the outputs ``v__o_valid`` and ``v__acc``. Inputs are driven on the
falling edge and sampled by the next rising edge: entry ``k`` is presented during clock cycle
``k``. Outputs are sampled on every falling edge. For every variant the testbench records
``[cycle, acc_bits]`` of each cycle with ``o_valid`` set (a group presented in cycle ``k`` that
closes an accumulation is expected in cycle ``k + MACArray.LATENCY``). Checking is left to the
pytest side.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge


@cocotb.test()
async def mac_vectors(dut):
    with open(os.environ["CNNFORGE_TB_JOB"]) as f:
        job = json.load(f)
    variants = job["variants"]
    valid_ports = [getattr(dut, f"{v}__o_valid") for v in variants]
    acc_ports = [getattr(dut, f"{v}__acc") for v in variants]
    captured = {v: [] for v in variants}

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.i_valid.value = 0
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    i_valid, i_first, i_last, a, b = dut.i_valid, dut.i_first, dut.i_last, dut.a, dut.b
    inputs = job["inputs"]
    total = len(inputs) + job["drain"]
    start = time.perf_counter()
    for cycle in range(total):
        # Outputs during clock cycle `cycle` (after the rising edge that sampled entry cycle - 1).
        for v, vp, ap in zip(variants, valid_ports, acc_ports):
            if vp.value:
                captured[v].append([cycle, str(int(ap.value))])
        if cycle < len(inputs):
            valid, first, last, a_bits, b_bits = inputs[cycle]
            i_valid.value = valid
            i_first.value = first
            i_last.value = last
            a.value = a_bits
            b.value = b_bits
        else:
            i_valid.value = 0
        await FallingEdge(dut.clk)
    wall = time.perf_counter() - start
    with open(job["out"], "w") as f:
        json.dump({"cycles": total, "wall": wall, "outputs": captured}, f)
