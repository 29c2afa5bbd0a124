"""The tap-parallel convolution engine against the golden ``conv_acc``, word for word, in the
stream harness: random models with extreme weights and pixels, the stall sweep, a 5x5 / 2-channel
configuration, the weight/bias write port, MNIST through the committed model, and the sustained
cycles per image of the no-stall runs."""

from functools import partial

import numpy as np
import pytest

from cnnforge.hw import conv
from cnnforge.hw.conv_window import WindowConvEngine, bias_words, weight_words
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP
# The stream words and checks are the ConvEngine tests' (one interface, same formats).
from helpers import (case, check_conv_stream, check_conv_write_port, longest_accumulation_case,
                     mnist_images, needs_mnist, reference_model, slow_on_mnist)


REFERENCE = NetworkConfig()

# Engines built only to read their derived numbers are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


# -- random models with extreme values -----------------------------------------------------------

def extreme_weights(config, rng, p_extreme=0.5):
    """int8 weights, about half of them -128 or 127; biases uniform, some at +-conv_bias_max."""
    shape = (config.filters, config.kernel, config.kernel, config.in_channels)
    w = rng.integers(-128, 128, shape)
    w = np.where(rng.random(shape) < p_extreme, rng.choice([-128, 127], shape), w)
    bmax = Widths(config).conv_bias_max
    b = rng.integers(-bmax, bmax + 1, config.filters)
    b = np.where(rng.random(config.filters) < 0.25, rng.choice([-bmax, bmax], config.filters), b)
    return w.astype(np.int8), b.astype(np.int32)


def extreme_images(config, rng, count, p_extreme=0.5):
    """uint8 images, about half of the bytes 0 or 255."""
    shape = (count, config.input_size, config.input_size, config.in_channels)
    img = rng.integers(0, 256, shape)
    img = np.where(rng.random(shape) < p_extreme, rng.choice([0, 255], shape), img)
    return img.astype(np.uint8)


#: Stream images through a WindowConvEngine in the harness, word for word; the no-stall run
#: within the sustained rate, the fill and the latency of the last window (``latency + 2``).
check_stream = partial(check_conv_stream, engine=WindowConvEngine,
                       latency=lambda engine: engine.latency + 2)


# -- constructor and derived numbers -----------------------------------------------------------

# The argument checks: tests/test_conv.py, for both engines.

def test_same_ports_and_formats_as_conv_engine():
    """Interchangeable with ConvEngine: same port signatures and write-port word formats."""
    rng = np.random.default_rng(1)
    cfg = NetworkConfig(input_size=8, in_channels=2, filters=8, kernel=3, pool=2, classes=2)
    w, b = extreme_weights(cfg, rng)
    for lanes in (1, 2, 8):
        window = WindowConvEngine(cfg, lanes=lanes, conv_w=w, conv_b=b)
        serial = conv.ConvEngine(cfg, lanes=lanes, conv_w=w, conv_b=b)
        assert window.signature == serial.signature
        assert window.bias_word_shape == serial.bias_word_shape
        assert window.multipliers == lanes * cfg.taps
        assert window.cycles_per_position == cfg.filters // lanes
    assert weight_words(cfg, 2, w) == conv.weight_words(cfg, 2, w)
    assert bias_words(cfg, 2, b) == conv.bias_words(cfg, 2, b)
    # address g * taps + t, lane l: filter g*lanes + l at tap t = (ky*K + kx)*Cin + c
    assert weight_words(cfg, 2, w)[3 * cfg.taps + (2 * 3 + 1) * 2 + 1] == [w[6, 2, 1, 1],
                                                                            w[7, 2, 1, 1]]


def test_reference_numbers():
    """The reference network: 144 multipliers at 16 lanes and 1,352 cycles per image (one
    window-group per cycle, 26*26*32/16); the pixel rate (784) limits 32 lanes."""
    zeros = dict(conv_w=np.zeros((32, 3, 3, 1), np.int8), conv_b=np.zeros(32, np.int32))
    expect = {8: (72, 2_704, 17), 16: (144, 1_352, 32), 32: (288, 784, 4)}
    for lanes, (mults, cycles, depth) in expect.items():
        engine = WindowConvEngine(REFERENCE, lanes=lanes, **zeros)
        assert (engine.multipliers, engine.cycles_per_image, engine.window_fifo_depth) == (
            mults, cycles, depth)
        assert engine.LATENCY == engine.latency == 8 and engine.fifo_depth == 8
        # The MAC array's sums registered every two adder levels: two cycles more.
        deep = WindowConvEngine(REFERENCE, lanes=lanes, sum_levels=2, **zeros)
        assert deep.latency == 10 and deep.fifo_depth == 10
        assert deep.cycles_per_image == engine.cycles_per_image


# -- random models with extreme values, every stall setting ------------------------------------

K3_L4 = NetworkConfig(input_size=10, in_channels=1, filters=8, kernel=3, pool=2, classes=2)
K3_C2_L2 = NetworkConfig(input_size=8, in_channels=2, filters=8, kernel=3, pool=2, classes=2)

