# amaranth: UnusedElaboratable=no
"""Board tops and the bitstream flow.

Every board elaborates (``do_build=False``) with the board side alone (a fake accelerator) and
with the real accelerator. ``-m bitstream`` selects the real builds (one iCE40, one ECP5; YoWASP
tools), which check the report's timing line.
"""

import json
import os
from pathlib import Path

import pytest

from cnnforge.boards.build import (TimingError, check_bitstream, clock_verdict, build,
                                   ice40_dsps, link_images_per_second, parse_parallelism,
                                   tool_env)
from cnnforge.boards.board import BOARDS, get_board
from cnnforge.boards.family import GW2A, ecp5_pll_params, ecp5_secondary_div, ice40_pll_params
from cnnforge.boards.top import BoardTop
from cnnforge.errors import CnnforgeError, ToolError
from cnnforge.hw.params import NetworkConfig
from cnnforge.sim.reference import model_file
from cnnforge.sim.verify.fake_accel import FakeAccel
from helpers import (BOARD_CONFIG, HAVE_MNIST, check_board_scenario, check_upload,
                     check_classification, mnist_images, other_model)


def _plan(name, **kwargs):
    spec = get_board(name)
    model = model_file.load()
    if spec.model and not kwargs:
        # A board whose build takes its own model: the layer-list accelerator of its preset.
        from cnnforge.hw.network import network_accelerator, preset_parallelism
        model = model_file.load_network(model_file.DEFAULT_PATH.with_name(spec.model))
        par = preset_parallelism(model.network, spec.preset)
        kwargs = {"parallelism": par, "accel": network_accelerator(model, par)}
    top = BoardTop(spec, model, **kwargs)
    opts = {"synth_opts": "-dsp"} if spec.family.name == "ice40" else {}
    return top, spec.platform().build(top, name="top", do_build=False, **opts)


@pytest.mark.parametrize("name", list(BOARDS))
def test_board_side_elaborates(name):
    top, plan = _plan(name, accel=FakeAccel(BOARD_CONFIG))
    files = plan.files
    assert "top.il" in files
    rtlil = files["top.il"]
    rtlil = rtlil.decode() if isinstance(rtlil, bytes) else rtlil
    pll = {"ice40": "SB_PLL40_PAD", "ecp5": "EHXPLLL", "gw1n": "rPLL", "gw2a": "rPLL"}
    assert pll[get_board(name).family.name] in rtlil
    assert abs(top.clk_freq - get_board(name).clk_freq) < 0.01 * get_board(name).clk_freq


@pytest.mark.parametrize("name", list(BOARDS))
def test_board_with_accelerator_elaborates(name):
    _plan(name)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_training_build_takes_the_boards_training_preset_and_clock():
    from cnnforge.hw.accel import PRESETS
    from cnnforge.hw.train import TrainingAccelerator
    spec = get_board("ulx3s")
    top, plan = _plan("ulx3s", train_init="random")
    assert top.parallelism.to_dict() == PRESETS[spec.train_preset].to_dict()
    assert isinstance(top._accel, TrainingAccelerator)
    assert abs(top.clk_freq - spec.train_clk_freq) < 0.01 * spec.train_clk_freq
    for name, device in [("icebreaker", "iCE40UP5K"), ("orangecrab", "LFE5U-25F")]:
        with pytest.raises(CnnforgeError, match=f"{name}: on-chip training does not fit the "
                                                f"{device}: .*; build it for ulx3s$"):
            BoardTop(get_board(name), model_file.load(), train_init="random")


def test_unknown_board_lists_the_boards():
    with pytest.raises(CnnforgeError, match="unknown board 'de0'; boards: icebreaker, "
                                            "orangecrab, tangnano9k, tangprimer20k, ulx3s"):
        get_board("de0")


@pytest.mark.parametrize("name", list(BOARDS))
def test_board_file_describes_its_device(name):
    """Each board's file (cnnforge.boards.catalog.<name>) names the device its platform builds
    for, a programmer, seeds, and either a training preset or why not."""
    spec = get_board(name)
    platform = spec.platform()
    assert spec.device.name == getattr(platform, "device", None) or platform.part
    assert platform.default_clk_frequency == spec.default_clk_frequency()
    low, high = spec.device.bitstream_bytes
    assert 0 < low < high < 4_000_000 or spec.device.idcode and spec.device.config_frames
    assert spec.nextpnr_seeds and "{bitstream}" in spec.programmer.command
    assert (spec.train_preset is None) != (spec.no_training is None)


