"""The board core (UART link + the real accelerator) through its UART pins, against golden.

>= 20 MNIST test images go through the protocol (LOAD_IMAGE, CLASSIFY, READ_CYCLES) and every
class, logit and probability is compared with ``golden.infer_int``; then the fault cases of
tests/test_link.py (flipped bits, truncated frame, garbage, unknown command, bad lengths,
frames during a busy classification), each followed by a good request. Also the host's
``--sim`` path (:func:`cnnforge.boards.host.simulate`).
"""

import os
from pathlib import Path

import numpy as np
import pytest

from cnnforge.boards.host import SIM_BAUD, SIM_CLK_FREQ, run_sim_job, simulate
from test_link import check_board_scenario

MNIST_DIR = os.environ.get("MNIST_DIR")
needs_mnist = pytest.mark.skipif(not MNIST_DIR or not Path(MNIST_DIR).is_dir(),
                                 reason="MNIST_DIR is not set to the MNIST folder")
IMAGES = int(os.environ.get("CNNFORGE_BOARD_IMAGES", "20"))


def mnist_test(count):
    from cnnforge import mnist
    images, labels = mnist.load("test", MNIST_DIR)
    return images[:count], labels[:count]


def golden_check(model):
    from cnnforge.sim import golden

    def check(got, image, where):
        ref = golden.infer_int(model, np.asarray(image, np.uint8))
        assert got["cls"] == int(ref.cls[0]), f"{where}: class {got['cls']} != {ref.cls[0]}"
        assert got["logits"] == [int(x) for x in ref.logits[0]], f"{where}: logits differ"
        assert got["probs"] == [int(x) for x in ref.probs[0]], f"{where}: probabilities differ"
    return check


@needs_mnist
def test_board_core_through_uart():
    from cnnforge.boards.top import sim_core
    from cnnforge.sim import model as model_file
    model = model_file.load()
    images, _ = mnist_test(IMAGES + 2)
    images, fault_images = images[:IMAGES], images[IMAGES:]
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD)
    out = run_sim_job("board_top_up5k", link, "cnnforge.sim.tb_board:board_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [im.tolist() for im in fault_images]},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    check_board_scenario(out, images, fault_images, golden_check(model))
    cycles = [r["cycles"] for r in out["result"]["images"]]
    print(f"cycles per classification: {min(cycles)}..{max(cycles)}; "
          f"simulated {out['sim_time_ns'] / 1e6:.1f} ms")


@needs_mnist
def test_host_classify_sim():
    """``cnnforge classify --sim``: the host's Client against the RTL."""
    from cnnforge.sim import model as model_file
    model = model_file.load()
    images, labels = mnist_test(2)
    info, results = simulate(images, model=model)
    assert info["classes"] == 10
    check = golden_check(model)
    for n, (r, image) in enumerate(zip(results, images)):
        check({"cls": r.cls, "logits": r.logits, "probs": r.probs}, image, f"image {n}")
        assert r.cycles > 0 and r.seconds > 0