RANDOM_CASES = [
    # name, config, lanes, images, sum_levels
    # 1,024 words; two groups per window
    case("k3_l4", K3_L4, 4, 8, None),
    # four groups per window, two channels
    case("k3_c2_l2", K3_C2_L2, 2, 4, None),
    # one group per window: the pixel rate is the limit
    case("k3_l4_g1", NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2,
                                   classes=2), 4, 4, None),
    # one-pixel kernel: no line buffers, every pixel completes a window
    case("k1_c2_l1", NetworkConfig(input_size=6, in_channels=2, filters=4, kernel=1, pool=2,
                                   classes=2), 1, 3, None),
    # odd lanes: 3 biases per group in 2 words of 2
    case("k2_l3", NetworkConfig(input_size=7, in_channels=1, filters=6, kernel=2, pool=2,
                                classes=2), 3, 3, None),
    # The MAC array's sums pipelined (sum_levels): same words, same sustained rate.
    case("k3_l4_s2", K3_L4, 4, 8, 2),
    case("k3_c2_l2_s1", K3_C2_L2, 2, 4, 1,
         slow="sum_levels=1 (no preset uses it): the sum_levels=2 cases"),
]


@pytest.mark.parametrize("name, config, lanes, count, sum_levels", RANDOM_CASES)
def test_random_back_to_back(name, config, lanes, count, sum_levels):
    rng = np.random.default_rng(sum(map(ord, name)) + 2)
    w, b = extreme_weights(config, rng)
    images = extreme_images(config, rng, count)
    images[0] = 255                   # an all-255 image: the largest sums
    images[-1] = 0                    # an all-zero image: bias only
    check_stream(f"cwin_{name}", config, lanes, w, b, images, sum_levels=sum_levels)


def test_longest_accumulation_extremes():
    """All-255 pixels with all -128 / all 127 weights and the bias at its bound: the longest
    accumulation (K=5, Cin=2: 50 taps in one cycle) reaches both ends of conv_acc."""
    cfg, w, b, images = longest_accumulation_case(extreme_images)
    check_stream("cwin_extremes", cfg, 2, w, b, images)


@pytest.mark.slow(reason="16 lanes on MNIST (test_accel.py), the random cases")
def test_k5_two_channels_lanes8():
    """A non-reference configuration: 12x12 images of 2 channels, 16 filters of 5x5 (50 taps),
    8 lanes (400 multipliers, two groups per window): pixel-bound, 144 cycles per image."""
    cfg = NetworkConfig(input_size=12, in_channels=2, filters=16, kernel=5, pool=2, classes=2)
    rng = np.random.default_rng(55)
    w, b = extreme_weights(cfg, rng)
    images = extreme_images(cfg, rng, 4)
    result, engine = check_stream("cwin_k5_c2_l8", cfg, 8, w, b, images)
    assert engine.cycles_per_image == 144
    assert result.runs[0].cycles >= 4 * 144


# -- weight/bias write port --------------------------------------------------------------------

@pytest.mark.parametrize("sum_levels", [None, 2])
def test_write_port_applies_to_next_image(sum_levels):
    """The ConvEngine semantics: new weights/biases written right after image n's last pixel
    (while n still computes) leave n alone and apply from image n+1; a partial rewrite keeps
    the other words; words written before an image's first pixel apply to it. With
    ``sum_levels`` the bias machinery's delay follows the longer MAC latency."""
    engine = check_conv_write_port(f"cwin_write_port_s{sum_levels}", WindowConvEngine,
                                   extreme_weights, extreme_images, sum_levels=sum_levels)
    assert engine.config.conv_size ** 2 > engine.window_fifo_depth + 1   # the documented condition


# -- the reference network: MNIST through the committed model, throughput per lane count ------

@needs_mnist
@slow_on_mnist
def test_mnist_lanes16():
    """MNIST test images through the committed model at 16 lanes (144 multipliers), against
    ``infer_int``'s conv accumulators; back to back at 1,352 cycles per image."""
    model = reference_model()
    images, _ = mnist_images("test", 4)
    cfg = model.config
    acc = golden.infer_int(model, images).conv_acc
    result, engine = check_stream("cwin_mnist_l16", cfg, 16, model.conv_w, model.conv_b,
                                  images, acc=acc, stalls=STALL_SWEEP[:1] + STALL_SWEEP[-2:])
    assert engine.cycles_per_image == 1_352 and engine.multipliers == 144
    # 4 images: 4 * 1,352 plus the first image's fill (58 pixels) and the latency (8).
    assert result.runs[0].cycles <= 4 * 1_352 + 58 + 8 + 2


@pytest.mark.slow(reason="16 lanes on MNIST (test_accel.py), the random cases")
@pytest.mark.parametrize("lanes, per_image", [(8, 2_704), (32, 784)])
def test_reference_lanes(lanes, per_image):
    """The reference network at 8 lanes (72 multipliers, 2,704 cycles per image) and 32 lanes
    (288 multipliers; the pixel rate limits it to 784): two random images back to back, word
    for word, and the no-stall cycle count."""
    rng = np.random.default_rng(lanes)
    w, b = extreme_weights(REFERENCE, rng)
    result, engine = check_stream(f"cwin_ref_l{lanes}", REFERENCE, lanes, w, b,
                                  extreme_images(REFERENCE, rng, 2),
                                  stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    assert engine.cycles_per_image == per_image
    assert 2 * per_image <= result.runs[0].cycles <= 2 * per_image + 58 + 8 + 2
