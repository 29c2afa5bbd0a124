# amaranth: UnusedElaboratable=no
"""The accelerator for layer-list networks (hw/network.py): geometry, parallelism, the
reshaping blocks and the strided/channel-parallel conv engine alone, and whole networks in RTL
against the layer-list golden model, every result word, with random stalls."""

import numpy as np
import pytest

from cnnforge.hw.conv import ConvEngine
from cnnforge.hw.folded import FoldedMapping
from cnnforge.hw.model import QuantLayer, QuantNetwork
from cnnforge.hw.network import (ConvStage, DenseStage, LayerParallelism, NetworkAccelerator,
                                 network_writes, preset_parallelism, stages, weight_memories)
from cnnforge.hw.params import ConfigError, Conv2D, Dense, Flatten, MaxPool, Network, StageConfig
from cnnforge.hw.reshape import Border, Gather
from cnnforge.hw.util import pack_fields
from cnnforge.sim.reference import golden, model_file
from cnnforge.sim.verify.networks import random_images, random_qnet
from cnnforge.sim.verify.rtl_runner import run_stream_test
from cnnforge.sim.verify.system import simulate_chunked, simulate_network

from helpers import case, mnist_images

STALLS = ((0.0, 0.0), (0.3, 0.4))

#: Generated networks the RTL must compute bit for bit: stride 2, 'same' padding (odd and even
#: splits), 2- and 3-channel inputs, hidden dense layers, a crop before the max-pool, a conv
#: after a conv.
NETWORKS = {
    "stride2-same-rgb": Network((12, 12, 3), (Conv2D(4, 3, 2, "same"), Conv2D(6, 3, 1, "same"),
                                              MaxPool(2), Flatten(), Dense(8, True), Dense(5))),
    "two-channel-crop": Network((11, 11, 2), (Conv2D(4, 2), MaxPool(2), Conv2D(8, 3, 1, "same"),
                                              Flatten(), Dense(3))),
    "valid-stride2-hidden": Network((13, 13, 1), (Conv2D(8, 3, 2), MaxPool(2), Flatten(),
                                                  Dense(12, True), Dense(6, True), Dense(4))),
    "explicit-pads": Network((9, 9, 2), (Conv2D(6, 3, 1, (1, 1, 1, 1)), Conv2D(4, 3, 2, "valid"),
                                         Flatten(), Dense(2))),
}

PLANS = {
    "stride2-same-rgb": {0: (2, 3), 1: 3, 4: 6, 5: 2},
    "two-channel-crop": {0: (4, 2), 2: (2, 2), 4: 2},
    "valid-stride2-hidden": {0: 2, 3: 8, 4: 3, 5: 2},
    "explicit-pads": {0: (3, 1), 1: (4, 2), 3: 4},
}


# -- geometry and parallelism ---------------------------------------------------------------------

def test_stages_of_lenet_like_network():
    net = Network((28, 28, 1), (Conv2D(16, 5, 1, "same"), MaxPool(2), Conv2D(32, 5), MaxPool(2),
                                Flatten(), Dense(64, True), Dense(10)))
    s = stages(net)
    assert [type(x) for x in s] == [ConvStage, ConvStage, DenseStage, DenseStage]
    assert s[0].border == (2, 2, 2, 2) and s[0].conv.input_size == 32
    assert s[0].pool == StageConfig(input_size=28, filters=16, pool=2)
    assert s[1].conv == StageConfig(input_size=14, in_channels=16, filters=32, kernel=5)
    assert s[2].dense.features == 800 and s[2].dense.classes == 64
    assert s[2].requant.taps == 800 and s[3].requant is None


