"""The fixed-point golden trainer (``sim/reference/trainer.py``): exact hand-made steps, gradients against
float references on the same integer forward, LFSR, saturation, determinism, a short run."""

from dataclasses import replace

import numpy as np
import pytest

from cnnforge.hw.params import ConfigError, NetworkConfig, TrainFormat, Widths
from cnnforge.sim.reference import golden, trainer as T
from cnnforge.sim.reference.float_model import loss_and_grads
from helpers import mnist_images, needs_mnist


FMT = TrainFormat()
TINY = NetworkConfig(input_size=4, in_channels=1, filters=1, kernel=3, pool=2, classes=2)


@pytest.fixture(scope="module")
def train_data():
    return mnist_images("train")


@pytest.fixture(scope="module")
def test_data():
    return mnist_images("test")


def tiny_state(conv_w, dense_w, mult=1, shift=2, sm_mult=1, sm_shift=6, fmt=FMT):
    """A 4x4 -> 3x3 conv (1 filter) -> 2x2 pool (1 feature) -> 2 classes network."""
    f = fmt.master_frac
    return T.TrainState(config=TINY, fmt=fmt,
                        conv_m=np.asarray(conv_w, np.int64).reshape(1, 3, 3, 1) << f,
                        conv_b=np.zeros(1, np.int64),
                        dense_m=np.asarray(dense_w, np.int64).reshape(2, 1) << f,
                        dense_b=np.zeros(2, np.int64),
                        requant_mult=np.array([mult], np.uint16), requant_shift=shift,
                        softmax_mult=sm_mult, softmax_shift=sm_shift, lfsr=T.LFSR(fmt.seed, fmt))


def rs(g, s):
    """Round half up of g / 2**s (the reference, in Python integers)."""
    return (int(g) + (1 << (s - 1))) >> s


# ---------------------------------------------------------------------------------------------
# Formats and the LFSR.

def test_format_shifts_and_ranges():
    assert (FMT.dense_w_shift, FMT.dense_b_shift, FMT.conv_w_shift, FMT.conv_b_shift) == (11, 5, 14, 6)
    # The rounded read of the extreme masters is exactly +-127: no clip in the forward path.
    assert (FMT.master_max + 128) >> 8 == 127 and (FMT.master_max + 129) >> 8 == 128
    assert (FMT.master_min + 128) >> 8 == -127 and (FMT.master_min + 127) >> 8 == -128
    assert -(1 << 15) <= FMT.master_min and FMT.master_max < (1 << 15)
    assert FMT.err_acc_bits(NetworkConfig()) == 27
    # lr_shift moves every shift together.
    f7 = replace(FMT, lr_shift=7)
    assert f7.dense_w_shift == 12 and f7.conv_w_shift == 15


@pytest.mark.parametrize("kw, message", [
    ({"rounding": "down"}, "rounding must be 'nearest' or 'stochastic', not 'down'"),
    ({"lr_shift": 1.5}, "lr_shift must be an integer, not 1.5"),
    ({"seed": 0}, "seed must be in 1..2**32-1, not 0"),
    ({"master_bits": 12}, "master_bits - master_frac must be at least 8, not 4"),
    ({"lr_shift": 0}, "dense_b_shift is negative"),
])
def test_format_validation(kw, message):
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        TrainFormat(**kw)


def test_lfsr_leap_matches_serial_steps():
    lfsr = T.LFSR(FMT.seed)
    draws = lfsr.draw(40)
    s, expect = FMT.seed, []
    for _ in range(40):
        for _ in range(32):
            s = (s >> 1) ^ (FMT.lfsr_taps if s & 1 else 0)
        expect.append(s)
    assert [int(d) for d in draws] == expect
    assert lfsr.state == expect[-1]
    # Drawing in pieces continues the same sequence.
    a = T.LFSR(FMT.seed)
    assert np.array_equal(np.concatenate([a.draw(13), a.draw(27)]), draws)