def test_a_board_is_one_file(tmp_path, monkeypatch):
    """A module dropped into the catalog's folder is a board: nothing else names it."""
    import cnnforge.boards.catalog as catalog
    from cnnforge.boards import board as board_mod
    (tmp_path / "my_icebreaker.py").write_text(
        "import dataclasses\n"
        "from cnnforge.boards.catalog.icebreaker import BOARD as _base\n"
        "BOARD = dataclasses.replace(_base, name='my-icebreaker', clk_freq=24e6)\n")
    monkeypatch.setattr(catalog, "__path__", [*catalog.__path__, str(tmp_path)])
    boards = board_mod._catalog()
    assert list(boards) == ["icebreaker", "my-icebreaker", "orangecrab", "tangnano9k",
                            "tangprimer20k", "ulx3s"]
    monkeypatch.setattr(board_mod, "BOARDS", boards)
    top = BoardTop(get_board("my-icebreaker"), model_file.load(), accel=FakeAccel(BOARD_CONFIG))
    assert top.clk_freq == 24e6


def test_missing_tool_is_one_line(monkeypatch):
    monkeypatch.setenv("YOSYS", "sh")                   # found: the check moves on
    monkeypatch.setenv("NEXTPNR_ECP5", "no-such-nextpnr")
    with pytest.raises(ToolError, match=r"^no-such-nextpnr not found \(\$NEXTPNR_ECP5 is set"):
        tool_env("ecp5")
    monkeypatch.delenv("NEXTPNR_ECP5")
    monkeypatch.delenv("YOSYS")
    monkeypatch.setenv("CNNFORGE_TOOLS", "system")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolError, match="yosys not found .install it or unset CNNFORGE_TOOLS"):
        tool_env("ice40")


def test_pll_settings():
    divr, divf, divq, filt, f = ice40_pll_params(12e6, 30e6)
    assert f == 30e6 and 533e6 <= 12e6 * (divf + 1) / (divr + 1) <= 1066e6
    clki, clkfb, clkop, f = ecp5_pll_params(25e6, 100e6)
    assert f == 100e6 and 400e6 <= f * clkop <= 800e6
    assert ecp5_pll_params(48e6, 72e6)[-1] == 72e6
    assert ecp5_secondary_div(f * clkop, 30e6) == (20, 30e6)
    # The Tang boards' 27 MHz: 48 MHz = 27 x 16 / 9, the VCO within the GW2A's 500-1250 MHz.
    idiv, fbdiv, odiv, f = GW2A.pll(27e6, 48e6)
    assert f == 48e6 and (fbdiv + 1) / (idiv + 1) == 16 / 9 and 500e6 < f * odiv < 1250e6
    assert 27e6 / (idiv + 1) >= 3e6
    with pytest.raises(CnnforgeError, match="no Gowin rPLL setting for 1 MHz input"):
        GW2A.pll(1e6, 48e6)


