"""The tap-parallel convolution engine against the golden ``conv_acc``, word for word, in the
stream harness: random models with extreme weights and pixels, the stall sweep, a 5x5 / 2-channel
configuration, the weight/bias write port, MNIST through the committed model, and the sustained
cycles per image of the no-stall runs."""


import numpy as np
import pytest

from cnnforge.hw import conv
from cnnforge.hw.conv_window import WindowConvEngine, bias_words, weight_words
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.hw.util import pack_fields as pack
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.harness import PortLoader
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, run_stream_test
# The stream words, golden model and MNIST helpers are the ConvEngine tests' (same formats).
from test_conv import (_mnist_test_images, _reference_model, conv_model, output_words,
                       pixel_words)


REFERENCE = NetworkConfig()

# Engines built only to read their derived numbers are never elaborated.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


# -- helpers -----------------------------------------------------------------------------------

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


def no_stall_bound(engine, images):
    """No-stall cycles for ``images`` back-to-back images: the sustained rate, the first
    image's fill (its first K-1 rows and K pixels) and the latency of the last window."""
    cfg = engine.config
    fill = (cfg.kernel - 1) * cfg.input_size + cfg.kernel
    return images * engine.cycles_per_image + fill + engine.latency + 2


def check_stream(name, config, lanes, conv_w, conv_b, images, *, acc=None, stalls=STALL_SWEEP,
                 sum_levels=None):
    """Stream ``images`` through a WindowConvEngine; every word against ``acc`` (default:
    golden ``conv_acc``); the no-stall run within :func:`no_stall_bound`."""
    images = np.asarray(images)
    if acc is None:
        acc = golden.conv_acc(conv_model(config, conv_w, conv_b), images)
    expected = output_words(acc, lanes, config)
    built = []

    def factory():
        built.append(WindowConvEngine(config, lanes=lanes, conv_w=conv_w, conv_b=conv_b,
                                      sum_levels=sum_levels))
        return built[-1]

    result = run_stream_test(name, factory, inputs=pixel_words(images), expected=expected,
                             stalls=stalls)
    result.assert_ok()
    engine = built[0]
    cycles = result.runs[0].cycles
    bound = no_stall_bound(engine, len(images))
    print(f"{name}: {len(expected)} words, no-stall run {cycles} cycles for {len(images)} "
          f"images (bound {bound}, {engine.cycles_per_image} per image sustained)")
    assert cycles <= bound, f"{name}: {cycles} cycles, sustained throughput allows {bound}"
    return result, engine


# -- constructor and derived numbers -----------------------------------------------------------

SMALL = NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2)


def test_rejects_bad_arguments():
    w, b = extreme_weights(SMALL, np.random.default_rng(0))
    with pytest.raises(TypeError, match="config must be a NetworkConfig, not"):
        WindowConvEngine({"filters": 4}, lanes=2, conv_w=w, conv_b=b)
    with pytest.raises(TypeError, match=r"lanes must be an integer, not 2\.0"):
        WindowConvEngine(SMALL, lanes=2.0, conv_w=w, conv_b=b)
    with pytest.raises(ValueError, match=r"lanes must divide filters \(4\), not 3"):
        WindowConvEngine(SMALL, lanes=3, conv_w=w, conv_b=b)
    with pytest.raises(ValueError, match="lanes must be a positive integer, not 0"):
        WindowConvEngine(SMALL, lanes=0, conv_w=w, conv_b=b)
    with pytest.raises(ValueError, match=r"conv_w must have shape \(4, 3, 3, 1\)"):
        WindowConvEngine(SMALL, lanes=2, conv_w=w[:, :2], conv_b=b)
    with pytest.raises(ValueError, match="conv_w must hold int8 values"):
        WindowConvEngine(SMALL, lanes=2, conv_w=w.astype(np.int32) * 2, conv_b=b)
    with pytest.raises(ValueError, match=r"conv_b must have shape \(4,\)"):
        WindowConvEngine(SMALL, lanes=2, conv_w=w, conv_b=b[:3])
    with pytest.raises(ValueError, match="conv_b must hold integers within"):
        WindowConvEngine(SMALL, lanes=2, conv_w=w, conv_b=b.astype(np.int64) * 100)
    with pytest.raises(ValueError, match="target must be one of"):
        WindowConvEngine(SMALL, lanes=2, conv_w=w, conv_b=b, target="xilinx")


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

RANDOM_CASES = [
    # name, config, lanes, images
    # 1,024 words; two groups per window
    ("k3_l4", NetworkConfig(input_size=10, in_channels=1, filters=8, kernel=3, pool=2,
                            classes=2), 4, 8),
    # four groups per window, two channels
    ("k3_c2_l2", NetworkConfig(input_size=8, in_channels=2, filters=8, kernel=3, pool=2,
                               classes=2), 2, 4),
    # one group per window: the pixel rate is the limit
    ("k3_l4_g1", NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2,
                               classes=2), 4, 4),
    # one-pixel kernel: no line buffers, every pixel completes a window
    ("k1_c2_l1", NetworkConfig(input_size=6, in_channels=2, filters=4, kernel=1, pool=2,
                               classes=2), 1, 3),
    # odd lanes: 3 biases per group in 2 words of 2
    ("k2_l3", NetworkConfig(input_size=7, in_channels=1, filters=6, kernel=2, pool=2,
                            classes=2), 3, 3),
]


