"""Board tops: the accelerator behind the UART link, with a PLL, reset, LEDs and UART pins.

============  ==================  ========  ==============  ============  =========================
board         device              preset    clock           UART          LEDs
============  ==================  ========  ==============  ============  =========================
icebreaker    iCE40UP5K-SG48      up5k      12 -> 30 MHz    FTDI ch. B    red: busy; green: result;
                                                                          break-off LEDs 2-5: class
ulx3s         LFE5U-85F-6BG381C   ecp5-85f  25 -> 100 MHz   FTDI          LED 0-3: class, 6: result,
                                      (link 30 MHz)                       7: busy
orangecrab    LFE5U-25F-8MG285C   ecp5-25f  48 -> 72 MHz    feather pins  RGB: red busy, green
                                                          0 (RX), 1 (TX)  result (too few LEDs for
                                                          3.3 V adapter   the class)
============  ==================  ========  ==============  ============  =========================

On the ULX3S the host link runs at 30 MHz from the PLL's second output and the accelerator at
100 MHz behind a :class:`~cnnforge.boards.crossing.ClockCrossing`.

On-chip training builds (``train_init``, ``make bitstream TRAIN=…``) fit only the ULX3S: preset
``ecp5-25f`` beside the trainer, every product in MULT18X18D, at 25 -> 15 MHz (3 Mbaud is
clock / 5). The iCEBreaker and OrangeCrab refuse them with the reason (:attr:`Board.no_training`).

The OrangeCrab has no USB-serial bridge (its USB goes to the FPGA): connect a 3.3 V USB-serial
adapter to the feather header's pins 0 (FPGA RX) and 1 (FPGA TX).

The platforms are subclassed so that a build needs only Yosys, nextpnr and the pack tool
(amaranth-boards' ULX3S requires ``openFPGALoader`` and OrangeCrab ``dfu-suffix`` even when
nothing is programmed); :mod:`cnnforge.boards.build` programs boards itself.
"""

from dataclasses import dataclass

from amaranth import *
from amaranth.build import Attrs
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.vendor import LatticeECP5Platform

from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
from amaranth_boards.resources import UARTResource
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..errors import CnnforgeError
from .link import Link
from .uart import divisor_for


__all__ = ["Board", "BOARDS", "get_board", "ice40_pll_params", "ecp5_pll_params",
           "ecp5_secondary_div", "BoardTop",
           "board_core", "sim_core", "training_accelerator"]

_ECP5_TOOLS = ["yosys", "nextpnr-ecp5", "ecppack"]


class ICEBreaker(ICEBreakerPlatform):
    """iCEBreaker (iCE40UP5K) with the break-off LED section attached."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_resources(self.break_off_pmod)


class ULX3S85F(ULX3S_85F_Platform):
    """ULX3S 85F without openFPGALoader in the build's required tools."""

    @property
    def required_tools(self):
        return list(_ECP5_TOOLS)


