# amaranth: UnusedElaboratable=no
"""MaxPool against :func:`cnnforge.sim.reference.golden.maxpool` (value and argmax), word for word.

Stream regressions run in the hardware harness (:func:`run_stream_test`, Verilator) over the
whole STALL_SWEEP, with images back to back: random images (uniform bytes and low-entropy
bytes full of ties), edge images (all equal: argmax 0; all 0; all 255; a tie between every
pair of window positions, on random and on 0 backgrounds with 255 maxima) over several configs
(lanes 1, 4, 16, 32 -- 32 gives one beat per position, so a window's entry is read the cycle
after it was written; pool 2 and 3), and real data: MNIST test images through the committed
model (``act`` in, ``pooled`` + ``pool_argmax`` out). The no-stall run checks that the block
takes one beat per cycle. A short Amaranth-simulator test checks the stream rules the harness
cannot see: ``o`` holds while stalled, and ``i.ready`` drops only while ``o`` is backpressured.
"""

import itertools

import numpy as np
import pytest

from cnnforge.hw.maxpool import MaxPool
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, run_stream_test
from helpers import mnist_images, needs_mnist, pack_rows, reference_model, simulate_stream


# -- vectors --------------------------------------------------------------------------------------


def stream_words(act, config, lanes):
    """Input and expected words for activations ``act`` ``(N, S, S, F)``."""
    widths = Widths(config)
    pooled, arg = golden.maxpool(act, config.pool)
    layout = MaxPool(config, lanes=lanes).result_layout
    offset = layout["argmax"].offset
    ins = pack_rows(act.reshape(-1, lanes), widths.act)
    exp = [v | (a << offset) for v, a in zip(pack_rows(pooled.reshape(-1, lanes), widths.act),
                                             pack_rows(arg.reshape(-1, lanes), widths.pool_index))]
    return ins, exp