def test_lfsr_bits_look_uniform():
    d = T.LFSR(12345).draw(1 << 14)
    bits = (d[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.02)
    assert len(np.unique(d)) == len(d)


# ---------------------------------------------------------------------------------------------
# Forward.

def test_random_init_is_documented_scale_and_deterministic():
    a, b = T.init_random(), T.init_random()
    assert T.weights_sha256(a) == T.weights_sha256(b)
    assert T.weights_sha256(T.init_random(fmt=replace(FMT, seed=7))) != T.weights_sha256(a)
    assert a.conv_m.min() >= -(1 << 13) and a.conv_m.max() < (1 << 13)
    assert a.dense_m.min() >= -(1 << 12) and a.dense_m.max() < (1 << 12)
    # Uniform: the spread uses the whole range, mean near zero.
    assert a.dense_m.min() < -4000 and a.dense_m.max() > 4000 and abs(a.dense_m.mean()) < 40
    assert not a.conv_b.any() and not a.dense_b.any()
    # Constants from the fixed scales: requant 2**-8 / 255 / 2**-7 = 1/510.
    assert np.all(a.requant_mult == a.requant_mult[0])
    assert abs(a.requant_mult[0] / 2 ** a.requant_shift - 1 / 510) < 1e-6


@needs_mnist
def test_forward_matches_golden_infer_int(train_data):
    x, _ = train_data
    state = T.init_random()
    T.train(state, *train_data, np.arange(50))      # non-trivial weights and biases
    inf = golden.infer_int(state.model(), x[100:108])
    for i in range(8):
        step = T.forward(state, x[100 + i])
        assert np.array_equal(step.pooled, inf.pooled[i])
        assert np.array_equal(step.pool_argmax, inf.pool_argmax[i])
        assert np.array_equal(step.logits, inf.logits[i])
        assert np.array_equal(step.probs, inf.probs[i])


# ---------------------------------------------------------------------------------------------
# One step by hand.

def single_pixel_step(label=1, pixel=100, dense_w=(3, -2), fmt=FMT):
    # Weights decrease in raster order, so with one pixel at (1, 1) the conv outputs are
    # (0,0): w[1,1]=5, (0,1): w[1,0]=6, (1,0): w[0,1]=8, (1,1): w[0,0]=9 times the pixel:
    # the max is the last window position (argmax 3), where the pixel sits at tap (0, 0).
    conv_w = [9, 8, 7, 6, 5, 4, 3, 2, 1]
    state = tiny_state(conv_w, dense_w, fmt=fmt)
    image = np.zeros((4, 4), np.uint8)
    image[1, 1] = pixel
    before = state.copy()
    step = T.train_step(state, image, label)
    return before, state, step


def test_single_pixel_step_by_hand():
    before, state, step = single_pixel_step()
    act = (9 * 100 * 1 + 2) >> 2                                   # 225
    assert step.pool_argmax.ravel().tolist() == [3]
    assert step.pooled.ravel().tolist() == [act]
    assert step.logits.tolist() == [3 * act, -2 * act]
    p = step.probs.tolist()
    assert p == golden.softmax_int(step.logits, 1, 6).tolist()
    d = [p[0], p[1] - 32768]
    assert step.delta.tolist() == d
    assert d[0] > 16384 and d[1] < -16384                           # wrong and confident
    # Dense: g = delta * pooled, update by round-half-up shifts.
    assert step.g_dense_w.ravel().tolist() == [d[0] * act, d[1] * act]
    assert state.dense_m.ravel().tolist() == [(3 << 8) - rs(d[0] * act, 11),
                                              (-2 << 8) - rs(d[1] * act, 11)]
    assert state.dense_b.tolist() == [-rs(d[0], 5), -rs(d[1], 5)]
    # Error: through the dense weights the forward used, >> err_shift, rounded.
    e = rs(3 * d[0] - 2 * d[1], 8)
    assert step.err.ravel().tolist() == [e] and e > 0
    # Conv: only tap (0, 0) of the winning window sees the pixel.
    g = np.zeros(9, np.int64)
    g[0] = e * 100
    assert step.g_conv_w.ravel().tolist() == g.tolist()
    expect = (np.array([9, 8, 7, 6, 5, 4, 3, 2, 1]) << 8)
    expect[0] -= rs(e * 100, 14)
    assert state.conv_m.ravel().tolist() == expect.tolist()
    assert state.conv_b.tolist() == [-rs(e, 6)]
    assert state.steps == 1
    # The step lowered the wrong logit: the new int8 weights read back as expected.
    assert state.model().dense_w.ravel().tolist() == [
        ((3 << 8) - rs(d[0] * act, 11) + 128) >> 8, ((-2 << 8) - rs(d[1] * act, 11) + 128) >> 8]


def test_right_label_moves_the_other_way():
    _, wrong, _ = single_pixel_step(label=1)
    _, right, _ = single_pixel_step(label=0)
    base = np.array([3, -2]) << 8
    assert np.all(np.sign(wrong.dense_m.ravel() - base) == [-1, 1])
    assert np.all(np.sign(right.dense_m.ravel() - base) == [1, -1])
    assert wrong.conv_m.ravel()[0] < 9 << 8 < right.conv_m.ravel()[0]


def test_relu_saturation_masks_the_error():
    # 255 * 9 >> 2 = 574 -> the requantizer clips to 255, whose slope is zero: no conv update.
    before, state, step = single_pixel_step(pixel=255)
    assert step.pooled.ravel().tolist() == [255]
    assert step.err.ravel().tolist() == [0]
    assert not step.g_conv_w.any() and np.array_equal(state.conv_m, before.conv_m)
    assert np.array_equal(state.conv_b, before.conv_b)
    assert not np.array_equal(state.dense_m, before.dense_m)       # the dense layer still learns


def test_dead_relu_gives_no_gradient():
    state = tiny_state([-1] * 9, [3, -2])
    image = np.zeros((4, 4), np.uint8)
    image[1, 1] = 100
    step = T.train_step(state, image, 1)
    assert step.pooled.ravel().tolist() == [0]
    assert not step.g_dense_w.any() and not step.err.any() and not step.g_conv_w.any()
    assert state.dense_b.tolist() != [0, 0]                         # the biases still learn


# ---------------------------------------------------------------------------------------------
# Saturation at the extremes.

def test_masters_saturate_and_read_back_within_int8():
    state = tiny_state([127] * 9, [127, -127])
    state.conv_m[:] = FMT.master_max
    state.dense_m[:] = [[FMT.master_max], [FMT.master_min]]
    step = T.Step(image=None, cols=None, pooled=None, pool_argmax=None, logits=None, probs=None,
                  dense_w=None)
    big = 1 << 30
    step.g_dense_w = np.array([[-big], [big]])
    step.g_dense_b = np.array([-big, big])
    step.g_conv_w = np.full((1, 9), -big)
    step.g_conv_b = np.array([-big])
    T.apply_update(state, step)
    w = Widths(TINY)
    assert state.dense_m.ravel().tolist() == [FMT.master_max, FMT.master_min]
    assert np.all(state.conv_m == FMT.master_max)
    assert state.dense_b.tolist() == [w.dense_bias_max, -w.dense_bias_max]
    assert state.conv_b.tolist() == [w.conv_bias_max]
    m = state.model()
    assert m.dense_w.ravel().tolist() == [127, -127] and np.all(m.conv_w == 127)


def test_delta_and_error_saturate():
    fmt = replace(FMT, err_bits=8)
    state = tiny_state([9, 8, 7, 6, 5, 4, 3, 2, 1], [127, -127], sm_mult=1 << 10, fmt=fmt)
    image = np.zeros((4, 4), np.uint8)
    image[1, 1] = 100
    step = T.backward(state, T.forward(state, image), 1)
    # The softmax is saturated: its largest output is 32766 (the reciprocal's rounding), so
    # delta = p - one_hot always fits int16 ...
    assert step.probs.tolist() == [32766, 0]
    assert step.delta.tolist() == [32766, -32768]
    # ... and a p of exactly 1.0 on a wrong class would clip to 32767.
    step.probs = np.array([32768, 0])
    assert T.backward(state, step, 1).delta.tolist() == [32767, -32768]
    # e = (32767 + 32768) * 127 >> 8 = 32512 saturates to int8.
    assert step.err.ravel().tolist() == [127]


# ---------------------------------------------------------------------------------------------
# Gradients against float references.

@needs_mnist
def test_gradients_match_float_on_the_same_forward(train_data):
    x, y = train_data
    state = T.init_random()
    T.train(state, x, y, np.arange(200))
    for i in range(200, 206):
        step = T.backward(state, T.forward(state, x[i]), int(y[i]))
        # Exact: dense gradients are delta x pooled, delta = p - one_hot in Q15.
        onehot = np.eye(10, dtype=np.int64)[y[i]] << 15
        assert np.array_equal(step.delta, step.probs - onehot)
        assert np.array_equal(step.g_dense_w, np.outer(step.delta, step.pooled.ravel()))
        # Conv: float chain rule on the same integer forward, then scaled to the integer units.
        d = step.probs / 32768.0 - np.eye(10)[y[i]]
        e = (d @ step.dense_w.astype(float)).reshape(step.pooled.shape)
        e *= (step.pooled > 0) & (step.pooled < 255)
        gf = np.zeros((32, 9))
        for py in range(13):
            for px in range(13):
                for c in range(32):
                    a = step.pool_argmax[py, px, c]
                    win = step.image[2 * py + a // 2:2 * py + a // 2 + 3,
                                     2 * px + a % 2:2 * px + a % 2 + 3, 0]
                    gf[c] += e[py, px, c] * win.ravel()
        gi = step.g_conv_w * 2.0 ** FMT.err_shift / 32768
        assert np.corrcoef(gi.ravel(), gf.ravel())[0, 1] > 0.9999
        assert np.abs(gi - gf).max() <= 0.01 * np.abs(gf).max()
        assert np.allclose(step.g_conv_b * 2.0 ** FMT.err_shift / 32768, e.sum(axis=(0, 1)),
                           atol=169 * 2.0 ** FMT.err_shift / 32768)


@needs_mnist
def test_updates_equal_float_sgd_at_the_same_learning_rate(train_data):
    """One step of the integer trainer moves the weights as float SGD with lr 2**-lr_shift
    moves the float twin (same weights): the per-tensor shifts are right."""
    x, y = train_data
    state = T.init_random()
    T.train(state, x, y, np.arange(100))
    lr = 2.0 ** -FMT.lr_shift
    for i in range(100, 104):
        before = state.copy()
        params = T.float_twin(state)
        _, g = loss_and_grads(params, state.config, x[i:i + 1], y[i:i + 1])
        T.train_step(state, x[i], y[i])
        dd = (state.dense_m - before.dense_m) / 256 * 2.0 ** FMT.dense_scale_log2
        dc = (state.conv_m - before.conv_m) / 256 * 2.0 ** FMT.conv_scale_log2
        for got, want in ((dd, -lr * g.dense_w), (dc, -lr * g.conv_w)):
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98
            assert 0.9 < np.linalg.norm(got) / np.linalg.norm(want) < 1.1


# ---------------------------------------------------------------------------------------------
# Rounding.

def test_stochastic_rounding_is_unbiased_and_seeded():
    fmt = replace(FMT, rounding="stochastic")
    state = tiny_state([0] * 9, [0, 0], fmt=fmt)
    g = np.full(1 << 14, 3 * (1 << 10) // 8)          # 0.375 of one step of 2**10
    d = -T._update(np.zeros_like(g), g, 10, FMT.master_min, FMT.master_max, state)
    assert set(np.unique(d)) == {0, 1}
    assert abs(d.mean() - 0.375) < 0.02
    state2 = tiny_state([0] * 9, [0, 0], fmt=fmt)
    assert np.array_equal(T._update(np.zeros_like(g), g, 10, -99, 99, state2), -d)
    # Round to nearest loses it entirely.
    near = tiny_state([0] * 9, [0, 0])
    assert not T._update(np.zeros_like(g), g, 10, -99, 99, near).any()


# ---------------------------------------------------------------------------------------------
# Determinism and a short run.

@needs_mnist
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_same_seed_same_weights(train_data, rounding):
    x, y = train_data
    fmt = replace(FMT, rounding=rounding)
    hashes = []
    for _ in range(2):
        state = T.init_random(fmt=fmt)
        T.train(state, x, y, np.arange(300, 400))
        hashes.append(T.weights_sha256(state))
    assert hashes[0] == hashes[1]
    other = T.init_random(fmt=replace(fmt, seed=fmt.seed + 1))
    T.train(other, x, y, np.arange(300, 400))
    assert T.weights_sha256(other) != hashes[0]


@needs_mnist
def test_short_run_from_random_init_learns(train_data, test_data):
    x, y = train_data
    tx, ty = test_data
    state = T.init_random()
    before = float(np.mean(golden.predict_int(state.model(), tx[:1000]) == ty[:1000]))
    # Measured: 77.8 % after 1,000 images, 79.6 % after 2,000, 88.7 % after 4,000.
    T.train(state, x, y, T.data_order(len(x), 1)[:4000])
    acc = float(np.mean(golden.predict_int(state.model(), tx[:1000]) == ty[:1000]))
    assert before < 0.3
    assert acc > 0.85, acc
