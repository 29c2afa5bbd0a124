"""The whole inference pipeline against the golden integer model, image by image, word by word."""

import os
from pathlib import Path

import numpy as np
import pytest

from cnnforge.hw.accel import Accelerator, Parallelism, ResultLayout
from cnnforge.hw.params import NetworkConfig
from cnnforge.sim import golden, model as model_file
from cnnforge.sim.float_model import init_params
from cnnforge.sim.quantize import calibrate
from cnnforge.sim.rtl_runner import STALL_SWEEP, run_stream_test

MNIST_DIR = os.environ.get("MNIST_DIR")
needs_mnist = pytest.mark.skipif(not MNIST_DIR or not Path(MNIST_DIR).is_dir(),
                                 reason="MNIST_DIR is not set to the MNIST folder")

#: Test images simulated by `make test` (all 10,000 run in `make sim-full`).
SYSTEM_IMAGES = int(os.environ.get("CNNFORGE_SYSTEM_IMAGES", "500"))


def stream_words(model, images):
    """Harness input words and expected result words for ``images``."""
    ref = golden.infer_int(model, images)
    layout = ResultLayout(model.config)
    inputs = [[int(p)] for p in np.asarray(images, np.uint8).reshape(-1)]
    expected = [{"logit": int(ref.logits[n, k]), "prob": int(ref.probs[n, k]),
                 "cls": int(ref.cls[n])}
                for n in range(len(images)) for k in range(model.config.classes)]
    return inputs, expected, ref


def mnist_test_images(count):
    from cnnforge import mnist
    images, labels = mnist.load("test", MNIST_DIR)
    return images[:count], labels[:count]


@needs_mnist
def test_reference_network_on_mnist():
    """The committed model, UP5K parallelism, back to back: every logit, probability, class."""
    model = model_file.load()
    images, labels = mnist_test_images(SYSTEM_IMAGES)
    par = Parallelism(conv_lanes=16, requant_parallel=2, dense_mults=8)
    inputs, expected, ref = stream_words(model, images)
    result = run_stream_test("accel_up5k_mnist", lambda: Accelerator(model, par),
                             inputs=inputs, expected=expected, stalls=((0.0, 0.0),),
                             max_cycles=40_000 * len(images))
    result.assert_ok()
    cycles = result.runs[0].cycles / len(images)
    print(f"{len(images)} images: {cycles:.0f} cycles/image, accuracy "
          f"{100 * np.mean(ref.cls == labels):.2f} %")
    assert cycles <= 21_000


@needs_mnist
def test_stalls_and_backpressure_at_the_edges():
    model = model_file.load()
    images, _ = mnist_test_images(3)
    par = Parallelism(conv_lanes=8, requant_parallel=4, dense_mults=16)
    inputs, expected, _ = stream_words(model, images)
    run_stream_test("accel_stalls", lambda: Accelerator(model, par), inputs=inputs,
                    expected=expected, stalls=STALL_SWEEP[1:]).assert_ok()


@needs_mnist
def test_another_network_regenerates():
    """16 filters, 5x5 kernel: a different network from the same source."""
    config = NetworkConfig(filters=16, kernel=5, pool=2, classes=10)
    images, labels = mnist_test_images(40)
    params = init_params(config, np.random.default_rng(11))
    _, model, _, _ = calibrate(params, config, images, labels)
    par = Parallelism(conv_lanes=8, requant_parallel=2, dense_mults=8)
    inputs, expected, _ = stream_words(model, images[:6])
    run_stream_test("accel_16f_5x5", lambda: Accelerator(model, par), inputs=inputs,
                    expected=expected, stalls=STALL_SWEEP[:2]).assert_ok()
