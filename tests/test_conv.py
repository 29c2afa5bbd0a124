"""The convolution engine against the golden ``conv_acc``, word for word, in the stream harness."""

import os
from pathlib import Path

import numpy as np
import pytest

from cnnforge.errors import ModelError
from cnnforge.hw.conv import ConvEngine, bias_words, weight_words
from cnnforge.hw.util import pack_fields as pack
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.harness import PortLoader
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, run_stream_test


MNIST_DIR = os.environ.get("MNIST_DIR")
REFERENCE = NetworkConfig()

# Engines built only to read their derived numbers are never elaborated; Amaranth warns about
# them when they are garbage collected, possibly during a later test of this module.
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


# -- helpers -----------------------------------------------------------------------------------

def conv_model(config, conv_w, conv_b):
    """A QuantModel holding only what ``golden.conv_acc`` needs."""
    return golden.QuantModel(config=config, conv_w=conv_w, conv_b=conv_b, requant_mult=None,
                             requant_shift=1, dense_w=None, dense_b=None, softmax_mult=0,
                             softmax_shift=0)


def random_weights(config, rng, wmin=-128, wmax=127):
    conv_w = rng.integers(wmin, wmax + 1, (config.filters, config.kernel, config.kernel,
                                           config.in_channels)).astype(np.int8)
    bmax = Widths(config).conv_bias_max
    conv_b = rng.integers(-bmax, bmax + 1, config.filters).astype(np.int32)
    return conv_w, conv_b


def random_images(config, rng, count):
    return rng.integers(0, 256, (count, config.input_size, config.input_size,
                                 config.in_channels)).astype(np.uint8)