class OrangeCrab25F(OrangeCrabR0_2_25FPlatform):
    """OrangeCrab r0.2 25F: no dfu-suffix step; a UART on the feather header pins 0 and 1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                         attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))])

    @property
    def required_tools(self):
        return list(_ECP5_TOOLS)

    @property
    def command_templates(self):
        return LatticeECP5Platform.command_templates.fget(self)


@dataclass(frozen=True)
class Board:
    name: str
    platform: type
    family: str            # "ice40" or "ecp5"
    preset: str            # key of cnnforge.hw.accel.PRESETS
    clk_freq: float        # target clock of the design (PLL output)
    baud: int
    description: str
    # On-chip training builds (`make bitstream TRAIN=…`): their preset and clock, or None with
    # the reason the board cannot hold the trainer.
    train_preset: str | None = None
    train_clk_freq: float | None = None
    no_training: str | None = None
    # The host link's own, slower clock (a second PLL output), or None: the link runs on the
    # accelerator's clock. See cnnforge.boards.crossing.
    link_clk_freq: float | None = None

    @property
    def device(self):
        p = self.platform
        return p.device

    def training_preset(self):
        """The preset of an on-chip training build; :class:`CnnforgeError` (one line: why, and
        which boards can) if the board cannot hold the trainer."""
        if self.train_preset is None:
            can = ", ".join(b.name for b in BOARDS.values() if b.train_preset is not None)
            raise CnnforgeError(f"{self.name}: on-chip training does not fit the {self.device}: "
                                f"{self.no_training}; build it for {can}")
        return self.train_preset


BOARDS = {
    "icebreaker": Board("icebreaker", ICEBreaker, "ice40", "up5k", 30e6, 3_000_000,
                        "iCEBreaker, iCE40UP5K: 5280 LUT4, 8 SB_MAC16, 30 EBR, 4 SPRAM",
                        # 54,411 int16 masters (870 kbit) beside the int8 dense weights (433
                        # kbit, 2 of the 4 SPRAMs) exceed the SPRAM; the forward pass would have
                        # to read the masters' high bytes instead.
                        no_training="its int16 masters (870 kbit) and the int8 dense weights "
                                    "(433 kbit) exceed the 1 Mbit of SPRAM"),
    # Training on the ULX3S: the inference datapath of the 25F (16 conv products in
    # MULT18X18D) beside the trainer, every other product in MULT18X18D too; the wide ecp5-85f
    # datapath with the trainer needs twice the 85F's LUTs (products in LUTs) or more DSPs
    # than it has.
    "ulx3s": Board("ulx3s", ULX3S85F, "ecp5", "ecp5-85f", 100e6, 3_000_000,
                   "ULX3S 85F, LFE5U-85F: 84k LUT4, 156 MULT18X18D, 208 DP16KD",
                   train_preset="ecp5-25f", train_clk_freq=15e6,
                   # 3 Mbaud = 30 MHz / 10; the link's paths leave the 100 MHz clock.
                   link_clk_freq=30e6),
    "orangecrab": Board("orangecrab", OrangeCrab25F, "ecp5", "ecp5-25f", 72e6, 3_000_000,
                        "OrangeCrab r0.2 25F, LFE5U-25F: 24k LUT4, 28 MULT18X18D, 56 DP16KD",
                        no_training="the masters, image and gradient buffers need about 127 "
                                    "DP16KD, the 25F has 56"),
}


def get_board(name):
    try:
        return BOARDS[name]
    except KeyError:
        raise CnnforgeError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}") from None


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


def training_accelerator(train_init, parallelism):
    """The :class:`~cnnforge.hw.train.TrainingAccelerator` of a training build, starting from
    :func:`cnnforge.sim.reference.trainer.initial_state` ``(train_init)``, with the gradient lanes
    of ``parallelism``."""
    from ..hw.train import TrainingAccelerator
    from ..sim.reference.trainer import initial_state
    if train_init not in ("random", "model"):
        raise CnnforgeError(f"training init must be 'random' or 'model', not {train_init!r}")
    return TrainingAccelerator(initial_state(train_init), parallelism)


def link_config(model):
    """What the host link needs of a model: its input size and channels and its classes, as a
    :class:`~cnnforge.hw.params.NetworkConfig` (the seed's own; for any other layer list one
    with its input and classes, whose other fields nothing on the link reads)."""
    from ..hw.model import QuantNetwork
    from ..hw.params import NetworkConfig
    if not isinstance(model, QuantNetwork):
        return model.config
    h, w, c = model.network.input
    if h != w:
        raise CnnforgeError(f"the host link takes square images, not {h}x{w}")
    return NetworkConfig(input_size=h, in_channels=c, filters=1, kernel=1, pool=1,
                         classes=model.network.classes)


def board_model(qnet, preset, target=None):
    """What a board built for ``preset`` runs for the :class:`~cnnforge.hw.model.QuantNetwork`
    ``qnet``: ``(model, parallelism, accel)`` — the seed network as a ``QuantModel`` with the
    preset's :class:`~cnnforge.hw.accel.Parallelism` (``accel`` None: :func:`board_core` builds
    it), any other network with :func:`~cnnforge.hw.network.preset_parallelism` and its
    accelerator. ``target`` replaces the datapath's target (``"generic"``: portable, for
    simulation; None: the preset's)."""
    from ..hw.accel import PRESETS, Parallelism
    from ..hw.folded import FoldedMapping
    from ..hw.network import network_accelerator, preset_parallelism
    from ..hw.params import ConfigError
    try:
        model = qnet.seed_model()
    except ConfigError:
        par = preset_parallelism(qnet.network, preset)
        if target is not None and isinstance(par, FoldedMapping):
            par = FoldedMapping(qnet.network, par.lanes, target=target)
        return qnet, par, network_accelerator(qnet, par)
    par = PRESETS[preset]
    if target is not None:
        par = Parallelism(**{**par.to_dict(), "target": target})
    return model, par, None