def test_stride_and_crop_geometry():
    # 13 -> conv 3 stride 2 valid: 6 outputs from the first 13 pixels; pool 2 on 6: 3.
    s = stages(NETWORKS["valid-stride2-hidden"])[0]
    assert s.border == (0, 0, 0, 0) and s.conv.conv_size == 6 and s.pool.pool_size == 3
    # 11 -> conv 2 valid: 10; same on 12 stride 2: 6 outputs, padding 0 top, 1 bottom.
    s = stages(Network((12, 12, 1), (Conv2D(2, 3, 2, "same"), Flatten(), Dense(2))))[0]
    assert s.border == (0, 0, 1, 1) and s.conv.input_size == 13 and s.conv.conv_size == 6
    # 10 -> conv 2 stride 2 valid: 5 windows reach pixel 9; 11 -> 5 windows, the last pixel cut.
    s = stages(Network((11, 11, 1), (Conv2D(2, 2, 2), Flatten(), Dense(2))))[0]
    assert s.border == (0, 0, -1, -1) and s.conv.input_size == 10
    # A pool on an odd map drops the last row and column.
    s = stages(NETWORKS["two-channel-crop"])[0]
    assert s.conv.conv_size == 10 and s.pool_border == (0, 0, 0, 0)
    s = stages(Network((12, 12, 1), (Conv2D(2, 2), MaxPool(2), Flatten(), Dense(2))))[0]
    assert s.pool_border == (0, 0, -1, -1) and s.pool.input_size == 10


@pytest.mark.parametrize("layers, message", [
    ((Conv2D(2, 3), MaxPool(3, 2), Flatten(), Dense(2)), r"layer 1 \(maxpool\).*stride = size"),
    ((MaxPool(2), Conv2D(2, 3), Flatten(), Dense(2)), r"layer 0 \(maxpool\).*after a convolution"),
])
def test_stages_refuse_what_the_rtl_does_not_build(layers, message):
    with pytest.raises(ConfigError, match=message):
        stages(Network((12, 12, 1), layers))
    with pytest.raises(ConfigError, match=r"layer 0 \(conv2d\).*square feature maps, not 12x10"):
        stages(Network((12, 10, 1), (Conv2D(2, 3), Flatten(), Dense(2))))


@pytest.mark.parametrize("lanes, message", [
    ({0: 3, 1: 3, 4: 6, 5: 2}, r"layer 0 \(conv2d\): lanes must divide the filters \(4\), not 3"),
    ({0: (2, 2), 1: 3, 4: 6, 5: 2}, r"layer 0 \(conv2d\): channels must divide the input "
                                    r"channels \(3\), not 2"),
    ({0: 2, 1: 3, 4: 5, 5: 2}, r"layer 4 \(dense\): multipliers must divide the fan-in \(54\)"),
    ({0: 2, 1: 3, 4: 6}, r"layer 5 \(dense\): no count given"),
    ({0: 2, 1: 3, 2: 1, 4: 6, 5: 2}, r"layer 2 has no multipliers to set"),
    ({0: 2, 1: 0, 4: 6, 5: 2}, r"layer 1 \(conv2d\): lanes must be at least 1, not 0"),
    ({0: 2, 1: 3, 4: 2, 5: 2}, r"layer 4 \(dense\): multipliers \(2\) and the 3 activations"),
])
def test_parallelism_refusals(lanes, message):
    with pytest.raises(ConfigError, match=message):
        LayerParallelism(NETWORKS["stride2-same-rgb"], lanes)


def test_balanced_parallelism_spends_the_budget_on_the_slowest_layer():
    net = Network((28, 28, 1), (Conv2D(16, 5, 1, "same"), MaxPool(2), Conv2D(32, 5), MaxPool(2),
                                Flatten(), Dense(64, True), Dense(10)))
    previous = None
    for budget in (4, 16, 48, 128, 256):
        par = LayerParallelism.balanced(net, budget)
        assert par.multipliers <= budget
        cycles = par.cycles_per_image
        if previous is not None:
            assert cycles <= previous
        previous = cycles
        # No layer has more multipliers than it needs to stay under the slowest one.
        for stage in par.stages:
            assert par.stage_cycles()[stage.index] <= cycles
    assert LayerParallelism.balanced(net, 128).cycles_per_image <= 20_003
    # The multiplier bound: MACs over multipliers, within 1.5x at every budget here.
    for budget in (16, 48, 128):
        par = LayerParallelism.balanced(net, budget)
        assert par.cycles_per_image <= 1.5 * net.total_macs / par.multipliers


