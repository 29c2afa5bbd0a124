# amaranth: UnusedElaboratable=no
"""``cnnforge check``: block RAM counted from the elaborated design against what the builds'
reports said, cycles against simulation, and refusals in one line."""

import subprocess
import sys

import pytest

from cnnforge.boards.top import board_core
from cnnforge.boards.check import LOGIC_ERROR, block_ram_blocks, check, design_memories, Memory
from cnnforge.boards.logic import estimate_logic
from cnnforge.hw.accel import PRESETS
from cnnforge.hw.folded import FoldedMapping
from cnnforge.hw.network import (LayerParallelism, NetworkAccelerator, network_accelerator,
                                 preset_parallelism)
from cnnforge.hw.params import Conv2D, Dense, Flatten, MaxPool, Network
from cnnforge.sim.reference import model_file
from cnnforge.sim.verify.networks import random_qnet


def _lenet():
    return model_file.load_network(model_file.DEFAULT_PATH.with_name("lenet.npz"))


def _blocks(core, family="ecp5"):
    return sum(block_ram_blocks(m, family) for m in design_memories(core))


#: DP16KD used, from the build reports (`make bitstream BOARD=…`; the lenet builds
#: `make bitstream BOARD=ulx3s MODEL=lenet.npz`, the standard one at 7e9beba with 160
#: multipliers balanced, the deep one at a31ed97). The seed builds are also rebuilt by
#: tests/test_boards.py::test_bitstream, which checks its report against this estimate.
BUILD_REPORTS = [
    ("ulx3s seed", lambda: board_core(model_file.load(), PRESETS["ecp5-85f"], clk_freq=30e6,
                                      baud=3_000_000, accel_domain="fast"), 35),
    ("orangecrab seed", lambda: board_core(model_file.load(), PRESETS["ecp5-25f"],
                                           clk_freq=72e6, baud=3_000_000), 41),
    ("ulx3s lenet standard", lambda: board_core(
        _lenet(), None, clk_freq=30e6, baud=3_000_000, accel_domain="fast",
        accel=NetworkAccelerator(_lenet(), LayerParallelism.balanced(_lenet().network, 160))),
     62),
    ("ulx3s lenet deep", lambda: board_core(
        _lenet(), None, clk_freq=30e6, baud=3_000_000, accel_domain="fast",
        accel=NetworkAccelerator(_lenet(), preset_parallelism(_lenet().network, "ecp5-85f"))),
     65),
    # `make bitstream BOARD=orangecrab MODEL=lenet.npz` at f93bf75 (the 56 x 40 pool partials
    # in LUT RAM).
    ("orangecrab lenet", lambda: board_core(
        _lenet(), None, clk_freq=72e6, baud=3_000_000,
        accel=NetworkAccelerator(_lenet(), preset_parallelism(_lenet().network, "ecp5-25f"))),
     53),
    # SB_RAM40_4K: `make bitstream BOARD=icebreaker MODEL=lenet.npz` (the folded mapping; 27
    # at 5a3534b, 28 with the link's transmit buffer, 30 since the link's two image slots for
    # streaming, 7754137); tests/test_boards.py rebuilds it.
    ("icebreaker lenet folded", lambda: board_core(
        _lenet(), None, clk_freq=30e6, baud=3_000_000,
        accel=network_accelerator(_lenet(), preset_parallelism(_lenet().network, "up5k"))),
     30),
]

#: Logic cells of that build with the streaming link (5,112 at the commit after b797f16; 4,884
#: before it, 4,865 before the link's transmit buffer).
ICEBREAKER_LENET_LC = 5_112


@pytest.mark.parametrize("name, core, used", BUILD_REPORTS, ids=[b[0] for b in BUILD_REPORTS])
def test_block_ram_as_the_builds_used(name, core, used):
    assert _blocks(core(), "ice40" if name.startswith("icebreaker") else "ecp5") == used


#: Logic the builds placed (ECP5 TRELLIS_COMB, iCE40 logic cells), from their reports: the
#: ECP5 seed builds of README's board table, the ULX3S lenet build at 128d013, the OrangeCrab
#: lenet build at f93bf75; the iCEBreaker builds of this commit's link (transmit buffer).
#: tests/test_boards.py holds the estimate against the builds it runs, too.
LOGIC_REPORTS = [
    ("ulx3s seed", BUILD_REPORTS[0][1], 60_856),
    ("orangecrab seed", BUILD_REPORTS[1][1], 11_643),
    ("ulx3s lenet deep", BUILD_REPORTS[3][1], 44_192),
    ("orangecrab lenet", BUILD_REPORTS[4][1], 19_796),
    ("icebreaker lenet folded", BUILD_REPORTS[5][1], ICEBREAKER_LENET_LC),
    # (`make bitstream BOARD=icebreaker` with the softmax's tables in block RAM; 5,246 before,
    # 5,056 before the streaming link)
    ("icebreaker seed", lambda: board_core(model_file.load(), PRESETS["up5k"], clk_freq=30e6,
                                           baud=3_000_000), 5_138),
]