def board_core(model, parallelism, *, clk_freq, baud, timeout_s=0.1, accel=None,
               accel_domain=None):
    """The link serving ``Accelerator(model, parallelism)`` (or a given ``accel``, e.g. a
    :func:`training_accelerator`), the link in clock domain ``sync`` at ``clk_freq``.

    With ``accel_domain`` the accelerator runs in that clock domain behind a
    :class:`~cnnforge.boards.crossing.ClockCrossing` (the domain is defined around the core).

    With the ``ice40`` target the dense weights live in SPRAM, which starts empty (so do a
    layer-list accelerator's memories whose ``storage`` is SPRAM: the folded mapping's
    weights): the core then starts without a model (``CLASSIFY`` is NAKed ``NO_MODEL`` until
    the host uploads it).
    """
    if accel is None:
        from ..hw.accel import Accelerator
        accel = Accelerator(model, parallelism)
    model_loaded = parallelism is None or parallelism.target != "ice40"
    if any(getattr(m, "storage", None) == "SPRAM" for m in getattr(accel, "memories", ())):
        model_loaded = False
    config = link_config(model)
    if accel_domain is not None:
        from .crossing import ClockCrossing
        accel = ClockCrossing(accel, config, domain=accel_domain)
    return Link(accel=accel, config=config, divisor=divisor_for(clk_freq, baud),
                timeout=max(1, round(timeout_s * clk_freq)), model_loaded=model_loaded)


def sim_core(model, preset, *, clk_freq, baud, timeout_s=0.002, target="generic",
             train_init=None, accel_domain=None):
    """A board core for simulation: the preset's parallelism, by default with the portable
    datapath (``target=None`` keeps the preset's: vendor primitives, simulated with Yosys's
    cell models); with ``train_init`` (``"random"``, ``"model"``) a training core; with
    ``accel_domain`` the accelerator in that clock domain (:func:`board_core`)."""
    from ..hw.accel import PRESETS, Parallelism
    par = PRESETS[preset]
    if target is not None:
        par = Parallelism(**{**par.to_dict(), "target": target})
    accel = None if train_init is None else training_accelerator(train_init, par)
    return board_core(model, par, clk_freq=clk_freq, baud=baud, timeout_s=timeout_s,
                      accel=accel, accel_domain=accel_domain)


