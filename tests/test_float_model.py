"""The float reference network's backward pass against finite differences."""

import numpy as np

from cnnforge.hw.params import NetworkConfig
from cnnforge.sim.reference import float_model


def test_gradients_match_finite_differences():
    config = NetworkConfig(input_size=8, filters=3, kernel=3, pool=2, classes=4)
    rng = np.random.default_rng(5)
    params = float_model.init_params(config, rng)
    params = float_model.FloatParams(*(a.astype(np.float64) for a in params.arrays()))
    params.conv_b += 0.05   # keep most ReLUs open so the check sees the conv gradient
    images = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 4, 6)
    _, grads = float_model.loss_and_grads(params, config, images, labels)
    eps = 1e-6
    for p, g in zip(params.arrays(), grads.arrays()):
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in rng.choice(flat.size, size=min(8, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up, _ = float_model.loss_and_grads(params, config, images, labels)
            flat[i] = old - eps
            down, _ = float_model.loss_and_grads(params, config, images, labels)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - gflat[i]) <= 1e-5 + 1e-3 * abs(numeric), (p.shape, i, numeric, gflat[i])


def test_adam_reduces_loss():
    config = NetworkConfig(input_size=8, filters=4, kernel=3, pool=2, classes=3)
    rng = np.random.default_rng(1)
    params = float_model.init_params(config, rng)
    images = rng.integers(0, 256, (32, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 32)
    opt = float_model.Adam(params, lr=1e-2)
    first, _ = float_model.loss_and_grads(params, config, images, labels)
    for _ in range(60):
        loss, grads = float_model.loss_and_grads(params, config, images, labels)
        opt.step(params, grads)
    assert loss < 0.5 * first
