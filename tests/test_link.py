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


def test_zero_runs_of_multichannel_images():
    """Streamed, zero-run coded 3-channel images: runs starting and ending on every channel and
    on odd and even pixels (the decoder writes a word, two pixels of all channels, where a run
    covers it), each reply the fake's sum of exactly the image's pixels."""
    from cnnforge.boards.protocol import zero_run_encode, zero_run_limit
    from cnnforge.hw.params import NetworkConfig
    config = NetworkConfig(input_size=6, in_channels=3, filters=4, kernel=3, pool=2, classes=10)
    rng = np.random.default_rng(17)
    images = [np.where(rng.random((6, 6, 3)) < density, rng.integers(1, 256, (6, 6, 3)), 0)
              .astype(np.uint8) for density in (0.05, 0.1, 0.2, 0.3, 0.5)]
    for at in ((0, 0, 1), (0, 1, 2), (5, 5, 2)):     # one byte: runs before and after it
        image = np.zeros((6, 6, 3), np.uint8)
        image[at] = 9
        images.append(image)
    max_run = zero_run_limit(4)
    runs = {n for im in images for n in zero_run_encode(im.tobytes(), max_run)[1::2]}
    assert len(images) == 8 and max(runs) > 6     # (longer than a word of 2 x 3 bytes)
    link = Link(accel=FakeAccel(config), config=config, divisor=4, timeout=24_000)
    out = run_sim_job("link_fake_rgb_runs", link, "cnnforge.sim.verify.tb_board:streamed_images",
                      {"images": [im.tolist() for im in images]}, divisor=4, clk_freq=12_000_000)
    for n, (got, image) in enumerate(zip(out["result"], images)):
        exp = FakeAccel.result(image, config)
        assert [got["cls"], got["logits"], got["probs"]] == \
            [exp["cls"], exp["logits"], exp["probs"]], f"image {n}"

