"""Logic (LUTs, flip-flops) of a design, estimated from its Amaranth netlist before synthesis.

The design is elaborated and lowered to Amaranth's own netlist (operators with their operand
widths, flip-flops, multiplexers of the processes, memories; about a second for a board core),
and each module's cells are counted into a few features — adder bits, comparator bits,
multiplexer bits, product bits, flip-flops... (:func:`module_features`). The logic is a linear
function of them with one set of costs per FPGA family (:data:`COSTS`), times one factor for
what synthesis across module boundaries and packing change (:data:`FLATTEN`).

Where the numbers come from: ``cnnforge calibrate-logic`` synthesizes a set of designs with
Yosys module by module (``synth_<family> -noflatten``), fits the costs to the cells of each
module by least squares (no negative cost), and the factor to the whole designs as nextpnr
places them (the build reports); it prints every report's error (README, "check"; held in
``tests/test_check.py``). The count is of what the build reports: ECP5 ``TRELLIS_COMB``
(LUT4s, carry halves, LUT RAM's logic), iCE40 logic cells (a LUT4, its flip-flop and its carry
packed together).
"""

import collections
import math

from amaranth import Shape


__all__ = ["FEATURES", "COSTS", "FLATTEN", "module_features", "design_features",
           "estimate_logic"]


#: What is counted per module (see :func:`module_features`).
FEATURES = ("ff", "add", "cmp", "eq", "eq_const", "mux", "assign", "part", "logic", "shift",
            "mul", "match", "lut_ram")

#: Logic per unit of each feature, per family (``cnnforge calibrate-logic``).
COSTS = {
    # 188 modules of the ULX3S and OrangeCrab board cores of mnist-seed, lenet, rgb-shapes.
    "ecp5": {"add": 0.434, "cmp": 0.713, "mux": 0.1469, "assign": 0.2265, "part": 1.6763,
             "logic": 0.3422, "mul": 2.0507, "match": 0.2958, "lut_ram": 0.1459},
    # 35 modules of the iCEBreaker board cores of mnist-seed, lenet, rgb-shapes.
    "ice40": {"ff": 0.3326, "add": 0.8428, "eq_const": 0.3698, "mux": 0.9396, "logic": 0.4175,
              "shift": 0.4118, "mul": 2.2469},
}

#: What the builds placed / the sum of the modules synthesized one by one, per family (the
#: geometric mean over the builds of ``cnnforge calibrate-logic --report``; ECP5: the OrangeCrab
#: and ULX3S builds of mnist-seed and lenet, each within 6 % of its report; iCE40: the
#: iCEBreaker builds of mnist-seed and lenet, within 6 %).
FLATTEN = {"ecp5": 0.8138, "ice40": 1.1614}


def _netlist(design):
    from amaranth.hdl._ir import Fragment, build_netlist
    fragment = design if isinstance(design, Fragment) else Fragment.get(design, None)
    return build_netlist(fragment, ports=(), name="top")


def module_features(netlist, family="ecp5"):
    """``{module name: Counter(feature: count)}`` of an Amaranth netlist (module names as
    Yosys sees them: ``top.core.accel...``). Only the operands' non-constant bits count."""
    # Amaranth 0.5's internal netlist (no public API gives operand widths per module; the
    # project pins amaranth 0.5.x).
    from amaranth.hdl._nir import (AssignmentList, AsyncReadPort, FlipFlop, Matches, Memory as
                                   MemoryCell, Net, Operator, Part, SyncReadPort, SyncWritePort,
                                   Top)
    from .check import Memory, block_ram_blocks, wants_block_ram
    const = {Net.from_const(0), Net.from_const(1)}

    def bits(value):
        return sum(1 for net in value if net not in const)

    readers = collections.defaultdict(list)
    writable = set()
    for cell in netlist.cells:
        if isinstance(cell, (SyncReadPort, AsyncReadPort)):
            readers[cell.memory].append(cell)
        elif isinstance(cell, SyncWritePort):
            writable.add(cell.memory)

    out = collections.defaultdict(collections.Counter)
    # A multiplexer used several times is lowered once per use (amaranth.lib.crc's
    # `Mux(start, initial, crc)` for every bit it feeds: 40 copies); synthesis merges the copies.
    # (Only multiplexers: the costs were fitted with the other operators counted per use.)
    operators = set()
    for index, cell in enumerate(netlist.cells):
        if isinstance(cell, Top):
            continue
        f = out[".".join(netlist.modules[cell.module_idx].name)]
        if isinstance(cell, FlipFlop):
            f["ff"] += bits(cell.data) or len(cell.data)
        elif isinstance(cell, Operator):
            op, ins = cell.operator, cell.inputs
            key = (cell.module_idx, op, tuple(tuple(value) for value in ins))
            if op == "m" and key in operators:
                continue
            operators.add(key)
            if op in ("+", "-") and len(ins) == 2:
                f["add"] += max(bits(ins[0]), bits(ins[1]))
            elif op == "-":
                f["add"] += bits(ins[0])
            elif op == "*":
                f["mul"] += bits(ins[0]) * bits(ins[1])
            elif op in ("==", "!="):
                f["eq" if bits(ins[0]) and bits(ins[1]) else "eq_const"] += max(
                    bits(ins[0]), bits(ins[1]))
            elif op[1:] in ("<", ">", "<=", ">="):
                f["cmp"] += max(bits(ins[0]), bits(ins[1]))
            elif op == "m":
                f["mux"] += cell.width
            elif op in ("&", "|", "^"):
                f["logic"] += cell.width
            elif op in ("r|", "r&", "r^", "b"):
                f["logic"] += bits(ins[0])
            elif op in ("<<", "u>>", "s>>"):
                f["shift"] += cell.width * len(ins[1])
            elif op in ("u//", "u%", "s//", "s%"):
                f["mul"] += bits(ins[0]) * bits(ins[1])
        elif isinstance(cell, AssignmentList):
            f["assign"] += sum(len(a.value) for a in cell.assignments)
        elif isinstance(cell, Part):
            choices = max(1, (len(cell.value) - cell.width) // max(1, cell.stride) + 1)
            f["part"] += cell.width * choices
        elif isinstance(cell, Matches):
            f["match"] += len(cell.value) * max(1, len(cell.patterns))
        elif isinstance(cell, MemoryCell):
            ports = readers[index]
            memory = Memory("", cell.depth, Shape.cast(cell.width).width if not isinstance(
                cell.width, int) else cell.width,
                bool(ports) and all(isinstance(p, SyncReadPort) for p in ports),
                index in writable, wants_block_ram(cell.attributes))
            if not block_ram_blocks(memory, family):
                f["lut_ram"] += memory.bits * max(1, len(ports))
    return out


def design_features(design, family="ecp5"):
    """:func:`module_features` of ``design`` (an elaboratable or a Fragment)."""
    return module_features(_netlist(design), family)


def module_logic(features, family):
    """The logic of one module's ``features`` synthesized alone."""
    costs = COSTS[family]
    return sum(costs.get(name, 0.0) * count for name, count in features.items())


def estimate_logic(design, family):
    """``{"logic": cells, "ff": flip-flops}`` of ``design`` on ``family`` (``"ecp5"``:
    ``TRELLIS_COMB``; ``"ice40"``: logic cells)."""
    modules = design_features(design, family)
    logic = FLATTEN[family] * sum(module_logic(f, family) for f in modules.values())
    ffs = sum(f["ff"] for f in modules.values())
    return {"logic": math.ceil(logic), "ff": ffs}
