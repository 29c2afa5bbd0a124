"""``cnnforge check MODEL --board B``: before any synthesis, what a model's accelerator needs of
a board — per layer (MACs, weights, multipliers, weight memory, cycles) and in total (block RAM,
multipliers, cycles and images/s) — and whether it fits.

Block RAM is counted from the design itself: the board core (host link, clock crossing, the
accelerator) is elaborated (a second or so) and every memory in it is placed the way Yosys's
memory mapping places it on the ECP5: a writable memory with synchronous read ports, more than
32 words and more than 1,024 bits goes into DP16KD blocks (of the block's shapes, 512 x 36 to
16,384 x 1, the fewest blocks, a deep cascade's multiplexer counted against it), every other
one into LUT RAM or logic. The rule gives the DP16KD count of every ECP5 build report it was
held against exactly (the ULX3S and OrangeCrab builds of the seed network, the ULX3S lenet
builds; ``tests/test_check.py``). The Gowin GW1N and GW2A have the same 18-Kbit block shapes
and 16 x 4 LUT RAM cells: the rule gives the Tang Primer 20K seed build's 41 BSRAM. Logic (ECP5
``TRELLIS_COMB``, iCE40 logic cells) and flip-flops are estimated from the same elaborated
design's netlist (:mod:`.logic`): within :data:`LOGIC_ERROR` of the builds in
``tests/test_check.py``; for a family not yet calibrated (Gowin) the logic is not estimated
and not checked.
"""

from dataclasses import dataclass
import math

from amaranth import Shape

from ..errors import CnnforgeError
from .family import FAMILIES


__all__ = ["Memory", "BLOCK_RAM_ATTRS", "wants_block_ram", "design_memories", "block_ram_blocks",
           "LOGIC_ERROR", "check"]


@dataclass(frozen=True)
class Memory:
    """One memory of an elaborated design: its path, words, bits per word, whether every
    read port is synchronous, whether it has a write port, and whether the design asks for
    block RAM (:data:`BLOCK_RAM_ATTRS`: a table Yosys would otherwise make logic)."""
    path: str
    depth: int
    width: int
    sync_read: bool
    writable: bool
    block: bool = False

    @property
    def bits(self):
        return self.depth * self.width


def design_memories(design):
    """Every memory of ``design`` (an Amaranth elaboratable), elaborated without a platform."""
    from amaranth.hdl._ir import Fragment
    from amaranth.hdl._mem import MemoryInstance
    found = []

    def walk(fragment, path):
        for sub, name, _ in fragment.subfragments:
            where = path + (str(name),)
            if isinstance(sub, MemoryInstance):
                data = sub._data
                found.append(Memory(
                    "/".join(where), data.depth, Shape.cast(data.shape).width,
                    all(port._domain != "comb" for port in sub._read_ports),
                    bool(sub._write_ports), wants_block_ram(sub._attrs)))
            else:
                walk(sub, where)

    walk(Fragment.get(design, None), ())
    return found


#: The attributes by which a design asks Yosys for block RAM (``Memory(attrs=...)``).
BLOCK_RAM_ATTRS = {"ram_style": "block"}


def wants_block_ram(attrs):
    """Whether a memory's attributes ask for block RAM."""
    return all((attrs or {}).get(k) == v for k, v in BLOCK_RAM_ATTRS.items())


def _in_block_ram(memory, family="ecp5"):
    """Whether Yosys maps ``memory`` into ``family``'s block RAM (see the module doc). A family
    without LUT RAM (the iCE40) puts every writable memory with synchronous reads into block
    RAM, however small; read-only tables become logic, unless the design asks for block RAM."""
    if memory.block and memory.sync_read:
        return True
    if not FAMILIES[family].lut_ram:
        return memory.sync_read and memory.writable
    return memory.sync_read and memory.writable and memory.depth > 32 and memory.bits > 1024


def block_ram_blocks(memory, family="ecp5"):
    """Blocks of ``family``'s block RAM ``memory`` takes if it goes there, else 0."""
    if not _in_block_ram(memory, family):
        return 0
    blocks = _fewest_blocks(memory, family)
    if FAMILIES[family].lut_ram:
        # Yosys weighs block RAM against LUT RAM (16 x 4 bits a cell): a memory needing at
        # most 24 LUT RAM cells per block it would take goes to LUT RAM (the OrangeCrab lenet
        # build's 56 x 40 pool partials: 40 cells for 2 blocks), the others stay (a 64 x 25
        # bias memory: 28 cells for 1 block; 64 x 128: 128 for 4; 50 x 256: 256 for 8).
        cells = math.ceil(memory.depth / 16) * math.ceil(memory.width / 4)
        if cells <= 24 * blocks:
            return 0
    return blocks


def _fewest_blocks(memory, family):
    # Of the block shapes, the one Yosys picks: the fewest blocks, but a deep cascade costs the
    # multiplexer over its outputs (12,800 x 32 takes 26 blocks of 1,024 x 18, two wide and 13
    # deep, rather than 25 of 512 x 36 in one column 25 deep).
    options = []
    for d, w in FAMILIES[family].block_ram_shapes:
        wide, deep = math.ceil(memory.width / w), math.ceil(memory.depth / d)
        options.append((wide * deep + (deep - 1) * memory.width / 256, wide * deep))
    return min(options)[1]


#: How far the logic estimate may be from a build (``tests/test_check.py`` holds it there).
LOGIC_ERROR = 0.15


def network_board_core(qnet, spec, par):
    from .top import board_core
    from ..hw.network import network_accelerator
    return board_core(qnet, None, clk_freq=spec.link_clk_freq or spec.clk_freq, baud=spec.baud,
                      accel=network_accelerator(qnet, par),
                      accel_domain="fast" if spec.link_clk_freq else None)