@pytest.mark.parametrize("name, core, used", LOGIC_REPORTS, ids=[b[0] for b in LOGIC_REPORTS])
def test_logic_estimate_within_its_error_of_the_builds(name, core, used):
    family = "ice40" if name.startswith("icebreaker") else "ecp5"
    got = estimate_logic(core(), family)["logic"]
    assert abs(got - used) <= LOGIC_ERROR * used, \
        f"{name}: estimated {got:,}, the build placed {used:,} ({got / used - 1:+.1%})"


def test_logic_estimate_grows_with_the_design():
    """More multipliers, more logic (the estimate is not a constant that happens to fit). Not
    at the low end: with few conv lanes the per-word bank bits of a deep weight memory cost
    more than the products saved (8 multipliers: about 29,500; the estimate sees it)."""
    lenet = _lenet()
    small, big = (estimate_logic(board_core(lenet, None, clk_freq=72e6, baud=3_000_000,
                                            accel=NetworkAccelerator(lenet, LayerParallelism.balanced(
                                                lenet.network, n))), "ecp5")["logic"]
                  for n in (24, 96))
    assert big > 1.5 * small, (small, big)


def test_a_design_over_the_logic_is_refused_in_one_line():
    r = check(_lenet(), "orangecrab", multipliers=160)
    t = r["totals"]
    assert t["logic"] > (1 + LOGIC_ERROR) * t["logic_available"]
    assert r["problem"].startswith("does not fit: logic (TRELLIS_COMB): needs about ")
    assert r["problem"].endswith("the LFE5U-25F has 24,288")


def test_block_ram_rule():
    # Shallow, small, asynchronously read or read-only memories are not block RAM.
    assert block_ram_blocks(Memory("m", 32, 64, True, True)) == 0
    assert block_ram_blocks(Memory("m", 64, 16, True, True)) == 0          # 1,024 bits
    assert block_ram_blocks(Memory("m", 64, 26, False, True)) == 0
    assert block_ram_blocks(Memory("m", 64, 32, True, False)) == 0
    assert block_ram_blocks(Memory("m", 64, 25, True, True)) == 1
    assert block_ram_blocks(Memory("m", 1600, 256, True, True)) == 29     # 2048 x 9, one deep
    assert block_ram_blocks(Memory("m", 12800, 32, True, True)) == 26     # 1024 x 18, 13 deep
    assert block_ram_blocks(Memory("m", 56, 40, True, True)) == 0          # LUT RAM
    assert block_ram_blocks(Memory("m", 64, 25, True, True)) == 1


def test_check_lenet_on_the_ulx3s():
    r = check(_lenet(), "ulx3s")
    assert r["fits"] and r["problem"] is None
    t = r["totals"]
    assert t["block_ram"] == 65 and t["multipliers"] == 113
    assert t["cycles_per_image"] == 20_004      # conv2: 20,000 + 3 + 1 (deep image switch)
    assert [row["kind"] for row in r["layers"]] == ["conv2d", "maxpool", "conv2d", "maxpool",
                                                   "flatten", "dense", "dense"]
    assert sum(row["macs"] for row in r["layers"]) == 1_645_440


def test_a_network_that_does_not_fit_is_refused_in_one_line(tmp_path):
    net = Network((28, 28, 1), (Conv2D(8, 3), MaxPool(2), Flatten(), Dense(300, True),
                                Dense(10)))
    qnet = random_qnet(net, 1)
    r = check(qnet, "orangecrab")
    assert not r["fits"]
    assert r["problem"].startswith("does not fit: block RAM (DP16KD): needs ")
    assert r["problem"].endswith("the LFE5U-25F has 56")
    path = tmp_path / "big.npz"
    model_file.save(qnet, path)
    for command in (["check", str(path), "--board", "orangecrab"],
                    ["bitstream", "--board", "orangecrab", "--model", str(path),
                     "--out", str(tmp_path / "build")]):
        run = subprocess.run([sys.executable, "-m", "cnnforge.cli", *command],
                             capture_output=True, text=True)
        assert run.returncode != 0
        last = run.stderr.strip().splitlines()
        assert len(last) == 1 and "does not fit: block RAM (DP16KD): needs" in last[0], \
            run.stderr
    assert not (tmp_path / "build").exists() or not any((tmp_path / "build").iterdir())


