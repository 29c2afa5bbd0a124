"""The cell models of the gate-level simulation checked on their own: a small design whose
memories and products take the shapes synthesis maps to the family's block RAMs and multipliers,
simulated as RTL and as the synthesized netlist with the cell models, side by side, on the
same pseudo-random stimuli; the Verilog wrapper counts the cycles their outputs differ.

:class:`CellProbe` draws its stimuli from an xorshift generator inside the design, so the
testbench only starts the clock and reads the counters at the end (no Python per cycle).
Memories: 2048 x 9, 1024 x 18 with 9-bit write lanes, 512 x 36 with 9-bit lanes (the block
RAM's port widths), and single-port 2048 x 9 and 512 x 36 (the read port on the write port's
address, transparent for it), each with random initial contents (cnnforge's designs use no
true dual-port memory: two write ports whose read ports see only their own writes would
need a collision rule the block RAM does not document); products: signed, unsigned and mixed 8/9-bit
and 16/18-bit operands.
"""

import random
import subprocess
from pathlib import Path

from amaranth import Cat, Module, Signal, signed, unsigned
from amaranth.back import rtlil, verilog
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from ...errors import ToolError

__all__ = ["CellProbe", "MEMORIES", "PRODUCTS", "probe_netlist", "run_probe"]

#: ``(depth, width, granularity, ports, shared)``: the memories of :class:`CellProbe`, each
#: port a write port and a read port, on one address where ``shared``.
MEMORIES = ((2048, 9, None, 1, False), (1024, 18, 9, 1, False), (512, 36, 9, 1, False),
            (2048, 9, None, 1, True), (512, 36, 9, 1, True))

#: ``(a shape, b shape)``: the products of :class:`CellProbe`.
PRODUCTS = ((signed(8), signed(8)), (unsigned(9), unsigned(9)), (signed(8), unsigned(8)),
            (signed(9), signed(9)), (signed(18), signed(18)), (unsigned(17), signed(18)),
            (signed(16), unsigned(16)))


def _out_width():
    mem = sum(width * ports for _, width, _, ports, _ in MEMORIES)
    return mem + sum(a.width + b.width for a, b in PRODUCTS)


class CellProbe(wiring.Component):
    """Memories and products driven by an internal xorshift generator; ``out`` is every read
    port and registered product, concatenated."""

    def __init__(self, seed=1):
        self._seed = seed
        super().__init__({"out": Out(_out_width())})

    def elaborate(self, platform):
        m = Module()
        rng = random.Random(self._seed)
        state = Signal(64, init=rng.getrandbits(64) | 1)
        # xorshift64: a new 64-bit draw every cycle
        x1 = state ^ (state << 13)[:64]
        x2 = x1 ^ (x1 >> 7)
        x3 = x2 ^ (x2 << 17)[:64]
        m.d.sync += state.eq(x3)
        # more bits per cycle than one draw: the draw, reversed and rotated
        bits = Cat(state, state[::-1], state.rotate_left(23), state.rotate_left(41))
        cursor = 0

        def take(width):
            nonlocal cursor
            value = bits[cursor % 256:][:width]
            if value.shape().width < width:
                value = Cat(value, bits[:width - value.shape().width])
            cursor += width * 7 + 3
            return value

        outs = []
        for n, (depth, width, granularity, ports, shared) in enumerate(MEMORIES):
            init = [rng.getrandbits(width) for _ in range(depth)]
            mem = Memory(shape=unsigned(width), depth=depth, init=init)
            m.submodules[f"mem{n}"] = mem
            abits = (depth - 1).bit_length()
            writes = [mem.write_port(granularity=granularity) for _ in range(ports)]
            reads = [mem.read_port(transparent_for=(w,) if shared else ()) for w in writes]
            addr = take(abits)
            for k, (w, r) in enumerate(zip(writes, reads)):
                # A shared port reads where it writes, seeing what it writes (one block RAM
                # port each: WRITE_MODE 1); the second port never writes the first one's
                # address (a collision is undefined on the device).
                m.d.comb += [w.addr.eq(addr ^ k), w.data.eq(take(width)),
                             w.en.eq(take(len(w.en)) & take(len(w.en))),
                             r.addr.eq(addr ^ k if shared else take(abits)),
                             # (a read port shares a block RAM port only if it reads
                             # whenever it writes)
                             r.en.eq((take(3) != 0) | (w.en.any() if shared else 0))]
                outs.append(r.data)
        for a_shape, b_shape in PRODUCTS:
            a, b = Signal(a_shape), Signal(b_shape)
            m.d.comb += [a.eq(take(a_shape.width)), b.eq(take(b_shape.width))]
            product = Signal(a_shape.width + b_shape.width)
            m.d.sync += product.eq(a * b)
            outs.append(product)
        m.d.comb += self.out.eq(Cat(*outs))
        return m


