"""cocotb testbench of :class:`cnnforge.sim.train_system.TrainHarness`.

Reads its job from ``CNNFORGE_TB_JOB`` (stall thresholds, seed, cycle budget), resets, starts,
waits for ``done`` (no Python on the per-cycle path: the harness writes every output word to
files) and writes ``{"cycles", "timed_out", "wall"}`` to the job's ``out`` file.
"""

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout


@cocotb.test()
async def train_run(dut):
    with open(os.environ["CNNFORGE_TB_JOB"]) as f:
        job = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.start.value = 0
    dut.in_gap.value = job["in_gap"]
    dut.out_stall.value = job["out_stall"]
    dut.seed.value = job["seed"]
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
            await with_timeout(RisingEdge(dut.done), job["max_cycles"] * 10, "ns")
        except cocotb.triggers.SimTimeoutError:
            timed_out = True
    wall = time.perf_counter() - start
    cycles = int(dut.cycles.value)
    await ClockCycles(dut.clk, job["drain"])    # surplus words would show in the files
    with open(job["out"], "w") as f:
        json.dump({"cycles": cycles, "timed_out": timed_out, "wall": wall}, f)