def test_weight_memory_depth_bound():
    """With ``max_weight_words`` no weight memory is deeper (the deep pipeline's one-block
    reads); ``preset_parallelism`` applies it to the deep ``ecp5-85f`` preset only."""
    net = Network((28, 28, 1), (Conv2D(16, 5, 1, "same"), MaxPool(2), Conv2D(32, 5), MaxPool(2),
                                Flatten(), Dense(64, True), Dense(10)))
    free = LayerParallelism.balanced(net, 160)
    assert max(m.words for m in weight_memories(free)) > 2048
    bounded = LayerParallelism.balanced(net, 160, max_weight_words=2048)
    for mem in weight_memories(bounded):
        assert mem.words * (2 if mem.kind == "conv_w" else 1) <= 2048, mem
    assert bounded.cycles_per_image == free.cycles_per_image
    deep = preset_parallelism(net, "ecp5-85f")
    assert deep.pipeline == "deep" and deep.lanes == bounded.lanes
    assert preset_parallelism(net, "ecp5-25f").pipeline == "standard"


def test_weight_memories_and_writes_follow_one_list():
    net = NETWORKS["stride2-same-rgb"]
    par = LayerParallelism(net, PLANS["stride2-same-rgb"])
    mems = weight_memories(par)
    assert [(m.layer, m.kind) for m in mems] == [
        (0, "conv_w"), (0, "conv_b"), (0, "requant_mult"), (1, "conv_w"), (1, "conv_b"),
        (1, "requant_mult"), (4, "dense_w"), (4, "dense_b"), (4, "requant_mult"),
        (5, "dense_w"), (5, "dense_b")]
    assert mems[0].words == 2 * 3 * 3 and mems[0].bits == 8 * 2 * 3
    qnet = random_qnet(net, 3)
    writes = network_writes(qnet, par)
    for index, mem in enumerate(mems):
        mine = [(a, w) for k, a, w in writes if k == index]
        assert [a for a, _ in mine] == list(range(mem.words))
        assert all(0 <= w < (1 << mem.bits) for _, w in mine)
    # Conv weights with 3 channels per cycle: word g*steps + s, element l*3 + j.
    w = qnet.layers[0].w.reshape(4, 27)
    assert writes[1][2] == pack_fields([w[0, 3 + j] for j in range(3)]
                                       + [w[1, 3 + j] for j in range(3)], 8)


# -- blocks alone ---------------------------------------------------------------------------------

def _border_case(h, w, beats, pads, images):
    top, left, bottom, right = pads
    out = []
    for image in images:
        grid = np.zeros((top + h + max(bottom, 0), left + w + max(right, 0), beats), np.int64)
        grid[top:top + h, left:left + w] = image
        grid = grid[:top + h + bottom, :left + w + right]
        out += grid.reshape(-1).tolist()
    # The padding before the first input pixel needs no input: the next image's is offered
    # as soon as an image is complete.
    return out + [0] * ((top * (left + w + right) + left) * beats)


@pytest.mark.parametrize("pads", [(1, 2, 1, 0), (0, 0, -1, -2), (2, 1, -1, 1)])
def test_border_pads_and_crops(pads):
    rng = np.random.default_rng(sum(pads) + 7)
    h, w, beats = 5, 6, 2
    images = rng.integers(1, 256, (3, h, w, beats))
    expected = _border_case(h, w, beats, pads, images)
    top, left, bottom, right = pads
    result = run_stream_test(f"border_{'_'.join(map(str, pads))}".replace("-", "m"),
                             lambda: Border(8, height=h, width=w, beats=beats, top=top, left=left,
                                            bottom=bottom, right=right),
                             inputs=images.reshape(-1).tolist(), expected=expected)
    result.assert_ok()


@pytest.mark.parametrize("count", [1, 3])
def test_gather(count):
    rng = np.random.default_rng(count)
    beats = rng.integers(0, 256, (12 * count, 2))
    inputs = [pack_fields(b, 8) for b in beats]
    expected = [pack_fields(beats[k:k + count].reshape(-1), 8)
                for k in range(0, len(beats), count)]
    result = run_stream_test(f"gather_{count}",
                             lambda: Gather(8, lanes=2, count=count) if count > 1 else
                             Gather(8, lanes=2, count=1),
                             inputs=inputs, expected=expected)
    result.assert_ok()


