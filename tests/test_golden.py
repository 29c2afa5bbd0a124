"""The integer golden model: arithmetic rules, worst-case widths and the softmax approximation."""

import numpy as np
import pytest

from cnnforge.hw.params import ConfigError, NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.reference.golden import SOFTMAX
from cnnforge.sim.reference.quantize import mult_shift


def random_model(config, rng, shift=20):
    w = Widths(config)
    return golden.QuantModel(
        config=config,
        conv_w=rng.integers(-127, 128, (config.filters, config.kernel, config.kernel,
                                        config.in_channels)).astype(np.int8),
        conv_b=rng.integers(-3000, 3000, config.filters).astype(np.int32),
        requant_mult=rng.integers(1 << 10, 1 << 16, config.filters).astype(np.uint16),
        requant_shift=shift,
        dense_w=rng.integers(-127, 128, (config.classes, config.features)).astype(np.int8),
        dense_b=rng.integers(-w.dense_bias_max, w.dense_bias_max, config.classes).astype(np.int32),
        softmax_mult=40000, softmax_shift=30)


# -- requantization ------------------------------------------------------------------------------

def test_requantize_rounds_ties_up():
    shift = 4
    # acc * mult = k * 16 + 8 is exactly half way: round half up (towards +inf).
    assert golden.requantize(np.array([8 + 16 * 3]), 1, shift)[0] == 4
    assert golden.requantize(np.array([7 + 16 * 3]), 1, shift)[0] == 3
    # negative tie: -2.5 -> -2 -> ReLU -> 0, and -0.5 -> 0.
    assert golden.requantize(np.array([-8]), 1, shift)[0] == 0


def test_requantize_saturates_both_ends():
    w = Widths(NetworkConfig())
    big = np.array([2 ** (w.conv_acc - 1) - 1, -2 ** (w.conv_acc - 1)])
    out = golden.requantize(big, (1 << 16) - 1, 8)
    assert out.tolist() == [255, 0]
    assert golden.requantize(np.array([255 << 8, 256 << 8, (255 << 8) + 127]), 1, 8).tolist() == [255, 255, 255]
    assert golden.requantize(np.array([-1, -(1 << 20)]), 1, 8).tolist() == [0, 0]


# -- conv, pool, dense ----------------------------------------------------------------------------

def test_conv_matches_direct_loops():
    config = NetworkConfig(input_size=9, in_channels=2, filters=3, kernel=3, pool=7, classes=2)
    rng = np.random.default_rng(2)
    model = random_model(config, rng)
    img = rng.integers(0, 256, (2, 9, 9, 2), dtype=np.uint8)
    acc = golden.conv_acc(model, img)
    for n in range(2):
        for y in range(7):
            for x in range(7):
                for f in range(3):
                    ref = int(model.conv_b[f]) + sum(
                        int(img[n, y + ky, x + kx, c]) * int(model.conv_w[f, ky, kx, c])
                        for ky in range(3) for kx in range(3) for c in range(2))
                    assert acc[n, y, x, f] == ref


def test_worst_case_fits_declared_widths():
    config = NetworkConfig()
    w = Widths(config)
    model = random_model(config, np.random.default_rng(0))
    model.conv_w[:] = -127
    model.conv_b[:] = -w.conv_bias_max
    acc = golden.conv_acc(model, np.full((1, 28, 28), 255, np.uint8))
    assert acc.min() >= -2 ** (w.conv_acc - 1)
    model.dense_w[:] = -127
    model.dense_b[:] = -w.dense_bias_max
    logits = golden.dense(model, np.full((1, 13, 13, 32), 255, np.uint8))
    assert logits.min() >= -2 ** (w.dense_acc - 1)
    assert w.conv_acc == 21 and w.dense_acc == 30   # the reference network's widths


