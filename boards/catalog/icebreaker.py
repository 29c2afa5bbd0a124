"""iCEBreaker (1BitSquared): iCE40UP5K-SG48, 12 MHz oscillator, FT2232H USB bridge (channel B:
the UART), red and green LEDs on the board, five more on the break-off PMOD.

Design clock 30 MHz (PLL: 12 -> 30 MHz), preset ``up5k`` (the convolution and dense engine on
the eight SB_MAC16, the dense weights in SPRAM). LEDs: red busy, green result, break-off LEDs
2-5 the class (binary)."""

from amaranth_boards.icebreaker import ICEBreakerPlatform

from ..board import Board, Device, Programmer
from ..family import ICE40


class ICEBreaker(ICEBreakerPlatform):
    """iCEBreaker (iCE40UP5K) with the break-off LED section attached."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_resources(self.break_off_pmod)


def leds(m, platform, core):
    m.d.comb += [platform.request("led_r", 0).o.eq(core.busy),
                 platform.request("led_g", 0).o.eq(core.cls_valid)]
    for bit, led in enumerate(range(2, 6)):
        m.d.comb += platform.request("led", led).o.eq(core.cls_valid & core.cls[bit])


BOARD = Board(
    name="icebreaker",
    platform=ICEBreaker,
    family=ICE40,
    # icepack writes the whole configuration (104,090 bytes, whatever the design; the rest
    # leaves room for a comment).
    device=Device("iCE40UP5K", logic=5_280, block_ram=30, dsps=8, spram=4,
                  bitstream_bytes=(104_090, 104_090 + 1024)),
    preset="up5k",
    clk_freq=30e6,
    baud=3_000_000,
    description="iCEBreaker, iCE40UP5K: 5280 LUT4, 8 SB_MAC16, 30 EBR, 4 SPRAM",
    leds=leds,
    programmer=Programmer("ICEPROG", "iceprog", "{tool} {bitstream}",
                          "apt-get install fpga-icestorm (iceprog), or set $ICEPROG"),
    # The UP5K builds fill most of the device, where one placement's Fmax varies by more than
    # the margin to 30 MHz: the default seed and seed 1 meet it for the committed netlist
    # (30.88, 30.81 MHz; seeds 2 and 3: 28.91-29.97), seed 2 for lenet's.
    nextpnr_seeds=(None, 1, 2, 3),
    # 54,411 int16 masters (870 kbit) beside the int8 dense weights (433 kbit, 2 of the 4
    # SPRAMs) exceed the SPRAM; the forward pass would have to read the masters' high bytes
    # instead.
    no_training="its int16 masters (870 kbit) and the int8 dense weights (433 kbit) exceed "
                "the 1 Mbit of SPRAM",
)