@pytest.mark.parametrize("stride, lanes, channels, read_stage, sum_levels", [
    (2, 2, 1, False, None), (2, 4, 2, True, 2), (1, 2, 4, False, 2), (1, 1, 2, True, None),
    (1, 4, 4, True, 1)])
def test_conv_engine_stride_and_channels(stride, lanes, channels, read_stage, sum_levels):
    """The conv engine alone against the golden conv, strided and channel-parallel, with and
    without the read stage and pipelined sums."""
    rng = np.random.default_rng(stride * 10 + channels)
    cfg = StageConfig(input_size=11, in_channels=4, filters=4, kernel=3, stride=stride)
    w = rng.integers(-128, 128, (4, 3, 3, 4))
    b = rng.integers(-5000, 5000, 4)
    images = rng.integers(0, 256, (3, 11, 11, 4)).astype(np.uint8)
    acc = golden.conv_layer_acc(images, Conv2D(4, 3, stride), w, b)
    bits = 2 * 3 * 3 * 4 * 255 * 128
    width = int(bits).bit_length() + 1
    expected = [pack_fields(acc[n, y, x, g * lanes:(g + 1) * lanes], width)
                for n in range(3) for y in range(cfg.conv_size) for x in range(cfg.conv_size)
                for g in range(4 // lanes)]
    inputs = [pack_fields(p, 8) for p in images.reshape(-1, 4)]
    result = run_stream_test(f"conv_s{stride}_l{lanes}_c{channels}_r{int(read_stage)}"
                             f"_s{sum_levels}",
                             lambda: ConvEngine(cfg, lanes=lanes, conv_w=w, conv_b=b,
                                                channels=channels, read_stage=read_stage,
                                                sum_levels=sum_levels),
                             inputs=inputs, expected=expected)
    result.assert_ok()


# -- whole networks -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NETWORKS))
def test_generated_network_bit_exact(name):
    net = NETWORKS[name]
    qnet = random_qnet(net, 17 if name == "explicit-pads" else 11)   # seeds whose classes vary
    par = LayerParallelism(net, PLANS[name])
    images = random_images(net, 6, 21)
    stats = simulate_network(f"net_{name}", qnet, par, images, stalls=STALLS)
    assert stats["mismatches"] == 0
    ref = golden.infer_int(qnet, images)
    assert len(set(ref.cls.tolist())) > 1, "a case whose classes never change tests too little"


def test_chunks_side_by_side_add_up():
    """``sim-full --jobs``: chunks simulated in two processes (two Verilator builds) give the
    statistics of one run: every image counted once, the accuracy against the labels (one of
    four made wrong here) and the cycles of each chunk summed."""
    net = NETWORKS["explicit-pads"]
    qnet = random_qnet(net, 17)
    par = LayerParallelism(net, PLANS["explicit-pads"])
    images = random_images(net, 4, 21)
    labels = golden.infer_int(qnet, images).cls.copy()
    labels[2] = (labels[2] + 1) % net.classes
    stats = simulate_chunked("net_chunks", qnet, par, images, labels, chunk=1, jobs=2)
    assert stats["images"] == 4 and stats["mismatches"] == 0
    assert stats["accuracy"] == 0.75
    single = simulate_network("net_chunks", qnet, par, images[:1])
    assert stats["cycles"] == 4 * single["cycles"]


@pytest.mark.parametrize("name", ["stride2-same-rgb", "valid-stride2-hidden"])
def test_deep_pipeline_bit_exact(name):
    """The deep pipeline (register slices, stall-free requantization, pipelined sums and exp):
    the same results, and the same sustained cycles."""
    net = NETWORKS[name]
    qnet = random_qnet(net, 11)
    par = LayerParallelism(net, PLANS[name], pipeline="deep")
    images = random_images(net, 6, 21)
    stats = simulate_network(f"net_deep_{name}", qnet, par, images, stalls=STALLS)
    assert stats["mismatches"] == 0


@pytest.mark.parametrize("mapping", ["chain", "folded"])
def test_model_write_port_loads_another_network(mapping):
    """Built with one network's tensors, loaded with another's through the write port: the
    results are the loaded network's (the dataflow chain and the folded accelerator)."""
    net = NETWORKS["stride2-same-rgb"]
    par = (LayerParallelism(net, PLANS["stride2-same-rgb"]) if mapping == "chain" else
           FoldedMapping(net, 4, target="generic"))
    built, other = random_qnet(net, 1), random_qnet(net, 2)
    # Shifts and the softmax constants are built in; the tensors are written.
    loaded = QuantNetwork(net, [None if p is None else QuantLayer(q.w, q.b, q.mult, p.shift)
                                for p, q in zip(built.layers, other.layers)],
                          built.softmax_mult, built.softmax_shift)
    images = random_images(net, 3, 4)
    assert not np.array_equal(golden.infer_int(built, images).logits,
                              golden.infer_int(loaded, images).logits)
    stats = simulate_network(f"net_write_port_{mapping}", built, par, images, load=loaded)
    assert stats["mismatches"] == 0


def test_accelerator_refuses_a_foreign_parallelism():
    net = NETWORKS["stride2-same-rgb"]
    other = NETWORKS["explicit-pads"]
    with pytest.raises(ValueError, match="another network"):
        NetworkAccelerator(random_qnet(net, 1), LayerParallelism(other, PLANS["explicit-pads"]))
    with pytest.raises(TypeError, match="QuantNetwork"):
        NetworkAccelerator(None, LayerParallelism(net, PLANS["stride2-same-rgb"]))


@pytest.mark.parametrize("name, budget", [
    case("lenet-48", 48),
    case("lenet-128", 128, slow="lenet-48 covers the chain; this adds channel-parallel conv2"),
])
def test_lenet_on_mnist(name, budget):
    """The committed lenet model on MNIST test images, every result word; and the cycles per
    image within 5 % of the parallelism's sustained figure (the chain's fill excluded)."""
    images, labels = mnist_images("test", 8)
    qnet = model_file.load_network(model_file.DEFAULT_PATH.with_name("lenet.npz"))
    par = LayerParallelism.balanced(qnet.network, budget)
    stats = simulate_network(f"net_lenet_{budget}", qnet, par, images, labels)
    assert stats["mismatches"] == 0
    assert stats["accuracy"] == float(np.mean(golden.infer_int(qnet, images).cls == labels))


def test_board_core_serves_a_layer_list_accelerator(tmp_path):
    """The board core (UART link, the accelerator behind a ClockCrossing as on the ULX3S) with a
    layer-list accelerator: the host uploads another network's tensors through
    ``WRITE_WEIGHTS`` frames (memories from :func:`weight_memories`), then classifies; every
    class, logit and probability is the uploaded network's."""
    from cnnforge.boards.top import board_core
    from cnnforge.sim.verify.board_system import SIM_BAUD, SIM_CLK_FREQ, run_sim_job
    from helpers import check_classification
    net = NETWORKS["stride2-same-rgb"]
    lanes = PLANS["stride2-same-rgb"]
    par = LayerParallelism(net, lanes)
    built, other = random_qnet(net, 1), random_qnet(net, 2)
    loaded = QuantNetwork(net, [None if p is None else QuantLayer(q.w, q.b, q.mult, p.shift)
                                for p, q in zip(built.layers, other.layers)],
                          built.softmax_mult, built.softmax_shift)
    model_file.save(loaded, tmp_path / "loaded.npz")
    images = random_images(net, 3, 8)
    link = board_core(built, None, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD,
                      accel=NetworkAccelerator(built, par), accel_domain="fast")
    out = run_sim_job("board_network", link,
                      "cnnforge.sim.verify.tb_board:upload_network_and_classify",
                      {"images": [im.tolist() for im in images],
                       "model_path": str(tmp_path / "loaded.npz"),
                       "lanes": {str(k): list(v) if isinstance(v, tuple) else v
                                 for k, v in lanes.items()}},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    assert out["result"]["upload"]["loaded_after"]
    for k, (got, image) in enumerate(zip(out["result"]["results"], images)):
        check_classification(got, loaded, image, f"image {k}")
