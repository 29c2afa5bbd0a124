"""The protocol engine (boards/link.py) with a small fake accelerator, through its UART pins.

The fake sums the pixels and derives its result beats from the sum, so every field of every
reply is predictable; the real accelerator runs in tests/test_board_top.py.
"""

import numpy as np
import pytest

from cnnforge.sim.verify.board_system import run_sim_job
from cnnforge.boards.link import Link
from cnnforge.sim.verify.fake_accel import FakeAccel
from helpers import BOARD_CONFIG, check_board_scenario


def check_result(got, image, where):
    exp = FakeAccel.result(image, BOARD_CONFIG)
    for key in ("cls", "logits", "probs"):
        assert got[key] == exp[key], f"{where}: {key} {got[key]} != {exp[key]}"


@pytest.mark.parametrize("divisor", [4, pytest.param(7, marks=pytest.mark.slow(
    reason="a second baud divisor: divisor 4"))])
def test_link_with_fake_accelerator(divisor):
    rng = np.random.default_rng(divisor)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(4)]
    images.append(np.zeros((28, 28), np.uint8))
    images.append(np.full((28, 28), 255, np.uint8))
    fault_images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(2)]
    clk_freq = 3_000_000 * divisor
    link = Link(accel=FakeAccel(BOARD_CONFIG), config=BOARD_CONFIG, divisor=divisor,
                timeout=round(0.002 * clk_freq))
    out = run_sim_job(f"link_fake_{divisor}", link, "cnnforge.sim.verify.tb_board:board_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [im.tolist() for im in fault_images]},
                      divisor=divisor, clk_freq=clk_freq)
    check_board_scenario(out, images, fault_images, check_result)
    cycles = out["result"]["images"][0]["cycles"]
    # 784 pixels at one per 2 cycles, the delay, 10 beats: the capture's stalls are not counted.
    assert 2 * 784 + FakeAccel.DELAY <= cycles <= 2 * 784 + FakeAccel.DELAY + 50, cycles


def test_link_validation():
    with pytest.raises(TypeError, match="config must be a NetworkConfig"):
        Link(accel=None, config={}, divisor=4, timeout=10)
    with pytest.raises(ValueError, match="timeout must be a positive number of cycles, not 0"):
        Link(accel=None, config=BOARD_CONFIG, divisor=4, timeout=0)
    with pytest.raises(ValueError, match="divisor must be at least 4"):
        Link(accel=None, config=BOARD_CONFIG, divisor=2, timeout=10)
