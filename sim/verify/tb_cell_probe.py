"""cocotb side of :func:`cnnforge.sim.verify.cell_probe.run_probe`: run the clock for the
asked number of cycles (one timer, no Python per cycle) and write the counters."""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Timer


@cocotb.test()
async def probe(dut):
    cycles = int(os.environ["CNNFORGE_PROBE_CYCLES"])
    dut.corrupt.value = int(os.environ.get("CNNFORGE_PROBE_CORRUPT", "0"))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await Timer(10 * cycles + 5, unit="ns")
    out = {"cycles": int(dut.cycles.value), "mismatches": int(dut.mismatches.value),
           "first_mismatch": int(dut.first_mismatch.value)}
    with open(os.environ["CNNFORGE_PROBE_OUT"], "w") as f:
        json.dump(out, f)