# The MAC array's sums pipelined (sum_levels): same words, same sustained rate.
PIPELINED_CASES = [(name + f"_s{levels}", config, lanes, count, levels)
                   for (name, config, lanes, count), levels in zip(RANDOM_CASES[:2], (2, 1))]


@pytest.mark.parametrize("name, config, lanes, count, sum_levels",
                         [c + (None,) for c in RANDOM_CASES] + PIPELINED_CASES,
                         ids=[c[0] for c in RANDOM_CASES] + [c[0] for c in PIPELINED_CASES])
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
    cfg = NetworkConfig(input_size=6, in_channels=2, filters=4, kernel=5, pool=2, classes=2)
    bmax = Widths(cfg).conv_bias_max
    w = np.empty((4, 5, 5, 2), np.int8)
    w[0], w[1], w[2], w[3] = -128, 127, -128, 127
    b = np.array([-bmax, bmax, bmax, -bmax], np.int32)
    rng = np.random.default_rng(5)
    images = np.concatenate([np.full((2, 6, 6, 2), 255, np.uint8),
                             np.zeros((1, 6, 6, 2), np.uint8), extreme_images(cfg, rng, 1)])
    acc = golden.conv_acc(conv_model(cfg, w, b), images)
    width = Widths(cfg).conv_acc
    assert acc.min() == -2 * bmax and acc.min() >= -2 ** (width - 1)
    assert acc.max() <= 2 ** (width - 1) - 1
    check_stream("cwin_extremes", cfg, 2, w, b, images)


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
    cfg = NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2)
    lanes, wb = 2, Widths(cfg).conv_bias
    rng = np.random.default_rng(11)
    w0, b0 = extreme_weights(cfg, rng)
    w1, b1 = extreme_weights(cfg, rng)
    w2, b2 = w1.copy(), b1.copy()
    w2[0:2] = rng.integers(-128, 128, w2[0:2].shape)   # group 0 only
    b2[3] = -b2[3]                                       # one bias of group 1
    images = extreme_images(cfg, rng, 4)
    engine = WindowConvEngine(cfg, lanes=lanes, conv_w=w0, conv_b=b0, sum_levels=sum_levels)
    chunks, per = engine.bias_word_shape
    assert cfg.conv_size ** 2 > engine.window_fifo_depth + 1   # the documented condition
    beat = PortLoader.beat

    def weights(w, groups=None):
        return [beat(1, a, pack(v, 8)) for a, v in enumerate(weight_words(cfg, lanes, w))
                if groups is None or a // cfg.taps in groups]

    def biases(b, filters=None):
        return [beat(2, a, pack(v, wb)) for a, v in enumerate(bias_words(cfg, lanes, b))
                if filters is None or any((a // chunks) * lanes + (a % chunks) * per + k
                                          in filters for k in range(per))]

    def pixels(img):
        return [beat(0, 0, v) for v in pixel_words(img[None])]

    # The harness resets between stall settings and a reset keeps the written words: every run
    # starts by writing the initial model again (before image 0's first pixel: applies to it).
    inputs = (weights(w0) + biases(b0) + pixels(images[0])
              + weights(w1) + biases(b1) + pixels(images[1])
              + pixels(images[2])
              + weights(w2, {0}) + biases(b2, {3})
              + [beat(3, 0, 0)] * 3                        # kind 3: ignored
              + pixels(images[3]))
    expected = []
    for img, (w, b) in zip(images, [(w0, b0), (w1, b1), (w1, b1), (w2, b2)]):
        expected += output_words(golden.conv_acc(conv_model(cfg, w, b), img[None]), lanes, cfg)
    result = run_stream_test(
        f"cwin_write_port_s{sum_levels}",
        lambda: PortLoader(WindowConvEngine(cfg, lanes=lanes, conv_w=w0, conv_b=b0,
                                            sum_levels=sum_levels)),
        inputs=inputs, expected=expected)
    result.assert_ok()


# -- the reference network: MNIST through the committed model, throughput per lane count ------

def test_mnist_lanes16():
    """MNIST test images through the committed model at 16 lanes (144 multipliers), against
    ``infer_int``'s conv accumulators; back to back at 1,352 cycles per image."""
    model = _reference_model()
    images = _mnist_test_images(4)
    cfg = model.config
    acc = golden.infer_int(model, images).conv_acc
    result, engine = check_stream("cwin_mnist_l16", cfg, 16, model.conv_w, model.conv_b,
                                  images, acc=acc, stalls=STALL_SWEEP[:1] + STALL_SWEEP[-2:])
    assert engine.cycles_per_image == 1_352 and engine.multipliers == 144
    # 4 images: 4 * 1,352 plus the first image's fill (58 pixels) and the latency (8).
    assert result.runs[0].cycles <= 4 * 1_352 + 58 + 8 + 2


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
