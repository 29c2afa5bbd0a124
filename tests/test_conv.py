"""The convolution engine against the golden ``conv_acc``, word for word, in the stream harness."""

from functools import partial

import numpy as np
import pytest

from cnnforge.hw.conv import ConvEngine, bias_words, weight_words
from cnnforge.hw.conv_window import WindowConvEngine
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP
from helpers import (check_conv_stream, check_conv_write_port, longest_accumulation_case,
                     mnist_images, needs_mnist, reference_model, slow_on_mnist)


REFERENCE = NetworkConfig()

# Engines built only to read their derived numbers are never elaborated; Amaranth warns about
# them when they are garbage collected, possibly during a later test of this module.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


# -- random models and images ------------------------------------------------------------------

def random_weights(config, rng, wmin=-128, wmax=127):
    conv_w = rng.integers(wmin, wmax + 1, (config.filters, config.kernel, config.kernel,
                                           config.in_channels)).astype(np.int8)
    bmax = Widths(config).conv_bias_max
    conv_b = rng.integers(-bmax, bmax + 1, config.filters).astype(np.int32)
    return conv_w, conv_b


def random_images(config, rng, count):
    return rng.integers(0, 256, (count, config.input_size, config.input_size,
                                 config.in_channels)).astype(np.uint8)


#: Stream images through a ConvEngine in the harness, word for word; the no-stall run within the
#: sustained rate, the fill and the pipeline latency (``taps + 8``).
check_stream = partial(check_conv_stream, engine=ConvEngine,
                       latency=lambda engine: engine.config.taps + 8)


# -- constructor ---------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", [ConvEngine, WindowConvEngine], ids=lambda e: e.__name__)
def test_rejects_bad_arguments(engine):
    """The argument checks and their messages, the same for both engines (one interface)."""
    config = NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2)
    w, b = random_weights(config, np.random.default_rng(0))
    good = {"config": config, "lanes": 2, "conv_w": w, "conv_b": b}
    for bad, error, message in [
        ({"config": {"filters": 4}}, TypeError, "config must be a NetworkConfig or StageConfig, not"),
        ({"lanes": 2.0}, TypeError, r"lanes must be an integer, not 2\.0"),
        ({"lanes": 3}, ValueError, r"lanes must divide filters \(4\), not 3"),
        ({"lanes": 0}, ValueError, "lanes must be a positive integer, not 0"),
        ({"conv_w": w[:, :2]}, ValueError, r"conv_w must have shape \(4, 3, 3, 1\)"),
        ({"conv_w": w.astype(np.int32) * 2}, ValueError, "conv_w must hold int8 values"),
        ({"conv_b": b[:3]}, ValueError, r"conv_b must have shape \(4,\)"),
        ({"conv_b": b.astype(np.int64) * 100}, ValueError, "conv_b must hold integers within"),
        ({"target": "xilinx"}, ValueError, "target must be one of"),
    ]:
        with pytest.raises(error, match=message):
            engine(**{**good, **bad})


def test_memory_layout_and_sizes():
    rng = np.random.default_rng(1)
    cfg = NetworkConfig(input_size=8, in_channels=2, filters=4, kernel=3, pool=2, classes=2)
    w, b = random_weights(cfg, rng)
    words = weight_words(cfg, 2, w)
    assert len(words) == 2 * cfg.taps
    # address g * taps + t, lane l: filter g*lanes + l at tap t = (ky*K + kx)*Cin + c
    assert words[1 * cfg.taps + (2 * 3 + 1) * 2 + 1] == [w[2, 2, 1, 1], w[3, 2, 1, 1]]
    engine = ConvEngine(cfg, lanes=2, conv_w=w, conv_b=b)
    assert engine.bias_word_shape == (2, 1)
    assert bias_words(cfg, 2, b) == [[b[0]], [b[1]], [b[2]], [b[3]]]
    assert engine.cycles_per_position == 2 * cfg.taps
    assert engine.buffer_depth >= 2 * 2 * 8 + 6
    zeros = dict(conv_w=np.zeros((32, 3, 3, 1), np.int8), conv_b=np.arange(32, dtype=np.int32))
    ref = ConvEngine(REFERENCE, lanes=16, **zeros)
    assert ref.cycles_per_position * REFERENCE.conv_size ** 2 == 12_168
    assert ref.fifo_depth == 3 and ref.buffer_depth == 128
    # 16 biases per group as 8 words of 2 (loaded during the first 8 of 9 taps)
    assert ref.bias_word_shape == (8, 2)
    assert bias_words(REFERENCE, 16, zeros["conv_b"])[9] == [18, 19]
    assert ConvEngine(REFERENCE, lanes=32, **zeros).bias_word_shape == (8, 4)
    assert ConvEngine(REFERENCE, lanes=8, **zeros).bias_word_shape == (8, 1)
    odd = NetworkConfig(input_size=6, in_channels=1, filters=6, kernel=3, pool=2, classes=2)
    assert bias_words(odd, 3, np.arange(6)) == [[0, 1], [2, 0], [3, 4], [5, 0]]