def test_check_lenet_on_the_icebreaker():
    """The folded mapping: every SB_MAC16 (two products each), the four SPRAMs, block RAM as
    the build used it, the cycles of the mapping's pass-by-pass model (held against the
    simulation in tests/test_folded.py)."""
    r = check(_lenet(), "icebreaker")
    assert r["fits"] and r["problem"] is None
    t = r["totals"]
    assert (t["block_ram"], t["dsps"], t["spram"], t["multipliers"]) == (30, 8, 4, 16)
    assert t["pipeline"] == "folded"
    assert t["cycles_per_image"] == FoldedMapping(_lenet().network, 8).cycles_per_image
    assert t["cycles_per_image"] <= 1.5 * t["multiplier_bound"]
    assert all(row["multipliers"] == 16 for row in r["layers"] if row["weights"])


def test_check_on_a_gowin_board():
    """The Tang Primer 20K (GW2A-18C): block RAM by the ECP5's rule (the same 18-Kbit shapes and
    16 x 4 LUT RAM), as its seed build used it (`make bitstream BOARD=tangprimer20k`: 41
    BSRAM); lenet does not fit its 46 BSRAM, in one line; the logic is not estimated (no
    calibration for the family) and says so."""
    from cnnforge.hw.accel import PRESETS
    core = board_core(model_file.load(), PRESETS["gw2a-18"], clk_freq=72e6, baud=3_000_000)
    assert _blocks(core, "gw2a") == 41
    r = check(_lenet(), "tangprimer20k")
    assert r["problem"] == ("does not fit: block RAM (BSRAM): needs 58, the GW2A-LV18PG256C8/I7 "
                            "has 46")
    assert r["totals"]["logic"] is None and "synth_gowin" in r["totals"]["products"]


def test_block_ram_rule_on_the_ice40():
    # No LUT RAM: every writable memory with synchronous reads takes blocks; tables are logic.
    assert block_ram_blocks(Memory("m", 8, 27, True, True), "ice40") == 2       # 256 x 16
    assert block_ram_blocks(Memory("m", 1792, 8, True, True), "ice40") == 4     # 512 x 8
    assert block_ram_blocks(Memory("m", 64, 16, True, False), "ice40") == 0


def test_explore_writes_the_sweep(tmp_path):
    """`cnnforge explore`: every balanced parallelism, more multipliers never slower, the
    board preset's marked, JSON, CSV and a PNG written."""
    import json
    from cnnforge.explore import explore_cli
    net = Network((12, 12, 3), (Conv2D(4, 3, 2, "same"), Conv2D(6, 3, 1, "same"), MaxPool(2),
                                Flatten(), Dense(8, True), Dense(5)))
    path = tmp_path / "small.npz"
    model_file.save(random_qnet(net, 1), path)
    points = explore_cli(path, "orangecrab", tmp_path / "out", log=lambda *a: None)
    assert len(points) >= 4 and sum(p["default"] for p in points) == 1
    assert all(a["cycles_per_image"] >= b["cycles_per_image"]
               for a, b in zip(points, points[1:]))
    saved = json.loads((tmp_path / "out" / "small-orangecrab.json").read_text())
    assert saved["points"] == points
    rows = (tmp_path / "out" / "small-orangecrab.csv").read_text().splitlines()
    assert rows[0].startswith("multipliers,cycles_per_image") and len(rows) == len(points) + 1
    assert (tmp_path / "out" / "small-orangecrab.png").read_bytes()[:4] == b"\x89PNG"


def test_calibration_fit_and_stat_parser():
    """`cnnforge calibrate-logic`'s pieces without Yosys: Yosys's `stat` per module, the
    non-negative least squares, the cells a module counts."""
    import numpy as np
    from cnnforge.boards.blocks import parse_stat
    from cnnforge.calibrate_logic import module_cells, nnls
    stat = parse_stat("=== top.accel ===\n\n   Number of cells: 5\n     3   LUT4\n     1   CCU2C\n"
                      "     1   TRELLIS_DPR16X4\n\n=== top ===\n     2   LUT4\n"
                      "=== design hierarchy ===\n     9   LUT4\n")
    assert module_cells(stat["top.accel"], "ecp5") == 3 + 2 + 4
    assert module_cells(stat["top"], "ecp5") == 2
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = nnls(a, a @ np.array([2.0, -1.0]))
    assert (x >= 0).all() and x[1] == 0 and abs(x[0] - 1.5) < 1e-9


def test_calibrate_logic_refuses_an_unknown_family():
    run = subprocess.run([sys.executable, "-m", "cnnforge.cli", "calibrate-logic", "--family",
                          "gowin"], capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip() == ("cnnforge calibrate-logic: error: --family must be ecp5 or "
                                  "ice40, not 'gowin'")
