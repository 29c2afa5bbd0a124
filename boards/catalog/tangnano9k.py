"""Sipeed Tang Nano 9K with the GW1NR-LV9QN88PC6/I5: 27 MHz oscillator, a USB-serial bridge (the
UART), six LEDs. Built with the open Gowin flow from PyPI: Yosys ``synth_gowin -family gw1n``,
nextpnr-himbaechel (YoWASP), Apicula's ``gowin_pack``.

Its 26 BSRAM (2 KB each) cannot hold the seed network's 54,080 dense weights, so its build
takes ``mnist-small`` unless a model is given (``cnnforge check`` says what fits). Preset
``gw1n-9``: the folded mapping (every layer on one MAC array of 4 lanes x 2 pixels, maps and
weights in BSRAM; an engine per layer does not fit its 8,640 LUT4 even at 8 multipliers), the
products in MULT9X9 as ``synth_gowin`` infers them. Design clock 54 MHz (rPLL: 27 -> 54 MHz;
3 Mbaud is clock / 18). LEDs 0-3: the class, 4: result, 5: busy."""

from amaranth_boards.tang_nano_9k import TangNano9kPlatform

from ..board import Board, Device, Programmer, class_leds
from ..family import GW1N, ApiculaPlatform


class TangNano9K(ApiculaPlatform, TangNano9kPlatform):
    """The Tang Nano 9K, built with nextpnr-himbaechel."""


BOARD = Board(
    name="tangnano9k",
    platform=TangNano9K,
    family=GW1N,
    device=Device("GW1NR-LV9QN88PC6/I5", logic=8_640, block_ram=26, dsps=20,
                  idcode=0x1100481B, config_frames=712),
    preset="gw1n-9",
    model="mnist-small.npz",
    clk_freq=54e6,
    baud=3_000_000,
    description="Tang Nano 9K, GW1NR-9C: 8,640 LUT4, 20 MULT18X18, 26 BSRAM",
    leds=class_leds(bits=range(4), result=4, busy=5),
    programmer=Programmer("OPENFPGALOADER", "openFPGALoader", "{tool} -b tangnano9k {bitstream}",
                          "apt-get install openfpgaloader, or set $OPENFPGALOADER"),
    nextpnr_seeds=(None, 1, 2),
    no_training="the seed network's dense weights alone (54,080 bytes) exceed its 26 BSRAM",
)
