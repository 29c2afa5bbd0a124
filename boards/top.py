"""Board tops: the accelerator behind the UART link, with the board's PLL, reset, LEDs and UART
pins. The boards themselves (clocks, presets, LEDs, what each can build) are described one per
file in :mod:`cnnforge.boards.catalog`; their families' PLLs in :mod:`cnnforge.boards.family`.

A board with a link clock (:attr:`~cnnforge.boards.board.Board.link_clk_freq`, the ULX3S) runs
the host link from the PLL's second output and the accelerator from its first, behind a
:class:`~cnnforge.boards.crossing.ClockCrossing`.
"""

from amaranth import *
from amaranth.lib.cdc import ResetSynchronizer

from ..errors import CnnforgeError
from .link import Link
from .uart import divisor_for


__all__ = ["BoardTop", "board_core", "sim_core", "training_accelerator", "link_config",
           "board_model"]


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
               accel_domain=None, link="uart", usb_bus=None):
    """The link serving ``Accelerator(model, parallelism)`` (or a given ``accel``, e.g. a
    :func:`training_accelerator`), the link in clock domain ``sync`` at ``clk_freq``.

    ``link``: ``"uart"`` (a :class:`~cnnforge.boards.link.Link` at ``baud``) or ``"usb"`` (a
    :class:`~cnnforge.boards.usb.USBLink` on the pins ``usb_bus``, or with its UTMI interface as
    ports when None: simulation).

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
    timeout = max(1, round(timeout_s * clk_freq))
    if link == "usb":
        from .usb import USBLink
        return USBLink(accel=accel, config=config, timeout=timeout, model_loaded=model_loaded,
                       bus=usb_bus)
    if link != "uart":
        raise CnnforgeError(f"the host link must be 'uart' or 'usb', not {link!r}")
    return Link(accel=accel, config=config, divisor=divisor_for(clk_freq, baud),
                timeout=timeout, model_loaded=model_loaded)


def sim_core(model, preset, *, clk_freq, baud, timeout_s=0.002, target="generic",
             train_init=None, accel_domain=None, link="uart"):
    """A board core for simulation: the preset's parallelism, by default with the portable
    datapath (``target=None`` keeps the preset's: vendor primitives, simulated with Yosys's
    cell models); with ``train_init`` (``"random"``, ``"model"``) a training core; with
    ``accel_domain`` the accelerator in that clock domain; ``link`` the transport
    (:func:`board_core`)."""
    from ..hw.accel import PRESETS, Parallelism
    par = PRESETS[preset]
    if target is not None:
        par = Parallelism(**{**par.to_dict(), "target": target})
    accel = None if train_init is None else training_accelerator(train_init, par)
    return board_core(model, par, clk_freq=clk_freq, baud=baud, timeout_s=timeout_s,
                      accel=accel, accel_domain=accel_domain, link=link)


class BoardTop(Elaboratable):
    """A board core with the board's clocking, reset, UART pins and LEDs.

    Parameters
    ----------
    board : cnnforge.boards.board.Board
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
    link : {None, "uart", "usb"}
        The host link (None: the board's default, :attr:`~cnnforge.boards.board.Board.links`).
        ``"usb"``: the PLL also gives the USB device's 12 and 48 MHz clocks.

    Raises
    ------
    CnnforgeError
        With ``train_init`` on a board that cannot hold the trainer.
    """

    def __init__(self, board, model, *, parallelism=None, clk_freq=None, baud=None, accel=None,
                 train_init=None, link=None):
        self.board = board
        self.link = board.check_link(link)
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
        self._f_in = board.default_clk_frequency()
        self.pll = board.family.pll(self._f_in, target)
        self.clk_freq = self.pll[-1]
        # The link in its own clock domain: inference builds of boards that ask for it.
        self.link_clk_freq = self.link_pll = None
        if board.link_clk_freq is not None and not training:
            try:
                self.link_pll = board.family.secondary_pll(self.pll, board.link_clk_freq)
            except CnnforgeError as e:
                raise CnnforgeError(f"{board.name}: {e}") from None
            self.link_clk_freq = self.link_pll[-1]
        # USB full speed: the device at 12 MHz, its PHY sampling at 48 MHz (one VCO: in phase).
        self.usb_plls = []
        if self.link == "usb":
            from .usb import USB_CLOCK, USB_IO_CLOCK, check_usb_clocks
            if self.link_pll is not None:
                raise CnnforgeError(f"{board.name}: a USB link with a separate link clock is "
                                    f"not supported")
            try:
                self.usb_plls = [board.family.secondary_pll(self.pll, f)
                                 for f in (USB_CLOCK, USB_IO_CLOCK)]
            except CnnforgeError as e:
                raise CnnforgeError(f"{board.name}: {e}") from None
            check_usb_clocks(self.usb_plls[0][-1], self.usb_plls[1][-1])

    def elaborate(self, platform):
        m = Module()
        board = self.board
        family = board.family
        clk_pin = platform.request(platform.default_clk,
                                   dir="-" if family.pll_takes_pad else "i")
        locked = Signal()
        m.domains.sync = cd_sync = ClockDomain("sync")
        # With a link clock, the PLL's main output is the accelerator's ("fast") and its
        # secondary output the link's ("sync"); else both run on the main output.
        split = self.link_clk_freq is not None
        if split:
            m.domains.fast = cd_accel = ClockDomain("fast")
        else:
            cd_accel = cd_sync
        secondaries = []
        if split:
            secondaries.append((self.link_pll, self.link_clk_freq, cd_sync.clk))
        for name, params in zip(("usb", "usb_io"), self.usb_plls):
            domain = ClockDomain(name)
            m.domains += domain
            secondaries.append((params, params[-1], domain.clk))
        m.submodules.pll = family.pll_instance(
            clk_pin=clk_pin, pll=self.pll, f_in=self._f_in, f_out=self.clk_freq,
            main_clk=cd_accel.clk, locked=locked, secondaries=secondaries)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")
        for name in ["fast"] * split + ["usb", "usb_io"] * bool(self.usb_plls):
            m.submodules[f"{name}_reset_sync"] = ResetSynchronizer(~locked, domain=name)

        usb = self.link == "usb"
        m.submodules.core = core = board_core(
            self._model, self._par, clk_freq=self.link_clk_freq or self.clk_freq,
            baud=self._baud, accel=self._accel, accel_domain="fast" if split else None,
            link=self.link, usb_bus=platform.request("usb", 0) if usb else None)
        if not usb:
            uart = platform.request("uart", board.uart)
            m.d.comb += [core.rx.eq(uart.rx.i), uart.tx.o.eq(core.tx)]
        board.leds(m, platform, core)
        return m