class BoardTop(Elaboratable):
    """A board core with the board's clocking, reset, UART pins and LEDs.

    Parameters
    ----------
    board : Board
    model : QuantModel or QuantNetwork
        A :class:`~cnnforge.hw.model.QuantNetwork` is built as a
        :class:`~cnnforge.hw.network.NetworkAccelerator` (give it as ``accel``, with
        ``parallelism`` its :class:`~cnnforge.hw.network.LayerParallelism`).
    parallelism : Parallelism, optional
        Default: the board's preset (with ``train_init``, its training preset).
    clk_freq : float, optional
        Design clock (default: the board's, or its training clock with ``train_init``); the PLL
        gets as close as it can and the core is built for the frequency it actually reaches.
    baud : int, optional
    accel : wiring.Component, optional
        Replaces the accelerator (smoke tests of the board side only).
    train_init : {None, "random", "model"}
        Build with on-chip training (:func:`training_accelerator`) from this starting point.

    Raises
    ------
    CnnforgeError
        With ``train_init`` on a board that cannot hold the trainer.
    """

    def __init__(self, board, model, *, parallelism=None, clk_freq=None, baud=None, accel=None,
                 train_init=None):
        self.board = board
        self._model = model
        training = train_init is not None
        preset = board.training_preset() if training else board.preset
        if parallelism is None and accel is None:
            from ..hw.accel import PRESETS
            parallelism = PRESETS[preset]
        self.parallelism = self._par = parallelism
        if training and accel is None:
            accel = training_accelerator(train_init, parallelism)
        elif accel is None:
            from ..hw.accel import Accelerator
            accel = Accelerator(model, parallelism)
        self.train_init = train_init
        self.baud = self._baud = baud or board.baud
        #: The accelerator served by the link (:class:`~cnnforge.hw.accel.Accelerator`, a
        #: :class:`~cnnforge.hw.train.TrainingAccelerator` or the given ``accel``).
        self.accelerator = self._accel = accel
        target = clk_freq or (board.train_clk_freq if training else board.clk_freq)
        f_in = _default_clk_frequency(board.platform)
        if board.family == "ice40":
            self.pll = ice40_pll_params(f_in, target)
        else:
            self.pll = ecp5_pll_params(f_in, target)
        self.clk_freq = self.pll[-1]
        # The link in its own clock domain: inference builds of boards that ask for it.
        self.link_clk_freq = None
        if board.link_clk_freq is not None and not training:
            if board.family != "ecp5":
                raise CnnforgeError(f"{board.name}: a separate link clock needs an ECP5 PLL")
            clki, clkfb, clkop, f = self.pll
            self.link_pll = ecp5_secondary_div(f * clkop, board.link_clk_freq)
            self.link_clk_freq = self.link_pll[-1]

    def elaborate(self, platform):
        m = Module()
        board = self.board
        # iCE40: the PLL takes the clock pad itself (SB_PLL40_PAD); ECP5: through the pin buffer.
        clk_pin = platform.request(platform.default_clk,
                                   dir="-" if board.family == "ice40" else "i")
        locked = Signal()
        m.domains.sync = cd_sync = ClockDomain("sync")
        # With a link clock, the PLL's main output is the accelerator's ("fast") and its
        # secondary output the link's ("sync"); else both run on the main output.
        split = self.link_clk_freq is not None
        if split:
            m.domains.fast = cd_accel = ClockDomain("fast")
        else:
            cd_accel = cd_sync
        if board.family == "ice40":
            divr, divf, divq, filt, _ = self.pll
            m.submodules.pll = Instance(
                "SB_PLL40_PAD",
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=divr, p_DIVF=divf, p_DIVQ=divq, p_FILTER_RANGE=filt,
                i_PACKAGEPIN=clk_pin.io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=cd_sync.clk, o_LOCK=locked,
            )
        else:
            clki, clkfb, clkop, _ = self.pll
            secondary = {}
            if split:
                clkos, _ = self.link_pll
                secondary = dict(
                    a_FREQUENCY_PIN_CLKOS=str(self.link_clk_freq / 1e6),
                    p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=clkos, p_CLKOS_CPHASE=clkos - 1,
                    p_CLKOS_FPHASE=0, o_CLKOS=cd_sync.clk)
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=str(_default_clk_frequency(board.platform) / 1e6),
                a_FREQUENCY_PIN_CLKOP=str(self.clk_freq / 1e6),
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=clkop, p_CLKOP_CPHASE=clkop - 1,
                p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=clkfb, p_CLKI_DIV=clki,
                i_CLKI=clk_pin.i, i_CLKFB=cd_accel.clk, i_RST=0, i_STDBY=0,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
                i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=cd_accel.clk, o_LOCK=locked, **secondary,
            )
        # nextpnr derives the PLL output's constraint from the board clock pin's.
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        if split:
            m.submodules.fast_reset_sync = ResetSynchronizer(~locked, domain="fast")

        m.submodules.core = core = board_core(
            self._model, self._par, clk_freq=self.link_clk_freq or self.clk_freq,
            baud=self._baud, accel=self._accel, accel_domain="fast" if split else None)
        uart = platform.request("uart", 0)
        m.d.comb += [core.rx.eq(uart.rx.i), uart.tx.o.eq(core.tx)]
        self._leds(m, platform, core)
        return m

    def _leds(self, m, platform, core):
        name = self.board.name
        if name == "icebreaker":
            m.d.comb += [platform.request("led_r", 0).o.eq(core.busy),
                         platform.request("led_g", 0).o.eq(core.cls_valid)]
            for bit, led in enumerate(range(2, 6)):
                m.d.comb += platform.request("led", led).o.eq(core.cls_valid & core.cls[bit])
        elif name == "ulx3s":
            for bit in range(4):
                m.d.comb += platform.request("led", bit).o.eq(core.cls_valid & core.cls[bit])
            m.d.comb += [platform.request("led", 6).o.eq(core.cls_valid),
                         platform.request("led", 7).o.eq(core.busy)]
        else:
            rgb = platform.request("rgb_led", 0)
            m.d.comb += [rgb.r.o.eq(core.busy), rgb.g.o.eq(core.cls_valid), rgb.b.o.eq(0)]


def _default_clk_frequency(platform_class):
    platform = platform_class()
    return platform.default_clk_frequency
