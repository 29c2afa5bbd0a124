"""The cell models of the gate-level simulation that are ours (sim/verify/gowin_cells.v,
sim/verify/ecp5_cells.v: Yosys ships those cells as blackboxes) against RTL simulation:
sim/verify/cell_probe.py's memories and products, synthesized by synth_gowin for each Gowin
family and by synth_ecp5, simulated beside their RTL on the same pseudo-random stimuli for
20,000 cycles — every output bit equal every cycle."""

import pytest

from cnnforge.boards.build import tool_env
from cnnforge.errors import ToolError
from cnnforge.sim.verify.cell_probe import run_probe

CYCLES = 20_000


def _needs_tools(family):
    try:
        tool_env(family)
    except ToolError as e:
        pytest.skip(str(e))


def _block_ram_widths(top):
    """``{(cell, port width)}`` of the netlist's block RAMs."""
    return {(cell["type"], int(value, 2)) for cell in top["cells"].values()
            for name, value in cell["parameters"].items()
            if cell["type"] in ("DPX9B", "SDPX9B", "SPX9", "DP16KD")
            and name.startswith(("BIT_WIDTH", "DATA_WIDTH"))}


#: Per family: the modelled cells and block RAM widths the probe's netlist must contain, so
#: that the comparison covers them.
COVERED = {
    "gw1n": ({"MULT9X9", "MULT18X18", "DPX9B", "SDPX9B", "SPX9"},
             {("DPX9B", 9), ("DPX9B", 18), ("SDPX9B", 36), ("SPX9", 9), ("SPX9", 36)}),
    "ecp5": ({"MULT18X18D", "DP16KD"}, {("DP16KD", 9), ("DP16KD", 18), ("DP16KD", 36)}),
}
COVERED["gw2a"] = COVERED["gw1n"]


@pytest.mark.parametrize("family", ["gw1n", "gw2a", "ecp5"])
def test_cell_models_match_rtl(family):
    _needs_tools(family)
    result, top = run_probe(f"cell_probe_{family}", family, CYCLES)
    kinds, widths = COVERED[family]
    assert kinds <= {cell["type"] for cell in top["cells"].values()}
    assert widths <= _block_ram_widths(top)
    assert result["cycles"] >= CYCLES
    assert result["mismatches"] == 0, \
        f"{result['mismatches']} cycles differ, the first at cycle {result['first_mismatch']}"


def test_cell_probe_sees_a_flipped_bit():
    """The negative control: one output bit of the netlist flipped, every cycle differs."""
    _needs_tools("gw2a")
    result, _ = run_probe("cell_probe_gw2a_corrupt", "gw2a", 1000, corrupt=True)
    assert result["mismatches"] == result["cycles"] >= 1000
