"""Layer-list networks: the description and its validation, the integer oracle against a
direct loop implementation, the float model's gradients, input folding and quantization."""

import re

import numpy as np
import pytest

from cnnforge.hw.params import (PRESETS, ConfigError, Conv2D, Dense, Flatten, MaxPool, Network,
                                NetworkConfig, preset)
from cnnforge.sim.reference import float_model, float_network, golden, quantize
from cnnforge.sim.reference.golden import QuantLayer, QuantNetwork


def test_presets_round_trip_and_the_seed_is_the_reference_network():
    for name, net in PRESETS.items():
        assert Network.from_json(net.to_json()) == net, name
    assert preset("mnist-seed").seed_config() == NetworkConfig()
    assert NetworkConfig().network() == preset("mnist-seed")
    assert [preset("lenet").output_shape(i) for i in range(7)] == [
        (28, 28, 16), (14, 14, 16), (10, 10, 32), (5, 5, 32), (800,), (64,), (10,)]
    with pytest.raises(ConfigError, match="the accelerator builds Conv2D .* so far; its layers "
                                          "are conv2d -> maxpool -> conv2d"):
        preset("lenet").seed_config()
    with pytest.raises(ConfigError, match=r"unknown network 'vgg' \(one of mnist-seed, lenet"):
        preset("vgg")


def test_same_padding_follows_keras():
    # TensorFlow's rule: output ceil(n / stride), the odd padding row at the bottom.
    assert Conv2D(4, 3, stride=2, padding="same").pads(12, 12) == (0, 0, 1, 1)
    assert Conv2D(4, 3, stride=1, padding="same").pads(12, 7) == (1, 1, 1, 1)
    assert Conv2D(4, 4, stride=1, padding="same").pads(8, 8) == (1, 1, 2, 2)
    assert Conv2D(4, 5, stride=2, padding="same").pads(28, 28) == (1, 1, 2, 2)
    net = Network((12, 12, 1), (Conv2D(2, 3, stride=2, padding="same"), Flatten(), Dense(2)))
    assert net.output_shape(0) == (6, 6, 2)


def layers_of(d):
    return {"input": [28, 28, 1], "layers": d}