def test_gowin_bitstream_check():
    """A gowin_pack .fs file (lines of 0/1: preamble, sync word, IDCODE, one line per frame,
    the last command): complete, truncated, for another device, not one at all."""
    device = get_board("tangprimer20k").device

    def fs(idcode=device.idcode, frames=2110, declared=2110, last=0x08000000):
        lines = ["1" * 160, "1" * 16, f"{0xA5C3:016b}", f"{(0x06 << 56) | idcode:064b}",
                 f"{(0x3B80 << 16) | declared:032b}", *(["01" * 1720] * frames),
                 f"{last:032b}", "1" * 64, "1" * 16]
        return ("\n".join(lines) + "\n").encode()

    # The 20K's seed build: 1,342 configuration frames and 768 of block RAM contents.
    assert GW2A.bitstream_problem(fs(), device) is None
    assert GW2A.bitstream_problem(fs(frames=2000), device) == \
        "it has 2000 frames of the 2110 it declares (truncated?)"
    assert "at least its 1342 configuration frames" in \
        GW2A.bitstream_problem(fs(frames=900, declared=900), device)
    assert GW2A.bitstream_problem(fs(idcode=0x1100481B), device) == \
        "it is for IDCODE 1100481B, not the GW2A-LV18PG256C8/I7 (0000081B)"
    assert "truncated" in GW2A.bitstream_problem(fs(last=0x12345678), device)
    assert "lines of 0 and 1" in GW2A.bitstream_problem(b"\xff\x00\xbd\xb3", device)
    assert "empty" in GW2A.bitstream_problem(b"", device)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_ulx3s_link_runs_on_its_own_clock():
    """ULX3S inference: the link at 30 MHz (PLL CLKOS, 3 Mbaud = 30 MHz / 10) beside the
    100 MHz accelerator; its training build keeps one clock."""
    from cnnforge.boards.crossing import ClockCrossing
    top, plan = _plan("ulx3s")
    assert top.link_clk_freq == 30e6 and top.clk_freq == 100e6
    rtlil = plan.files["top.il"]
    rtlil = rtlil.decode() if isinstance(rtlil, bytes) else rtlil
    assert "CLKOS_DIV 20" in rtlil and "fast_clk" in rtlil
    assert BoardTop(get_board("ulx3s"), model_file.load(), train_init="random").link_clk_freq \
        is None
    assert BoardTop(get_board("orangecrab"), model_file.load()).link_clk_freq is None
    with pytest.raises(TypeError, match="inference only"):
        from cnnforge.boards.top import training_accelerator
        from cnnforge.hw.accel import PRESETS
        ClockCrossing(training_accelerator("random", PRESETS["ecp5-25f"]), BOARD_CONFIG)


def test_clock_verdict():
    """Every clock meets its own constraint; the reported Fmax is the accelerator clock's."""
    accel, link = ({"achieved_mhz": 101.5, "constraint_mhz": 100.0},
                   {"achieved_mhz": 60.0, "constraint_mhz": 30.0})
    assert clock_verdict({"fast": accel, "sync": link}, 100.0) == (101.5, True)
    assert clock_verdict({"fast": {**accel, "achieved_mhz": 99.0}, "sync": link},
                          100.0) == (99.0, False)
    assert clock_verdict({"fast": accel, "sync": {**link, "achieved_mhz": 29.0}},
                          100.0) == (101.5, False)
    assert clock_verdict({}, 100.0) == (0.0, False)


def test_link_bound_rate():
    # Streamed: 6 + 2 + 784 bytes per raw image up the line (8 down: class only), 10 bits
    # each, at 3 Mbaud; 200 bytes per coded image.
    assert round(link_images_per_second(NetworkConfig(), 3_000_000)) == 379
    assert round(link_images_per_second(NetworkConfig(), 3_000_000, 200)) == 1500
    assert round(link_images_per_second(NetworkConfig(), 3_000_000, 4)) == 37500


def test_parallelism_override_and_estimates():
    par = parse_parallelism("conv_lanes=4, requant_parallel=1,dense_mults=4", "icebreaker")
    assert par.to_dict() == {"conv_lanes": 4, "conv_window": False, "requant_parallel": 1,
                             "dense_mults": 4, "target": "ice40", "dense_buffer": False,
                             "pipeline": "standard", "grad_lanes": 4}
    # The engines' figures: 676 positions x 9 taps x 8 filter groups + the bank switch;
    # requant 21,632; dense 13,520 + 2 idle cycles per pooled beat.
    from cnnforge.hw.accel import PRESETS, Accelerator
    model = model_file.load()
    assert Accelerator(model, par).stage_cycles == {"conv": 48_675, "requant": 21_632,
                                                    "dense": 16_224}
    assert Accelerator(model, par).cycles_per_image == 48_675
    assert ice40_dsps(par) == {"conv": 2, "requant": 2, "dense": 2, "total": 6}
    # That is the up5k preset; 8 conv lanes: 676 x 9 x 4 + 3, all eight SB_MAC16.
    assert par.to_dict() == PRESETS["up5k"].to_dict()
    c8 = parse_parallelism("conv_lanes=8", "icebreaker")
    assert Accelerator(model, c8).cycles_per_image == 24_339
    assert ice40_dsps(c8) == {"conv": 4, "requant": 2, "dense": 2, "total": 8}
    with pytest.raises(CnnforgeError, match="--parallelism: 'lanes=2' is not one of conv_lanes"):
        parse_parallelism("lanes=2", "icebreaker")
    with pytest.raises(CnnforgeError, match="--parallelism: conv_lanes must be an integer"):
        parse_parallelism("conv_lanes=x", "icebreaker")
    with pytest.raises(CnnforgeError, match="unknown board 'de0'"):
        parse_parallelism("", "de0")


