"""Generic cocotb testbench for :class:`cnnforge.sim.verify.harness.StreamHarness`.

Reads its job from the JSON file named by ``CNNFORGE_TB_JOB``: for every run, reset, set the
stall thresholds and seed, start, wait for ``done`` (no Python on the per-cycle path), let the
DUT run ``drain`` more cycles to expose surplus outputs, then read back every captured word.
Writes the results to the job's ``out`` file.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer, with_timeout


async def run_harness(dut, run, max_cycles, drain):
    """Reset, set ``run``'s ``in_gap``/``out_stall``/``seed``, pulse ``start``, wait for
    ``done`` (at most ``max_cycles``), then ``drain`` more cycles (surplus outputs show).
    Returns ``(cycles, timed_out, wall seconds)``. Shared by the harness testbenches."""
    dut.rst.value = 1
    dut.start.value = 0
    dut.in_gap.value = run["in_gap"]
    dut.out_stall.value = run["out_stall"]
    dut.seed.value = run["seed"]
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    start = time.perf_counter()
    timed_out = False
    if not dut.done.value:
        try:
            await with_timeout(RisingEdge(dut.done), max_cycles * 10, "ns")
        except cocotb.triggers.SimTimeoutError:
            timed_out = True
    wall = time.perf_counter() - start
    cycles = int(dut.cycles.value)
    await ClockCycles(dut.clk, drain)
    return cycles, timed_out, wall


@cocotb.test()
async def stream_runs(dut):
    with open(os.environ["CNNFORGE_TB_JOB"]) as f:
        job = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    results = []
    for run in job["runs"]:
        dut.rd_addr.value = 0
        cycles, timed_out, wall = await run_harness(dut, run, job["max_cycles"], job["drain"])
        received = int(dut.received.value)
        words = []
        for addr in range(min(received, job["n_expected"])):
            dut.rd_addr.value = addr
            await Timer(1, "ns")
            words.append(str(int(dut.rd_data.value)))   # strings: words may exceed 64 bits
        results.append({"cycles": cycles, "received": received, "timed_out": timed_out,
                        "wall": wall, "words": words, **run})
    with open(job["out"], "w") as f:
        json.dump(results, f)
