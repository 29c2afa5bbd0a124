"""ULX3S (Radiona) with the LFE5U-85F: 25 MHz oscillator, FT231X USB-serial bridge, eight
LEDs.

The accelerator runs at 100 MHz (PLL: 25 -> 100 MHz) and the host link at 30 MHz from the
PLL's second output, behind a :class:`~cnnforge.boards.crossing.ClockCrossing` (the link's
control paths and the UART pins at the die's edge cannot keep up with 100 MHz on the full
device). Preset ``ecp5-85f``. LEDs 0-3: the class, 6: result, 7: busy.

The only board that holds on-chip training (``make bitstream BOARD=ulx3s TRAIN=…``): the
inference datapath of the 25F (16 conv products in MULT18X18D) beside the trainer, every other
product in MULT18X18D too, at 25 -> 15 MHz (3 Mbaud is clock / 5); the wide ``ecp5-85f``
datapath with the trainer needs twice the 85F's LUTs (products in LUTs) or more DSPs than it
has."""

from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..board import Board, Device, Programmer, class_leds
from ..family import ECP5


class ULX3S85F(ULX3S_85F_Platform):
    """ULX3S 85F without openFPGALoader among the build's required tools (the build needs
    only Yosys, nextpnr and ecppack; :func:`cnnforge.boards.build.program` loads it)."""

    @property
    def required_tools(self):
        return ["yosys", "nextpnr-ecp5", "ecppack"]


BOARD = Board(
    name="ulx3s",
    platform=ULX3S85F,
    family=ECP5,
    # ecppack compresses (amaranth-boards' --compress), to about 14 % of the uncompressed size
    # (the upper bound) for a nearly empty design.
    device=Device("LFE5U-85F", logic=83_640, block_ram=208, dsps=156,
                  bitstream_bytes=(1_927_725 // 10, 1_927_725 + 4096)),
    preset="ecp5-85f",
    clk_freq=100e6,
    baud=3_000_000,
    description="ULX3S 85F, LFE5U-85F: 84k LUT4, 156 MULT18X18D, 208 DP16KD",
    leds=class_leds(bits=range(4), result=6, busy=7),
    programmer=Programmer("OPENFPGALOADER", "openFPGALoader", "{tool} -b ulx3s {bitstream}",
                          "apt-get install openfpgaloader, or set $OPENFPGALOADER"),
    # The first seed meets 100 MHz for the committed netlists; each try takes many minutes.
    nextpnr_seeds=(1, None),
    train_preset="ecp5-25f",
    train_clk_freq=15e6,
    # 3 Mbaud = 30 MHz / 10; the link's paths leave the 100 MHz clock.
    link_clk_freq=30e6,
)