def test_nextpnr_seeds(monkeypatch):
    from cnnforge.boards.build import nextpnr_seeds
    monkeypatch.delenv("CNNFORGE_NEXTPNR_SEEDS", raising=False)
    assert nextpnr_seeds(get_board("icebreaker")) == (None, 1, 2, 3)
    assert nextpnr_seeds(get_board("ulx3s")) == (1, None)
    assert nextpnr_seeds(get_board("orangecrab")) == (None,)
    monkeypatch.setenv("CNNFORGE_NEXTPNR_SEEDS", "default, 7")
    assert nextpnr_seeds(get_board("orangecrab")) == (None, 7)
    monkeypatch.setenv("CNNFORGE_NEXTPNR_SEEDS", "2,x")
    with pytest.raises(CnnforgeError, match="CNNFORGE_NEXTPNR_SEEDS: 'x' is not an integer"):
        nextpnr_seeds(get_board("icebreaker"))


def test_ice40_dsp_guard(tmp_path):
    """The post-synthesis check that explicit dual 8x8 SB_MAC16 kept their parameters (Yosys's
    ice40_dsp, run by `synth_ice40 -dsp`, resets them)."""
    from cnnforge.boards.build import check_ice40_dsps
    from cnnforge.errors import ToolError

    def netlist(*cells):
        (tmp_path / "top.json").write_text(json.dumps({"modules": {"top": {"cells": {
            f"c{n}": {"type": "SB_MAC16", "parameters": p} for n, p in enumerate(cells)}}}}))

    dual = {"MODE_8x8": "1", "A_REG": "1", "TOP_8x8_MULT_REG": "1"}
    wide = {"MODE_8x8": "0", "A_REG": "1", "TOP_8x8_MULT_REG": "0"}
    netlist(dual, dual, wide)
    check_ice40_dsps(tmp_path, 2)
    with pytest.raises(ToolError, match="1 dual 8x8 SB_MAC16 in the netlist, expected 2"):
        netlist(dual, wide, wide)
        check_ice40_dsps(tmp_path, 2)
    with pytest.raises(ToolError, match="lost its registers"):
        netlist(dual, {**dual, "A_REG": "0"})
        check_ice40_dsps(tmp_path, 2)