CHECK_WRAPPER = """
// RTL and netlist side by side on the same stimuli (each draws its own, identically).
module probe_check(input clk /*verilator public_flat_rw*/,
                   input corrupt /*verilator public_flat_rw*/,
                   output reg [31:0] cycles /*verilator public_flat_rw*/,
                   output reg [31:0] mismatches /*verilator public_flat_rw*/,
                   output reg [31:0] first_mismatch /*verilator public_flat_rw*/);
    wire [{msb}:0] rtl_out, gate_out;
    probe_rtl rtl(.clk(clk), .rst(1'b0), .out(rtl_out));
    probe_gate gate(.clk(clk), .rst(1'b0), .out(gate_out));
    initial begin cycles = 0; mismatches = 0; first_mismatch = 32'hffffffff; end
    always @(posedge clk) begin
        cycles <= cycles + 1;
        // (corrupt: the negative control, one output bit flipped)
        if (rtl_out != (gate_out ^ {{{msb}'d0, corrupt}})) begin
            mismatches <= mismatches + 1;
            if (first_mismatch == 32'hffffffff) first_mismatch <= cycles;
        end
    end
endmodule
"""


def probe_netlist(folder, family):
    """Write the probe's RTL (``probe_rtl``) and its netlist for ``family`` (``synth_ecp5`` or
    ``synth_gowin``; ``probe_gate``)
    into ``folder``; ``(rtl path, netlist path, the netlist's top module as Yosys JSON)``."""
    import json

    from ...boards.build import tool_env
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rtl = folder / "probe_rtl.v"
    rtl.write_text(verilog.convert(CellProbe(), name="probe_rtl", emit_src=False))
    # Synthesis reads RTLIL, as the board builds do: the memories stay memory cells (the
    # Verilog's per-lane write processes would not map to block RAM).
    (folder / "probe_rtl.il").write_text(rtlil.convert(CellProbe(), name="probe_rtl",
                                                       emit_src=False))
    synth = "synth_ecp5" if family == "ecp5" else f"synth_gowin -family {family}"
    script = ("read_rtlil probe_rtl.il; "
              f"{synth} -top probe_rtl; "
              "rename probe_rtl probe_gate; write_json probe_gate.json; "
              "write_verilog -noattr probe_gate.v")
    try:
        subprocess.run([tool_env(family)["YOSYS"], "-q", "-p", script], check=True,
                       capture_output=True, text=True, cwd=folder)
    except subprocess.CalledProcessError as e:
        raise ToolError(f"yosys could not synthesize the cell probe: "
                        f"{(e.stderr or e.stdout).strip().splitlines()[-1:]}") from None
    top = json.loads((folder / "probe_gate.json").read_text())["modules"]["probe_gate"]
    return rtl, folder / "probe_gate.v", top


def run_probe(name, family, cycles, corrupt=False):
    """Simulate the probe's RTL and netlist side by side for ``cycles`` cycles; the counters
    ``{"cycles", "mismatches", "first_mismatch"}`` and the netlist's top module (Yosys JSON).
    ``corrupt``: flip an output bit of the netlist (the comparison's negative control)."""
    import json

    from .gatesim import family_models
    from .rtl_runner import BUILD, run_cocotb
    folder = BUILD / name
    rtl, gate, top = probe_netlist(folder, family)
    models = family_models(family, top, gate, folder / "cells.v")
    wrapper = folder / "probe_check.v"
    wrapper.write_text(CHECK_WRAPPER.format(msb=_out_width() - 1))
    result = folder / "probe_result.json"
    result.unlink(missing_ok=True)
    run_cocotb(name, [rtl, gate, models, wrapper], "probe_check",
               "cnnforge.sim.verify.tb_cell_probe",
               {"CNNFORGE_PROBE_CYCLES": cycles, "CNNFORGE_PROBE_CORRUPT": int(corrupt),
                "CNNFORGE_PROBE_OUT": result},
               verilator_args=["--no-public-flat-rw"])
    return json.loads(result.read_text()), top

