"""cocotb testbench of :class:`cnnforge.sim.verify.train_system.TrainHarness`.

Reads its job from ``CNNFORGE_TB_JOB`` (stall thresholds, seed, cycle budget), resets, starts,
waits for ``done`` (no Python on the per-cycle path: the harness writes every output word to
files) and writes ``{"cycles", "timed_out", "wall"}`` to the job's ``out`` file.
"""

import json
import os

import cocotb
from cocotb.clock import Clock

from .tb_stream import run_harness


@cocotb.test()
async def train_run(dut):
    with open(os.environ["CNNFORGE_TB_JOB"]) as f:
        job = json.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    # surplus words would show in the files after the drain
    cycles, timed_out, wall = await run_harness(dut, job, job["max_cycles"], job["drain"])
    with open(job["out"], "w") as f:
        json.dump({"cycles": cycles, "timed_out": timed_out, "wall": wall}, f)
