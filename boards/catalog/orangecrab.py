"""OrangeCrab r0.2 (Great Scott Gadgets / Greg Davill) with the LFE5U-25F: 48 MHz oscillator,
an RGB LED; its USB port goes straight to the FPGA. Host links: a UART on the feather header's
pins 0 (FPGA RX) and 1 (FPGA TX) through a 3.3 V USB-serial adapter, or (``LINK=usb``) the
board's own USB port as a CDC-ACM serial device in the FPGA (no adapter; the PLL also gives
its 12 and 48 MHz clocks).

Design clock 72 MHz (PLL: 48 -> 72 MHz), preset ``ecp5-25f``. RGB LED: red busy, green result
(too few LEDs for the class)."""

from amaranth.build import Attrs
from amaranth.vendor import LatticeECP5Platform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
from amaranth_boards.resources import UARTResource

from ..board import Board, Device, Programmer
from ..family import ECP5


class OrangeCrab25F(OrangeCrabR0_2_25FPlatform):
    """OrangeCrab r0.2 25F: no dfu-suffix step; a UART on the feather header pins 0 and 1."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_resources([UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                         attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))])

    @property
    def required_tools(self):
        return ["yosys", "nextpnr-ecp5", "ecppack"]

    @property
    def command_templates(self):
        return LatticeECP5Platform.command_templates.fget(self)


def leds(m, platform, core):
    rgb = platform.request("rgb_led", 0)
    m.d.comb += [rgb.r.o.eq(core.busy), rgb.g.o.eq(core.cls_valid), rgb.b.o.eq(0)]


BOARD = Board(
    name="orangecrab",
    platform=OrangeCrab25F,
    family=ECP5,
    device=Device("LFE5U-25F", logic=24_288, block_ram=56, dsps=28,
                  bitstream_bytes=(591_642 // 10, 591_642 + 4096)),
    preset="ecp5-25f",
    clk_freq=72e6,
    baud=3_000_000,
    description="OrangeCrab r0.2 25F, LFE5U-25F: 24k LUT4, 28 MULT18X18D, 56 DP16KD",
    leds=leds,
    programmer=Programmer("OPENFPGALOADER", "openFPGALoader", "{tool} -b orangecrab {bitstream}",
                          "apt-get install openfpgaloader, or set $OPENFPGALOADER (board in DFU "
                          "mode: hold the button while plugging in)"),
    links=("uart", "usb"),
    no_training="the masters, image and gradient buffers need about 127 DP16KD, the 25F has 56",
)