def pixel_words(images):
    """Raster stream of input payload words (channels packed, channel 0 in the low byte)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return [pack(p, 8) for p in images.reshape(-1, images.shape[-1])]


def output_words(acc, lanes, config):
    """Expected output beats from golden ``conv_acc`` ``(N, H', W', F)``: raster, groups inner."""
    width = Widths(config).conv_acc
    flat = np.asarray(acc).reshape(-1, config.filters)
    return [pack(row[g * lanes:(g + 1) * lanes], width)
            for row in flat for g in range(config.filters // lanes)]


def sustained_bound(engine, images):
    """No-stall cycles the engine may take for ``images`` back-to-back images."""
    cfg = engine.config
    fill = (cfg.kernel - 1) * cfg.input_size + cfg.kernel
    latency = cfg.taps + 8
    return images * engine.cycles_per_image + fill + latency


def check_stream(name, config, lanes, conv_w, conv_b, images, *, acc=None, stalls=STALL_SWEEP):
    """Stream ``images`` through a ConvEngine in the harness; every word against ``acc``
    (default: golden ``conv_acc``); the no-stall run within the sustained-throughput bound."""
    images = np.asarray(images)
    if acc is None:
        acc = golden.conv_acc(conv_model(config, conv_w, conv_b), images)
    expected = output_words(acc, lanes, config)
    built = []

    def factory():
        built.append(ConvEngine(config, lanes=lanes, conv_w=conv_w, conv_b=conv_b))
        return built[-1]

    result = run_stream_test(name, factory, inputs=pixel_words(images), expected=expected,
                             stalls=stalls)
    result.assert_ok()
    engine = built[0]
    cycles = result.runs[0].cycles
    bound = sustained_bound(engine, len(images))
    print(f"{name}: {len(expected)} words, no-stall run {cycles} cycles (bound {bound})")
    assert cycles <= bound, f"{name}: {cycles} cycles, sustained throughput allows {bound}"
    return result, engine


# -- constructor ---------------------------------------------------------------------------------

SMALL = NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2)


def test_rejects_bad_arguments():
    w, b = random_weights(SMALL, np.random.default_rng(0))
    with pytest.raises(TypeError, match="config must be a NetworkConfig, not"):
        ConvEngine({"filters": 4}, lanes=2, conv_w=w, conv_b=b)
    with pytest.raises(TypeError, match=r"lanes must be an integer, not 2\.0"):
        ConvEngine(SMALL, lanes=2.0, conv_w=w, conv_b=b)
    with pytest.raises(ValueError, match=r"lanes must divide filters \(4\), not 3"):
        ConvEngine(SMALL, lanes=3, conv_w=w, conv_b=b)
    with pytest.raises(ValueError, match="lanes must be a positive integer, not 0"):
        ConvEngine(SMALL, lanes=0, conv_w=w, conv_b=b)
    with pytest.raises(ValueError, match=r"conv_w must have shape \(4, 3, 3, 1\)"):
        ConvEngine(SMALL, lanes=2, conv_w=w[:, :2], conv_b=b)
    with pytest.raises(ValueError, match="conv_w must hold int8 values"):
        ConvEngine(SMALL, lanes=2, conv_w=w.astype(np.int32) * 2, conv_b=b)
    with pytest.raises(ValueError, match=r"conv_b must have shape \(4,\)"):
        ConvEngine(SMALL, lanes=2, conv_w=w, conv_b=b[:3])
    with pytest.raises(ValueError, match="conv_b must hold integers within"):
        ConvEngine(SMALL, lanes=2, conv_w=w, conv_b=b.astype(np.int64) * 100)
    with pytest.raises(ValueError, match="target must be one of"):
        ConvEngine(SMALL, lanes=2, conv_w=w, conv_b=b, target="xilinx")


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
    cfg = NetworkConfig(input_size=6, in_channels=2, filters=4, kernel=5, pool=2, classes=2)
    bmax = Widths(cfg).conv_bias_max
    w = np.empty((4, 5, 5, 2), np.int8)
    w[0], w[1], w[2], w[3] = -128, 127, -128, 127
    b = np.array([-bmax, bmax, bmax, -bmax], np.int32)
    rng = np.random.default_rng(5)
    images = np.concatenate([np.full((2, 6, 6, 2), 255, np.uint8),
                             np.zeros((1, 6, 6, 2), np.uint8), random_images(cfg, rng, 1)])
    acc = golden.conv_acc(conv_model(cfg, w, b), images)
    width = Widths(cfg).conv_acc
    assert acc.min() == -2 * bmax and acc.min() >= -2 ** (width - 1)
    assert acc.max() <= 2 ** (width - 1) - 1
    check_stream("conv_extremes", cfg, 2, w, b, images)


# -- weight/bias write port ------------------------------------------------------------------------

def test_write_port_applies_to_next_image():
    """New weights/biases written right after image n's last pixel (while n still computes) leave
    n alone and apply from image n+1; a partial rewrite keeps the other words; words written
    before an image's first pixel apply to it."""
    cfg = NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2)
    lanes, wb = 2, Widths(cfg).conv_bias
    rng = np.random.default_rng(11)
    w0, b0 = random_weights(cfg, rng)
    w1, b1 = random_weights(cfg, rng)
    w2, b2 = w1.copy(), b1.copy()
    w2[0:2] = rng.integers(-128, 128, w2[0:2].shape)   # group 0 only
    b2[3] = -b2[3]                                       # one bias of group 1
    images = random_images(cfg, rng, 4)

    def cmd(kind, addr, value):
        return {"kind": kind, "addr": addr, "data": value}

    chunks, per = ConvEngine(cfg, lanes=lanes, conv_w=w0, conv_b=b0).bias_word_shape

    def weights(w, groups=None):
        words = weight_words(cfg, lanes, w)
        return [cmd(1, a, pack(v, 8)) for a, v in enumerate(words)
                if groups is None or a // cfg.taps in groups]

    def biases(b, filters=None):
        return [cmd(2, a, pack(v, wb)) for a, v in enumerate(bias_words(cfg, lanes, b))
                if filters is None or any((a // chunks) * lanes + (a % chunks) * per + k in filters
                                          for k in range(per))]

    def pixels(img):
        return [cmd(0, 0, v) for v in pixel_words(img[None])]

    # The harness resets between stall settings, and a reset keeps the written words: every run
    # starts by writing the initial model again (before image 0's first pixel: applies to it).
    inputs = (weights(w0) + biases(b0) + pixels(images[0])
              + weights(w1) + biases(b1) + pixels(images[1])
              + pixels(images[2])
              + weights(w2, {0}) + biases(b2, {3})
              + [cmd(3, 0, 0)] * 3                        # kind 3: ignored
              + pixels(images[3]))
    expected = []
    for img, (w, b) in zip(images, [(w0, b0), (w1, b1), (w1, b1), (w2, b2)]):
        expected += output_words(golden.conv_acc(conv_model(cfg, w, b), img[None]), lanes, cfg)
    result = run_stream_test(
        "conv_write_port",
        lambda: PortLoader(ConvEngine(cfg, lanes=lanes, conv_w=w0, conv_b=b0)),
        inputs=inputs, expected=expected)
    result.assert_ok()


# -- the reference network: MNIST through the committed model, throughput per lane count ----------

def _reference_model():
    from cnnforge.sim.reference import model_file
    try:
        return model_file.load()
    except ModelError as e:
        pytest.skip(f"no committed model: {e}")


def _mnist_test_images(count):
    if not MNIST_DIR or not Path(MNIST_DIR).is_dir():
        pytest.skip("MNIST_DIR is not set to the MNIST folder")
    from cnnforge import mnist
    images, _ = mnist.load("test", MNIST_DIR)
    return images[:count]


def test_mnist_images_lanes16():
    model = _reference_model()
    images = _mnist_test_images(3)
    cfg = model.config
    acc = golden.infer_int(model, images).conv_acc
    result, engine = check_stream("conv_mnist_l16", cfg, 16, model.conv_w, model.conv_b, images,
                                  acc=acc)
    assert engine.cycles_per_position * cfg.conv_size ** 2 == 12_168
    print(f"conv_mnist_l16: no-stall {result.runs[0].cycles} cycles for 3 images "
          f"({engine.cycles_per_image} per image sustained)")


@pytest.mark.parametrize("lanes", [8, 32])
def test_reference_throughput(lanes):
    """The reference network (28x28, 32 filters of 3x3) at other lane counts: two random images
    back to back, checked word for word, no-stall cycle count at the sustained rate."""
    rng = np.random.default_rng(lanes)
    w, b = random_weights(REFERENCE, rng, -127, 127)
    _, engine = check_stream(f"conv_ref_l{lanes}", REFERENCE, lanes, w, b,
                             random_images(REFERENCE, rng, 2),
                             stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    assert engine.cycles_per_position * REFERENCE.conv_size ** 2 == 12_168 * 16 // lanes
