"""Sipeed Tang Primer 20K (core board on its dock) with the GW2A-LV18PG256C8/I7: 27 MHz
oscillator, a USB-serial bridge on the dock (the UART), six LEDs on the dock. Built with the
open Gowin flow from PyPI: Yosys ``synth_gowin -family gw2a``, nextpnr-himbaechel (YoWASP),
Apicula's ``gowin_pack``.

Design clock 72 MHz (rPLL: 27 -> 72 MHz; 3 Mbaud is clock / 24), preset ``gw2a-18`` (the
products on the MULT18X18/MULT9X9 that ``synth_gowin`` infers). LEDs 0-3: the class, 4: result,
5: busy."""

from amaranth_boards.tang_primer_20k import TangPrimer20kDockPlatform

from ..board import Board, Device, Programmer, class_leds
from ..family import GW2A, ApiculaPlatform


class TangPrimer20K(ApiculaPlatform, TangPrimer20kDockPlatform):
    """The Tang Primer 20K on its dock, built with nextpnr-himbaechel."""


BOARD = Board(
    name="tangprimer20k",
    platform=TangPrimer20K,
    family=GW2A,
    device=Device("GW2A-LV18PG256C8/I7", logic=20_736, block_ram=46, dsps=48,
                  idcode=0x0000081B, config_frames=1342),
    preset="gw2a-18",
    clk_freq=72e6,
    baud=3_000_000,
    description="Tang Primer 20K, GW2A-18C: 20,736 LUT4, 48 MULT18X18, 46 BSRAM",
    leds=class_leds(bits=range(4), result=4, busy=5),
    programmer=Programmer("OPENFPGALOADER", "openFPGALoader",
                          "{tool} -b tangprimer20k {bitstream}",
                          "apt-get install openfpgaloader, or set $OPENFPGALOADER"),
    nextpnr_seeds=(None, 1, 2),
    no_training="not built for it yet: the trainer is held against the ECP5 (ULX3S) only",
)