#: One build per FPGA family runs in `make test` (CI): the iCEBreaker, the OrangeCrab (the
#: quick ECP5 one, about 5 minutes on 2 cores) and the Tang Primer 20K (Gowin GW2A). The ULX3S
#: build (20-30 minutes) is `slow`: `make test-bitstreams` runs them all.
@pytest.mark.bitstream
@pytest.mark.parametrize("name", [
    "icebreaker",
    pytest.param("ulx3s", marks=pytest.mark.slow(
        reason="20-30 minutes: one build per FPGA family, the iCEBreaker, the OrangeCrab and "
               "the Tang Primer 20K")),
    "orangecrab",
    "tangprimer20k",
    pytest.param("tangnano9k", marks=pytest.mark.slow(
        reason="the Tang Primer 20K builds the Gowin family in make test; this one (mnist-small, "
               "folded) takes about 2.5 minutes more")),
])
def test_bitstream(name, tmp_path):
    spec = get_board(name)
    try:
        tool_env(spec.family)
    except ToolError as e:
        pytest.skip(str(e))
    out = Path(os.environ.get("CNNFORGE_BITSTREAM_DIR", tmp_path))
    try:
        report = build(name, out)
    except TimingError as e:
        pytest.fail(str(e))
    bitstream = out / name / spec.family.bitstream_file
    assert bitstream.stat().st_size > 0
    # What `cnnforge program` checks (the packer's header, size and last command, the report):
    # a real build passes it; the build ran in a fresh folder, renamed in.
    assert check_bitstream(name, out) == bitstream
    assert not list(out.glob(f"{name}.*"))
    saved = json.loads((out / name / "report.json").read_text())
    assert saved["timing_met"] and saved["fmax_mhz"] >= saved["target_mhz"]
    # `cnnforge check`'s estimates, from the elaborated design: the block RAM the ECP5 build
    # used, and the logic within its error.
    from cnnforge.boards.top import board_core
    from cnnforge.boards.check import LOGIC_ERROR, block_ram_blocks, design_memories
    from cnnforge.boards.logic import COSTS, estimate_logic
    from cnnforge.hw.accel import PRESETS
    from cnnforge.sim.reference import model_file
    if spec.model:              # the board's own model, on the layer-list accelerator
        from cnnforge.boards.check import network_board_core
        from cnnforge.hw.network import preset_parallelism
        qnet = model_file.load_network(model_file.DEFAULT_PATH.with_name(spec.model))
        core = network_board_core(qnet, spec, preset_parallelism(qnet.network, spec.preset))
    else:
        core = board_core(model_file.load(), PRESETS[spec.preset],
                          clk_freq=spec.link_clk_freq or spec.clk_freq, baud=spec.baud,
                          accel_domain="fast" if spec.link_clk_freq else None)
    used = {r["cell"]: r["used"] for r in saved["resources"]}
    family = spec.family
    if family.lut_ram:          # ECP5, Gowin (the iCE40's SPRAM and EBR: tests/test_check.py)
        blocks = sum(block_ram_blocks(m, family.name) for m in design_memories(core))
        assert blocks == used[family.block_ram_name]
    if family.name in COSTS:    # a family the logic estimate is calibrated for
        placed = used[family.logic_cell]
        logic = estimate_logic(core, family.name)["logic"]
        assert abs(logic - placed) <= LOGIC_ERROR * placed, (logic, placed)
    assert "timing met" in (out / name / "report.md").read_text()
    if family.block_cells:      # logic by block: the hard blocks are the build's
        rows = saved["blocks"]["rows"]
        by_block = {label: sum(r["cells"][label] for r in rows) for label, _ in family.block_cells}
        assert by_block["SB_MAC16"] == used["ICESTORM_DSP"]
        assert by_block["SPRAM"] == used["ICESTORM_SPRAM"]
        assert abs(by_block["EBR"] - used["ICESTORM_RAM"]) <= 1
        assert {"core", "core.accel.conv"} <= {r["block"].removeprefix("top.") for r in rows}
        assert "## Logic by block" in (out / name / "report.md").read_text()
    print(json.dumps(report, indent=1))
    # (the ECP5 netlists simulate slowly: test_gatesim_ecp5)
    if family.name in GATESIM_IN_MAKE_TEST and HAVE_MNIST:
        check_gatesim(name, out / name, tmp_path)


#: The families whose board builds in `make test` also run at gate level there (about 2 min on
#: the iCEBreaker, 6.5 on the Tang Primer 20K).
GATESIM_IN_MAKE_TEST = ("ice40", "gw1n", "gw2a")


@pytest.mark.bitstream
@pytest.mark.slow(reason="the OrangeCrab's netlist at gate level: its build (3 min) and about "
                         "16 minutes to compile and simulate")
@pytest.mark.skipif(not HAVE_MNIST, reason="needs MNIST_DIR")
def test_gatesim_ecp5(tmp_path):
    """`make gatesim BOARD=orangecrab` in a fresh build: the ECP5 cell models (Yosys's and
    sim/verify/ecp5_cells.v's DP16KD, MULT18X18D, EHXPLLL) through the board's pins."""
    try:
        tool_env(get_board("orangecrab").family)
    except ToolError as e:
        pytest.skip(str(e))
    build("orangecrab", tmp_path)
    check_gatesim("orangecrab", tmp_path / "orangecrab", tmp_path)