def edge_images(config, rng, reps=2):
    """``(n, S, S, F)`` uint8 edge-case images (see the module docstring).

    Tie images: in every window and channel exactly two positions ``a < b`` hold the maximum
    (golden argmax ``a``), cycling through every pair; the other positions are random below it,
    or 0 under a maximum of 255.
    """
    s, f, p = config.conv_size, config.filters, config.pool
    images = [np.full((s, s, f), v, np.uint8) for v in (0, 255, 77)]
    pairs = list(itertools.combinations(range(p * p), 2))
    rows = config.pool_size ** 2 * f
    for n in range(reps):
        for zero_background in (False, True):
            win = np.zeros((rows, p * p), np.int64)
            for k in range(rows):
                a, b = pairs[(k + 7 * n) % len(pairs)]
                peak = 255 if zero_background else int(rng.integers(1, 256))
                win[k] = 0 if zero_background else rng.integers(0, peak, p * p)
                win[k, [a, b]] = peak
            # rows are (wy, wx, c) windows, columns dy * p + dx: back to (y, x, c)
            img = win.reshape(s // p, s // p, f, p, p).transpose(0, 3, 1, 4, 2).reshape(s, s, f)
            images.append(img.astype(np.uint8))
    return np.stack(images)


def random_images(config, n, rng):
    s, f = config.conv_size, config.filters
    wide = rng.integers(0, 256, (n - n // 2, s, s, f))
    ties = rng.integers(0, 3, (n // 2, s, s, f)) * 127
    return np.concatenate([wide, ties]).astype(np.uint8)


def check_throughput(result, n_in):
    """No-stall run: one input beat per cycle, plus the pipeline latency."""
    cycles = result.runs[0].cycles
    assert n_in <= cycles <= n_in + MaxPool.LATENCY + 3, (cycles, n_in)
    return cycles


def test_edge_images_hold_every_tie():
    config = NetworkConfig(input_size=8, kernel=3, pool=3, filters=32)
    rng = np.random.default_rng(0)
    imgs = edge_images(config, rng)
    p = config.pool
    win = imgs.reshape(len(imgs), 2, p, 2, p, 32).transpose(0, 1, 3, 5, 2, 4).reshape(-1, p * p)
    found = set()
    for w in win:
        top = np.flatnonzero(w == w.max())
        if len(top) == 2:
            found.add(tuple(top))
    assert found == set(itertools.combinations(range(p * p), 2))
    pooled, arg = golden.maxpool(imgs, p)
    assert (arg[:3] == 0).all() and pooled.min() == 0 and pooled.max() == 255


# -- constructor ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lanes, error, message", [
    (0, ValueError, r"lanes must be at least 1, not 0"),
    (3, ValueError, r"lanes must divide filters \(32\), not 3"),
    ("4", TypeError, r"lanes must be an integer, not '4'"),
    (False, TypeError, r"lanes must be an integer, not False"),
])
def test_constructor_validates(lanes, error, message):
    with pytest.raises(error, match=message):
        MaxPool(NetworkConfig(), lanes=lanes)


def test_constructor_rejects_non_config():
    with pytest.raises(TypeError, match=r"config must be a NetworkConfig or StageConfig, not None"):
        MaxPool(None, lanes=4)


def test_ports_and_properties():
    dut = MaxPool(NetworkConfig(), lanes=16)
    assert dut.groups == 2 and dut.memory_depth == 26
    assert dut.o.payload.shape() == dut.result_layout
    assert dut.result_layout["argmax"].shape.elem_shape.width == 2
    assert dut.i.payload.shape().length == 16
    assert MaxPool(NetworkConfig(input_size=8, pool=3), lanes=4).memory_depth == 16


# -- Amaranth-simulator check of the stream rules (short) -----------------------------------------

@pytest.mark.parametrize("lanes, pool", [(32, 2), (4, 3)])
def test_stream_rules(lanes, pool):
    config = NetworkConfig(input_size=8, kernel=3, pool=pool, filters=32)
    rng = np.random.default_rng(lanes)
    act = random_images(config, 2, rng)
    ins, exp = stream_words(act, config, lanes)
    dut = MaxPool(config, lanes=lanes)
    out, _ = simulate_stream(dut, ins, len(exp), gap=0.3, stall=0.5, seed=lanes,
                             max_cycles=20 * len(ins), ready_unless_backpressured=True)
    assert out == exp


# -- hardware-harness regressions -----------------------------------------------------------------

CASES = [
    # name, input_size, kernel, pool, lanes, random images
    ("l1_p2", 6, 3, 2, 1, 4),        # conv 4x4, 32 beats per position
    ("l4_p3", 8, 3, 3, 4, 8),        # conv 6x6, 8 beats per position
    ("l16_p2", 8, 3, 2, 16, 30),     # conv 6x6, 2 beats per position
    ("l32_p3", 8, 3, 3, 32, 40),     # conv 6x6, 1 beat per position: write-then-read next cycle
    ("l32_p2", 6, 3, 2, 32, 70),     # conv 4x4, 1 beat per position, pool 2
]


@pytest.mark.parametrize("name, input_size, kernel, pool, lanes, n_random", CASES,
                         ids=[c[0] for c in CASES])
def test_random_and_edges(name, input_size, kernel, pool, lanes, n_random):
    config = NetworkConfig(input_size=input_size, kernel=kernel, pool=pool, filters=32)
    rng = np.random.default_rng(sum(map(ord, name)))
    act = np.concatenate([edge_images(config, rng), random_images(config, n_random, rng)])
    ins, exp = stream_words(act, config, lanes)
    assert len(ins) - len(edge_images(config, rng)) * config.conv_size ** 2 * 32 // lanes >= 1000
    result = run_stream_test(f"maxpool_{name}", lambda: MaxPool(config, lanes=lanes),
                             inputs=ins, expected=exp, stalls=STALL_SWEEP)
    result.assert_ok()
    cycles = check_throughput(result, len(ins))
    print(f"maxpool {name}: {len(ins)} beats in {cycles} cycles (no stalls)")


@needs_mnist
def test_mnist_act_to_pooled():
    """Real data: 8 MNIST test images back to back, ``act`` in, ``pooled`` + argmax out."""
    model = reference_model()
    images, _ = mnist_images("test", 8)
    inf = golden.infer_int(model, images)
    config, lanes = model.config, 16
    ins, exp = stream_words(inf.act, config, lanes)
    # The pooled tensors stream_words derives are the ones infer_int reports.
    layout = MaxPool(config, lanes=lanes).result_layout
    offset = layout["argmax"].offset
    assert exp == [v | (a << offset) for v, a in
                   zip(pack_rows(inf.pooled.reshape(-1, lanes), 8),
                       pack_rows(inf.pool_argmax.reshape(-1, lanes), Widths(config).pool_index))]
    result = run_stream_test("maxpool_mnist_l16", lambda: MaxPool(config, lanes=lanes),
                             inputs=ins, expected=exp, stalls=STALL_SWEEP)
    result.assert_ok()
    cycles = check_throughput(result, len(ins))
    print(f"maxpool mnist: {len(ins)} beats in {cycles} cycles (no stalls)")