@pytest.mark.parametrize("doc, message", [
    (layers_of([{"type": "conv2d", "filters": 4, "kernel": 29}, {"type": "flatten"},
                {"type": "dense", "units": 2}]),
     "layer 0 (conv2d): kernel 29 is larger than its 28x28 (padded) input"),
    (layers_of([{"type": "conv2d", "filters": 4, "kernel": 3, "stride": 3}]),
     "layer 0 (conv2d): stride must be 1 or 2, not 3"),
    (layers_of([{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "full"}]),
     "layer 0 (conv2d): padding must be 'valid', 'same' or [top, left, bottom, right], "
     "not 'full'"),
    (layers_of([{"type": "conv2d", "filters": 4, "kernel": 3, "padding": [0, 0, 3, 0]}]),
     "layer 0 (conv2d): padding bottom 3 is not smaller than the kernel 3"),
    (layers_of([{"type": "maxpool", "size": 30}]),
     "layer 0 (maxpool): window 30 is larger than its 28x28x1 input"),
    (layers_of([{"type": "maxpool", "size": 2, "stride": 3}]),
     "layer 0 (maxpool): stride 3 is larger than the window 2"),
    (layers_of([{"type": "dense", "units": 10}]),
     "layer 0 (dense): needs a flat input, not a 28x28x1 feature map (put a flatten before it)"),
    (layers_of([{"type": "flatten"}, {"type": "conv2d", "filters": 4, "kernel": 3}]),
     "layer 1 (conv2d): needs a feature map, not the 784 flat features of an earlier flatten"),
    (layers_of([{"type": "flatten"}, {"type": "dense", "units": 10},
                {"type": "dense", "units": 10}]),
     "layer 1 (dense): a hidden dense layer needs relu (activations are uint8 after ReLU)"),
    (layers_of([{"type": "flatten"}, {"type": "dense", "units": 10, "relu": True}]),
     "layer 1 (dense): the last layer gives the logits: relu must be false"),
    (layers_of([{"type": "flatten"}, {"type": "dense", "units": 1}]),
     "layer 1 (dense): units must be at least 2 classes, not 1"),
    (layers_of([{"type": "conv2d", "filters": 4, "kernel": 3}]),
     "layer 0 (conv2d): the last layer must be dense"),
    (layers_of([{"type": "softmax"}]), "layer 0: type must be one of conv2d, maxpool, flatten, "
                                       "dense, not 'softmax'"),
    (layers_of([{"type": "dense", "units": 2, "activation": "relu"}]),
     "layer 0 (dense): unknown field 'activation'"),
    (layers_of([{"type": "conv2d", "filters": "8", "kernel": 3}]),
     "layer 0 (conv2d): filters must be an integer, not '8'"),
    (layers_of([]), "network: no layers"),
    ({"input": [28, 28], "layers": []}, "input must be [height, width, channels]"),
    ({"input": [28, 28, 1]}, "network: no 'layers'"),
    ({"input": [1 << 20, 1 << 20, 1], "layers": [{"type": "flatten"},
                                                  {"type": "dense", "units": 2}]},
     "layer 0 (flatten): 1,099,511,627,776 output values per image, more than the 67,108,864 "
     "a tensor of cnnforge's models may hold"),
])
def test_impossible_networks_name_layer_field_and_value(doc, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as exc:
        Network.from_dict(doc)
    assert "\n" not in str(exc.value)


# ---- the integer oracle against loops ------------------------------------------------------------

def loop_conv(x, w, b, stride, pads):
    """Direct convolution, one output at a time (the definition)."""
    n, h, wd, c = x.shape
    top, left, bottom, right = pads
    xp = np.zeros((n, h + top + bottom, wd + left + right, c), np.int64)
    xp[:, top:top + h, left:left + wd] = x
    f, k = w.shape[0], w.shape[1]
    ho, wo = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    out = np.zeros((n, ho, wo, f), np.int64)
    for i in range(n):
        for y in range(ho):
            for xx in range(wo):
                patch = xp[i, y * stride:y * stride + k, xx * stride:xx * stride + k]
                for o in range(f):
                    out[i, y, xx, o] = int((patch * w[o].astype(np.int64)).sum()) + int(b[o])
    return out


def loop_pool(x, size, stride):
    n, h, w, c = x.shape
    ho, wo = (h - size) // stride + 1, (w - size) // stride + 1
    out = np.zeros((n, ho, wo, c), np.uint8)
    arg = np.zeros((n, ho, wo, c), np.uint8)
    for i, y, xx, ch in np.ndindex(n, ho, wo, c):
        best, pos = -1, 0
        for dy in range(size):
            for dx in range(size):
                v = x[i, y * stride + dy, xx * stride + dx, ch]
                if v > best:                     # strictly greater: the first maximum wins
                    best, pos = v, dy * size + dx
        out[i, y, xx, ch], arg[i, y, xx, ch] = best, pos
    return out, arg


def random_qnet(net, rng):
    layers = [None] * len(net.layers)
    for index in net.param_layers():
        shape = net.weight_shape(index)
        w = rng.integers(-127, 128, shape).astype(np.int8)
        bound = net.layer_widths(index).bias_max // 64
        b = rng.integers(-bound, bound + 1, shape[0]).astype(np.int32)
        if index == len(net.layers) - 1:
            layers[index] = QuantLayer(w, b)
        else:
            mult = rng.integers(1, 1 << 16, shape[0]).astype(np.uint16)
            layers[index] = QuantLayer(w, b, mult, int(rng.integers(12, 24)))
    return QuantNetwork(net, layers, softmax_mult=20000, softmax_shift=20)


ODD_NETWORKS = [
    Network((9, 11, 2), (Conv2D(3, 3, stride=2, padding="same"), MaxPool(2, 1),
                         Conv2D(4, 2, padding=(1, 0, 0, 1)), MaxPool(3, 2), Flatten(),
                         Dense(5, relu=True), Dense(3))),
    Network((7, 7, 3), (Conv2D(2, 3, padding="same"), Conv2D(3, 3, stride=2), Flatten(),
                        Dense(4))),
    Network((6, 6, 1), (Flatten(), Dense(8, relu=True), Dense(6, relu=True), Dense(2))),
]


@pytest.mark.parametrize("net", ODD_NETWORKS, ids=["stride-pad-pool", "rgb", "mlp"])
def test_integer_oracle_matches_the_definition(net):
    rng = np.random.default_rng(7)
    qnet = random_qnet(net, rng)
    images = rng.integers(0, 256, (3,) + net.input).astype(np.uint8)
    images[0] = 255                                        # saturating input
    r = golden.infer_int(qnet, images)
    x = images
    for index, layer in enumerate(net.layers):
        p = qnet.layers[index]
        if isinstance(layer, Conv2D):
            acc = loop_conv(x, p.w, p.b, layer.stride, layer.pads(*x.shape[1:3]))
            assert np.array_equal(r.layers[index].acc, acc)
            x = np.clip((acc * p.mult.astype(np.int64) + (1 << p.shift - 1)) >> p.shift, 0,
                        255).astype(np.uint8)
        elif isinstance(layer, MaxPool):
            x, arg = loop_pool(x, layer.size, layer.stride)
            assert np.array_equal(r.layers[index].argmax, arg)
        elif isinstance(layer, Flatten):
            x = x.reshape(len(x), -1)
        else:
            acc = x.astype(np.int64) @ p.w.T.astype(np.int64) + p.b
            assert np.array_equal(r.layers[index].acc, acc)
            x = acc if p.mult is None else np.clip(
                (acc * p.mult.astype(np.int64) + (1 << p.shift - 1)) >> p.shift, 0, 255)
        assert np.array_equal(r.layers[index].out, x), index
        assert r.layers[index].out.shape[1:] == net.output_shape(index)
    assert np.array_equal(r.logits, x)
    assert np.array_equal(r.probs, golden.softmax_int(x, 20000, 20))


def test_the_seed_through_the_layer_list_is_the_seed():
    from helpers import reference_model
    model = reference_model()
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    seed = golden.infer_int(model, images)
    layers = golden.infer_int(model.to_network(), images)
    assert np.array_equal(seed.logits, layers.logits)
    assert np.array_equal(seed.pooled, layers.layers[1].out)
    assert model.to_network().seed_model().config == model.config


# ---- the float model ----------------------------------------------------------------------------

@pytest.mark.parametrize("net", ODD_NETWORKS, ids=["stride-pad-pool", "rgb", "mlp"])
def test_float_gradients_match_finite_differences(net):
    rng = np.random.default_rng(0)
    p = float_network.init_network(net, rng).astype(np.float64)
    for b in p.biases:
        if b is not None:
            b += rng.normal(0, 0.1, b.shape)
    x = rng.integers(0, 256, (4,) + net.input).astype(np.uint8)
    y = rng.integers(0, net.classes, 4)

    def loss():
        logits = float_network.forward(p, x, dtype=np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        return -np.mean(logits[np.arange(4), y] - np.log(np.exp(logits).sum(axis=1)))

    _, grads = float_network.loss_and_grads(p, x, y)
    checked = 0
    for a, g in zip(p.arrays(), grads.arrays()):
        assert g.shape == a.shape
        for _ in range(6):
            idx = tuple(int(rng.integers(0, s)) for s in a.shape)
            old = a[idx]
            a[idx] = old + 1e-5
            up = loss()
            a[idx] = old - 1e-5
            down = loss()
            a[idx] = old
            numeric = (up - down) / 2e-5
            assert abs(numeric - g[idx]) <= 1e-3 * max(1e-3, abs(numeric)) + 1e-6, idx
            checked += 1
    assert checked >= 24


def test_float_seed_network_agrees_with_the_seed_float_model():
    config = NetworkConfig(input_size=10, filters=4, kernel=3, pool=2, classes=3)
    params = float_model.init_params(config, np.random.default_rng(3))
    fnet = float_network.FloatNetwork(config.network(), [params.conv_w, None, None, params.dense_w],
                                      [params.conv_b, None, None, params.dense_b])
    images = np.random.default_rng(4).integers(0, 256, (5, 10, 10)).astype(np.uint8)
    np.testing.assert_allclose(float_network.forward(fnet, images),
                               float_model.forward(params, config, images), rtol=1e-5, atol=1e-6)


def test_input_mapping_folds_exactly_into_the_first_layer():
    net = Network((6, 6, 2), (Conv2D(3, 3), Flatten(), Dense(2)))
    p = float_network.init_network(net, np.random.default_rng(5)).astype(np.float64)
    p.input_scale = np.array([0.02, 0.5])
    p.input_offset = np.array([-0.4, 1.5])
    _, w, b = quantize.fold_input(p)
    folded = float_network.FloatNetwork(net, [w, None, p.weights[2]], [b, None, p.biases[2]],
                                        input_scale=np.ones(2), input_offset=np.zeros(2))
    images = np.random.default_rng(6).integers(0, 256, (3, 6, 6, 2)).astype(np.uint8)
    np.testing.assert_allclose(float_network.forward(folded, images, dtype=np.float64),
                               float_network.forward(p, images, dtype=np.float64), rtol=1e-10)
    # A zero pad of an offset input is not a pad of pixel 0: refused, with the reason.
    same = Network((6, 6, 2), (Conv2D(3, 3, padding="same"), Flatten(), Dense(2)))
    q = float_network.init_network(same, np.random.default_rng(5))
    q.input_offset = np.array([-0.4, 0.0])
    with pytest.raises(ConfigError, match="layer 0 \\(conv2d\\): its zero padding of the offset "
                                          "input"):
        quantize.fold_input(q)


def test_quantized_network_follows_the_float_one():
    """Integer logits times their scale track the float logits of a random network."""
    net = ODD_NETWORKS[0]
    rng = np.random.default_rng(8)
    p = float_network.init_network(net, rng)
    for b in p.biases:
        if b is not None:
            b += rng.normal(0, 0.05, b.shape).astype(np.float32)
    images = rng.integers(0, 256, (200,) + net.input).astype(np.uint8)
    qnet, scales, pct, acc = quantize.calibrate_network(p, images)
    assert acc is None and pct == 99.99 and set(scales) == {0, 2, 5}
    f = float_network.forward(p, images, dtype=np.float64)
    q = golden.infer_int(qnet, images).logits.astype(np.float64)
    corr = np.corrcoef(f.reshape(-1), q.reshape(-1))[0, 1]
    assert corr > 0.99
    assert np.mean(f.argmax(1) == q.argmax(1)) > 0.85
