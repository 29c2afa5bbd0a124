"""The host link over USB (:mod:`cnnforge.boards.usb`): the OrangeCrab's board core with its
CDC-ACM serial device, simulated at the packet level against the host model
(:mod:`cnnforge.sim.verify.usb_host`: enumeration, then the protocol's frames as bulk OUT and IN
transactions, SOFs and full-speed bit timing), the accelerator's results checked bit for bit
against the golden model.

The model of the USB bus and host is checked on its own against LUNA's device in
tests/test_usb_host.py.
"""

import pytest

from cnnforge.boards.usb import USB_PID, USB_VID, USBLink, check_usb_clocks
from cnnforge.errors import CnnforgeError
from cnnforge.sim.verify.board_system import run_sim_job
from helpers import (BOARD_CONFIG, check_board_scenario, check_classification, mnist_images,
                     needs_mnist)

#: The OrangeCrab's design clock: the core is simulated at it (the bus's 12 MHz is real time).
CLK_FREQ = 72e6


def _usb_core():
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    return model, sim_core(model, "ecp5-25f", clk_freq=CLK_FREQ, baud=3_000_000, link="usb")


def _check(model):
    def check(got, image, where):
        check_classification(got, model, image, where)
    return check


@needs_mnist
def test_usb_board_core():
    """Enumeration (the device's VID/PID, a CDC data interface with bulk endpoints each way),
    then the board scenario over USB: MNIST images bit-exact, every fault case of the UART
    core's scenario (flipped bits, truncation, garbage, bad lengths, frames while busy) answered
    as there, each followed by a good request.

    Then a stalled host: it stops reading for 3 ms while it streams images (a window of the
    device's slots, every reply carrying logits and probabilities): the replies wait in the
    device (its IN endpoint NAKs); once reading resumes every reply arrives, in order,
    bit-exact."""
    model, core = _usb_core()
    assert core.max_run == 255          # the OUT endpoint NAKs while the engine is busy
    images, _ = mnist_images("test", 17)
    images, fault_images, stream_images = images[:3], images[3:5], images[5:]
    out = run_sim_job("usb_board_core", core, "cnnforge.sim.verify.tb_board:usb_board_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [im.tolist() for im in fault_images],
                       "stream_images": [im.tolist() for im in stream_images],
                       "pause_s": 0.003},
                      divisor=None, clk_freq=CLK_FREQ, real_time=True)
    usb = out["usb"]
    assert (usb["device"]["vid"], usb["device"]["pid"]) == (USB_VID, USB_PID)
    assert usb["device"]["product"] == "cnnforge accelerator"
    assert usb["host"]["late_sofs"] == 0 and usb["host"]["timeouts"] == 0
    check_board_scenario({**out, "result": out["result"]["scenario"]}, images, fault_images,
                         _check(model))

    stalled = out["result"]["stalled"]
    assert [r["seq"] for r in stalled["results"]] == list(range(len(stream_images)))
    for k, (result, image) in enumerate(zip(stalled["results"], stream_images)):
        check_classification(result, model, image, f"streamed image {k}")
    # The stall was felt: no reply was read before the host resumed reading.
    assert stalled["first_reply_s"] >= 0.003
    print(f"simulated {out['sim_time_ns'] / 1e6:.1f} ms; USB counters {usb['port']}")


def test_usb_link_validation():
    with pytest.raises(ValueError, match="fifo_depth must be at least 2, not 1"):
        USBLink(accel=None, config=BOARD_CONFIG, timeout=10, fifo_depth=1)
    with pytest.raises(CnnforgeError, match=r"USB full speed needs the usb clock at 12 MHz "
                                            r"\+-0.25 %; the PLL gives 12.1000 MHz"):
        check_usb_clocks(12.1e6, 48e6)
    check_usb_clocks(12e6, 48e6)


def test_board_links():
    """The OrangeCrab builds with its USB port (the PLL gives 12 and 48 MHz from one VCO, in
    phase); a board without one refuses in one line."""
    from cnnforge.boards.board import get_board
    from cnnforge.boards.top import BoardTop
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    top = BoardTop(get_board("orangecrab"), model, link="usb")
    assert [f for *_, f in top.usb_plls] == [12e6, 48e6]
    assert BoardTop(get_board("orangecrab"), model).link == "uart"
    with pytest.raises(CnnforgeError, match=r"^icebreaker has no 'usb' host link; it has uart$"):
        BoardTop(get_board("icebreaker"), model, link="usb")
