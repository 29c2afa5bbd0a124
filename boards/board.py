"""A board described in one place: :class:`Board`, and the boards there are (:data:`BOARDS`).

Each board is one module of :mod:`cnnforge.boards.catalog` defining ``BOARD``; adding a board is
adding such a file (and a test). Nothing else in the package names a board.
"""

from dataclasses import dataclass
import importlib
import pkgutil
from typing import Callable

from ..errors import CnnforgeError
from .family import Family


__all__ = ["Device", "Programmer", "Board", "class_leds", "BOARDS", "get_board"]


@dataclass(frozen=True)
class Device:
    """The FPGA on a board, as ``cnnforge check`` and the bitstream check count it: logic
    (the family's logic cell), block RAM blocks, DSP blocks, SPRAM blocks; the sizes in bytes
    a complete bitstream of it can have (Lattice), or its JTAG IDCODE and configuration frames
    (Gowin)."""
    name: str
    logic: int
    block_ram: int
    dsps: int
    spram: int = 0
    bitstream_bytes: tuple = (0, float("inf"))
    idcode: int | None = None
    config_frames: int | None = None


@dataclass(frozen=True)
class Programmer:
    """How ``make program`` loads a bitstream: the environment variable naming the tool, its
    default command, the arguments (``{tool}``, ``{bitstream}``) and how to install it."""
    var: str
    tool: str
    command: str
    install: str

    def argv(self, tool, bitstream):
        return self.command.format(tool=tool, bitstream=bitstream).split()


@dataclass(frozen=True)
class Board:
    """Everything cnnforge knows of a board.

    ``platform``: its amaranth-boards platform class; ``preset``: the accelerator preset of its
    inference build (a key of :data:`cnnforge.hw.accel.PRESETS`; a layer-list network gets that
    preset's multiplier budget); ``clk_freq``: the design clock (a PLL output);
    ``leds(m, platform, core)``: drives its LEDs from the link core (``busy``, ``cls_valid``,
    ``cls``); ``nextpnr_seeds``: the placements a build tries until one meets the clock
    (``None``: nextpnr's default); ``model``: the committed model file its build takes when
    none is given (a board whose memories cannot hold the seed network).

    On-chip training builds (``make bitstream TRAIN=…``): ``train_preset`` and
    ``train_clk_freq``, or ``no_training``, the reason the board cannot hold the trainer.
    ``link_clk_freq``: the host link's own, slower clock (a second PLL output), or None: the
    link runs on the accelerator's clock (:mod:`cnnforge.boards.crossing`).
    """
    name: str
    platform: type
    family: Family
    device: Device
    preset: str
    clk_freq: float
    baud: int
    description: str
    leds: Callable
    programmer: Programmer
    nextpnr_seeds: tuple = (None,)
    #: The committed model file a build takes when none is given (None: the seed network).
    model: str | None = None
    train_preset: str | None = None
    train_clk_freq: float | None = None
    no_training: str | None = None
    link_clk_freq: float | None = None
    #: The platform's UART resource (``platform.request("uart", uart)``).
    uart: int = 0
    #: The host links the board can be built with, its default first: ``"uart"`` (the UART
    #: resource), ``"usb"`` (the FPGA's own USB port, platform resource ``usb`` 0, as a CDC-ACM
    #: serial device: :mod:`cnnforge.boards.usb`).
    links: tuple = ("uart",)

    def training_preset(self):
        """The preset of an on-chip training build; :class:`CnnforgeError` (one line: why, and
        which boards can) if the board cannot hold the trainer."""
        if self.train_preset is None:
            can = ", ".join(b.name for b in BOARDS.values() if b.train_preset is not None)
            raise CnnforgeError(f"{self.name}: on-chip training does not fit the "
                                f"{self.device.name}: {self.no_training}; build it for {can}")
        return self.train_preset

    def check_link(self, link):
        """``link`` (None: the board's default) if the board can be built with it;
        :class:`CnnforgeError` (one line) otherwise."""
        if link is None:
            return self.links[0]
        if link not in self.links:
            raise CnnforgeError(f"{self.name} has no {link!r} host link; it has "
                                f"{', '.join(self.links)}")
        return link

    def default_clk_frequency(self):
        """The board clock the PLL starts from."""
        return self.platform().default_clk_frequency


def class_leds(*, bits, result, busy):
    """A :attr:`Board.leds` for a row of ``led`` resources: the class in binary on LEDs
    ``bits`` (lowest bit first), ``result`` lit while a class is shown, ``busy`` while an
    image is classified."""
    def leds(m, platform, core):
        for bit, led in enumerate(bits):
            m.d.comb += platform.request("led", led).o.eq(core.cls_valid & core.cls[bit])
        m.d.comb += [platform.request("led", result).o.eq(core.cls_valid),
                     platform.request("led", busy).o.eq(core.busy)]
    return leds


def _catalog():
    from . import catalog
    boards = {}
    for info in sorted(pkgutil.iter_modules(catalog.__path__), key=lambda i: i.name):
        board = importlib.import_module(f"{catalog.__name__}.{info.name}").BOARD
        if not isinstance(board, Board):
            raise TypeError(f"{catalog.__name__}.{info.name}.BOARD is not a Board")
        if board.name in boards:
            raise ValueError(f"two boards are named {board.name!r}")
        boards[board.name] = board
    return boards


#: The boards, by name.
BOARDS = _catalog()


def get_board(name):
    try:
        return BOARDS[name]
    except KeyError:
        raise CnnforgeError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}") from None