def check(qnet, board, multipliers=None, *, parallelism=None):
    """The check of ``qnet`` (a :class:`~cnnforge.hw.model.QuantNetwork`) on ``board``: a dict
    with ``layers`` (rows), ``totals``, ``fits`` and ``problem`` (the one-line reason it does
    not fit, or None). :class:`CnnforgeError` for what the generator cannot build at all.
    ``parallelism``: a :class:`~cnnforge.hw.network.LayerParallelism` to check instead of the
    board preset's."""
    from .build import link_images_per_second
    from .board import get_board
    from .top import link_config
    from ..hw.network import (ConvStage, FoldedMapping, LayerParallelism, preset_parallelism,
                              weight_memories)
    from ..hw.params import ConfigError, Conv2D, Dense
    spec = get_board(board)
    device, family = spec.device, spec.family
    network = qnet.network
    try:
        if parallelism is not None:
            par = parallelism
        elif family.name == "ice40":
            # The folded mapping: a budget of 2 * lanes multipliers.
            lanes = 8 if multipliers is None else max(2, multipliers // 2 // 2 * 2)
            par = FoldedMapping(network, lanes, target="ice40")
        elif multipliers is None:
            par = preset_parallelism(network, spec.preset)
        else:
            par = LayerParallelism.balanced(network, multipliers)
    except ConfigError as e:
        raise CnnforgeError(str(e)) from None
    folded = isinstance(par, FoldedMapping)
    cycles = par.stage_cycles()
    mems = weight_memories(par)
    rows = []
    for index, layer in enumerate(network.layers):
        row = {"layer": index, "kind": layer.kind,
               "output": "x".join(map(str, network.output_shape(index))),
               "macs": network.macs(index), "weights": 0, "multipliers": 0,
               "weight_bits": 0, "cycles": None}
        if isinstance(layer, (Conv2D, Dense)):
            row["weights"] = int(math.prod(network.weight_shape(index)))
            row["weight_bits"] = sum(m.total_bits for m in mems if m.layer == index)
            row["cycles"] = cycles[index]
            if folded:
                row["multipliers"] = par.multipliers
                row["parallelism"] = f"shared: {par.lanes} lanes x 2 pixels"
                rows.append(row)
                continue
            row["multipliers"] = par.layer_multipliers(index)
            stage = next(s for s in par.stages if s.index == index)
            n = par.lanes[index]
            if isinstance(stage, ConvStage):
                c = par.channels[index]
                row["parallelism"] = f"{n} lanes" + (f" x {c} channels" if c > 1 else "")
            else:
                row["parallelism"] = f"{n} multiplier{'s' if n > 1 else ''}"
        rows.append(row)
    from amaranth.hdl._ir import Fragment
    from .logic import estimate_logic
    core = Fragment.get(network_board_core(qnet, spec, par), None)
    memories = design_memories(core)
    blocks = sum(block_ram_blocks(m, family.name) for m in memories)
    from .logic import COSTS
    logic = (estimate_logic(core, family.name) if family.name in COSTS
             else {"logic": None, "ff": None})
    # DSPs used by explicit instances: the folded mapping's SB_MAC16 (two products each) and
    # its SPRAM (16 bits each); the ECP5 layer-list products are in LUTs (-nodsp); on the
    # Gowin families synth_gowin puts them into MULT9X9 itself (not counted before synthesis).
    dsps = par.lanes if folded else 0
    products = ("in LUTs" if family.name in ("ice40", "ecp5") else
                f"in {family.dsp_name} / MULT9X9, as synth_gowin infers them (not counted "
                f"before synthesis)")
    spram = par.lanes * 8 // 16 if folded and par.target == "ice40" else 0
    per_image = par.cycles_per_image
    clock = spec.clk_freq
    totals = {
        "macs": network.total_macs, "multipliers": par.multipliers,
        "multiplier_bound": network.total_macs / par.multipliers,
        "block_ram": blocks, "block_ram_available": device.block_ram,
        "block_ram_name": family.block_ram_name,
        "logic": logic["logic"], "logic_available": device.logic,
        "logic_name": family.logic_name, "ff": logic["ff"],
        "dsps": dsps, "dsps_available": device.dsps, "dsp_name": family.dsp_name,
        "products": products,
        "spram": spram, "spram_available": device.spram,
        "cycles_per_image": per_image, "clock_mhz": clock / 1e6,
        "images_per_s": clock / per_image,
        "images_per_s_link": link_images_per_second(link_config(qnet), spec.baud),
        "pipeline": par.pipeline,
    }
    problem = None
    # The estimate is within LOGIC_ERROR of the builds it was held against: refuse only what
    # cannot fit even then (what is over the device but within it says so beside "fits").
    if logic["logic"] is not None and logic["logic"] > device.logic * (1 + LOGIC_ERROR):
        problem = (f"does not fit: logic ({family.logic_name}): needs about "
                   f"{logic['logic']:,} (estimated, +/- {LOGIC_ERROR:.0%}), the {device.name} "
                   f"has {device.logic:,}")
    elif blocks > device.block_ram:
        problem = (f"does not fit: block RAM ({family.block_ram_name}): needs {blocks}, the "
                   f"{device.name} has {device.block_ram}")
    elif dsps > device.dsps:
        problem = (f"does not fit: DSP ({family.dsp_name}): needs {dsps}, the {device.name} "
                   f"has {device.dsps}")
    elif spram > device.spram:
        problem = (f"does not fit: SPRAM: needs {spram}, the {device.name} has "
                   f"{device.spram}")
    return {"board": spec.name, "device": device.name, "family": family.name, "layers": rows,
            "totals": totals, "fits": problem is None, "problem": problem, "parallelism": par}