# -- random data, every stall setting ------------------------------------------------------------

RANDOM_CASES = [
    # name, config, lanes, images
    ("k3_l4", NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2),
     4, 8),
    ("k3_c2_l2", NetworkConfig(input_size=8, in_channels=2, filters=4, kernel=3, pool=2,
                               classes=2), 2, 4),
    ("k5_l2", NetworkConfig(input_size=9, in_channels=1, filters=6, kernel=5, pool=5, classes=2),
     2, 3),
    # one-pixel kernel: two cycles per beat, the output FIFO's fastest rate
    ("k1_c2_l1", NetworkConfig(input_size=6, in_channels=2, filters=4, kernel=1, pool=2,
                               classes=2), 1, 3),
]


@pytest.mark.parametrize("name, config, lanes, count", RANDOM_CASES,
                         ids=[c[0] for c in RANDOM_CASES])
def test_random_back_to_back(name, config, lanes, count):
    rng = np.random.default_rng(sum(map(ord, name)))
    w, b = random_weights(config, rng)
    images = random_images(config, rng, count)
    images[0] = 0                     # an all-zero image: bias only
    check_stream(f"conv_{name}", config, lanes, w, b, images)


def test_extremes_longest_accumulation():
    """All-255 pixels with all -128 / all 127 weights and the bias at its bound: the longest
    accumulation (K=5, Cin=2: 50 taps) reaches both ends of conv_acc without wrapping."""
    cfg, w, b, images = longest_accumulation_case(random_images)
    check_stream("conv_extremes", cfg, 2, w, b, images)


# -- weight/bias write port ------------------------------------------------------------------------

def test_write_port_applies_to_next_image():
    """New weights/biases written right after image n's last pixel (while n still computes) leave
    n alone and apply from image n+1; a partial rewrite keeps the other words; words written
    before an image's first pixel apply to it."""
    check_conv_write_port("conv_write_port", ConvEngine, random_weights, random_images)


# -- the reference network: MNIST through the committed model, throughput per lane count ----------

@needs_mnist
@slow_on_mnist
def test_mnist_images_lanes16():
    model = reference_model()
    images, _ = mnist_images("test", 3)
    cfg = model.config
    acc = golden.infer_int(model, images).conv_acc
    result, engine = check_stream("conv_mnist_l16", cfg, 16, model.conv_w, model.conv_b, images,
                                  acc=acc)
    assert engine.cycles_per_position * cfg.conv_size ** 2 == 12_168
    print(f"conv_mnist_l16: no-stall {result.runs[0].cycles} cycles for 3 images "
          f"({engine.cycles_per_image} per image sustained)")


@pytest.mark.parametrize("lanes", [
    8,
    pytest.param(32, marks=pytest.mark.slow(
        reason="8 lanes; 16 lanes on MNIST (test_accel.py); the random cases")),
])
def test_reference_throughput(lanes):
    """The reference network (28x28, 32 filters of 3x3) at other lane counts: two random images
    back to back, checked word for word, no-stall cycle count at the sustained rate."""
    rng = np.random.default_rng(lanes)
    w, b = random_weights(REFERENCE, rng, -127, 127)
    _, engine = check_stream(f"conv_ref_l{lanes}", REFERENCE, lanes, w, b,
                             random_images(REFERENCE, rng, 2),
                             stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    assert engine.cycles_per_position * REFERENCE.conv_size ** 2 == 12_168 * 16 // lanes