def test_maxpool_first_maximum_wins():
    act = np.array([[5, 5], [5, 5]], np.uint8).reshape(1, 2, 2, 1)
    pooled, arg = golden.maxpool(act, 2)
    assert pooled[0, 0, 0, 0] == 5 and arg[0, 0, 0, 0] == 0
    act = np.array([[1, 7], [3, 7]], np.uint8).reshape(1, 2, 2, 1)
    pooled, arg = golden.maxpool(act, 2)
    assert pooled[0, 0, 0, 0] == 7 and arg[0, 0, 0, 0] == 1
    act = np.array([[1, 2], [9, 3]], np.uint8).reshape(1, 2, 2, 1)
    assert golden.maxpool(act, 2)[1][0, 0, 0, 0] == 2


def test_argmax_ties_pick_lowest_class():
    config = NetworkConfig(input_size=4, filters=1, kernel=3, pool=2, classes=3)
    model = random_model(config, np.random.default_rng(3))
    model.dense_w[:] = 0
    model.dense_b[:] = [4, 9, 9]
    out = golden.infer_int(model, np.zeros((4, 4), np.uint8))
    assert out.cls[0] == 1


# -- softmax approximation --------------------------------------------------------------------------

SOFTMAX_MAX_ABS_ERROR = 0.0025  # documented in README; measured by this test


def softmax_float(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_softmax_approximation_error_bound():
    rng = np.random.default_rng(7)
    scale = 1.3e-4    # float value of one logit step (mult/2**shift below encode it)
    ratio = scale * np.log2(np.e) * (1 << SOFTMAX.frac_bits)
    mults, shift = mult_shift(ratio, SOFTMAX.mult_bits, 62)
    mult = int(mults[0])
    assert (1 << 15) <= mult < (1 << 16)
    logits = np.concatenate([
        rng.normal(0, 3 / scale, (4000, 10)),          # typical spread
        rng.normal(0, 0.3 / scale, (2000, 10)),        # nearly uniform
        rng.normal(0, 30 / scale, (2000, 10)),         # one class dominates
    ]).astype(np.int64)
    logits[0] = 0                                       # all equal
    logits[1] = [2 ** 29 - 1] + [-2 ** 29] * 9          # extremes of the 30-bit logit
    p = golden.softmax_int(logits, mult, shift) / SOFTMAX.one
    ref = softmax_float(logits * (mult / 2 ** shift) / (np.log2(np.e) * (1 << SOFTMAX.frac_bits)))
    err = np.abs(p - ref).max()
    print(f"softmax approximation: max abs error {err:.5f}")
    assert err <= SOFTMAX_MAX_ABS_ERROR, err
    assert np.all(p >= 0) and np.all(p * SOFTMAX.one <= SOFTMAX.one)
    assert np.allclose(golden.softmax_int(logits[0], mult, shift), SOFTMAX.one // 10, atol=2)
    extreme = golden.softmax_int(logits[1], mult, shift)
    assert SOFTMAX.one - 4 <= extreme[0] <= SOFTMAX.one and extreme[1:].tolist() == [0] * 9


def test_softmax_tables():
    e = golden.SOFTMAX.exp2_table()
    assert e[0] == SOFTMAX.one and np.all(np.diff(e) < 0) and len(e) == 1 << SOFTMAX.frac_bits
    r = golden.SOFTMAX.recip_table()
    assert np.all((r > SOFTMAX.one // 2) & (r <= SOFTMAX.one))


# -- network description ----------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    (dict(kernel=29), "kernel 29 is larger than input_size 28"),
    (dict(filters=0), "filters must be a positive integer, not 0"),
    (dict(pool=4), "pool 4 does not divide the conv output size 26"),
    (dict(classes="ten"), "classes must be an integer, not 'ten'"),
    (dict(classes=1), "classes must be at least 2"),
])
def test_config_validation_names_field_and_value(fields, message):
    with pytest.raises(ConfigError, match=message):
        NetworkConfig(**fields)


def test_config_round_trips_and_rejects_unknown_fields():
    config = NetworkConfig(filters=16, kernel=5, input_size=28, pool=2)
    assert NetworkConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown field 'stride'"):
        NetworkConfig.from_dict({"stride": 2})
    assert NetworkConfig().macs == 248_768