def check_gatesim(name, build_dir, tmp_path):
    """The build's netlist at gate level through its pins (`make gatesim`): a model upload (the
    whole model where the board starts without one, the iCE40's SPRAM being empty; else the
    small memories of another model, so that the results show the writes landed; none for a
    board's own layer-list model, built in), 20 MNIST images bit-exact with the golden model,
    every fault case of the board scenario (tests/test_board_top.py)."""
    from cnnforge.boards.protocol import Command, Error
    from cnnforge.sim.verify.gatesim import gatesim, gatesim_upload
    spec = get_board(name)
    model = model_file.load()
    upload = gatesim_upload(spec)
    if spec.model:              # its own layer-list model, built in: no upload
        model = model_file.load_network(model_file.DEFAULT_PATH.with_name(spec.model))
    elif upload["memories"] is not None:
        model = other_model(model, tmp_path / "other.npz")
        upload = gatesim_upload(spec, tmp_path / "other.npz")
    images, _ = mnist_images("test", 22)
    out = gatesim(name, build_dir, images=images[:20], fault_images=images[20:],
                  upload=upload, name=f"gatesim_test_{name}")
    if upload is None:
        assert out["result"]["info_at_start"]["model_loaded"]
    elif upload["memories"] is None:
        assert out["result"]["upload"]["no_model"]["nak"] == [Error.NO_MODEL.value,
                                                             Command.CLASSIFY.value]
        assert not out["result"]["info_at_start"]["model_loaded"]
        assert out["result"]["upload"]["loaded_after"]
    else:
        assert out["result"]["info_at_start"]["model_loaded"]
        check_upload(out)
    check_board_scenario(out, images[:20], images[20:],
                         lambda got, image, where: check_classification(got, model, image,
                                                                        f"gatesim {where}"))
    print(f"gate-level {name}: {out['sim_time_ns'] / 1e6:.1f} ms simulated")


@pytest.mark.bitstream
def test_layer_list_bitstream_on_the_icebreaker(tmp_path):
    """`make bitstream BOARD=icebreaker MODEL=lenet.npz`: the folded mapping fits the UP5K and
    meets 30 MHz (about 2 minutes); `cnnforge check`'s block RAM, DSPs and SPRAM are what the
    build used, its logic within its error."""
    from cnnforge.boards.check import LOGIC_ERROR, check
    spec = get_board("icebreaker")
    try:
        tool_env(spec.family)
    except ToolError as e:
        pytest.skip(str(e))
    lenet = model_file.load_network(model_file.DEFAULT_PATH.with_name("lenet.npz"))
    try:
        report = build("icebreaker", tmp_path, model=lenet, name="lenet")
    except TimingError as e:
        pytest.fail(str(e))
    assert report["timing_met"] and report["fmax_mhz"] >= 30.0
    assert (tmp_path / "icebreaker-lenet" / "top.bin").stat().st_size > 0
    used = {r["cell"]: r["used"] for r in report["resources"]}
    t = check(lenet, "icebreaker")["totals"]
    assert (t["block_ram"], t["dsps"], t["spram"]) == (
        used["ICESTORM_RAM"], used["ICESTORM_DSP"], used["ICESTORM_SPRAM"])
    assert used["ICESTORM_LC"] <= 5280
    assert abs(t["logic"] - used["ICESTORM_LC"]) <= LOGIC_ERROR * used["ICESTORM_LC"], \
        (t["logic"], used["ICESTORM_LC"])


@pytest.mark.slow(reason="a second OrangeCrab build (about 4 minutes): the CI builds the UART one")
def test_usb_bitstream_on_the_orangecrab(tmp_path):
    """`make bitstream BOARD=orangecrab LINK=usb`: the CDC-ACM device (LUNA, its full-speed PHY
    in gateware) beside the accelerator; every clock meets its own constraint (the design's 72
    MHz, the device's 12 MHz and the PHY's 48 MHz, all from the PLL)."""
    spec = get_board("orangecrab")
    try:
        tool_env(spec.family)
    except ToolError as e:
        pytest.skip(str(e))
    try:
        report = build("orangecrab", tmp_path, link="usb")
    except TimingError as e:
        pytest.fail(str(e))
    assert report["link"] == "usb" and report["timing_met"]
    assert (tmp_path / "orangecrab-usb" / "top.bit").stat().st_size > 0
    constraints = sorted(round(f["constraint_mhz"]) for f in report["fmax"].values())
    assert constraints == [12, 48, 72], report["fmax"]
    assert all(f["achieved_mhz"] >= f["constraint_mhz"] for f in report["fmax"].values())
