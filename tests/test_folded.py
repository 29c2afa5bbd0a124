# amaranth: UnusedElaboratable=no
"""The folded accelerator (hw/folded.py): every layer on one MAC array. Geometry and refusals,
then whole networks in RTL against the layer-list golden model, every result word, with random
stalls: generated networks (stride 2, 'same' and explicit padding, 2- and 3-channel inputs,
hidden dense layers, convs without a pool, an odd pool window), the iCE40 datapath with Yosys's
SB_MAC16 and SPRAM models, the write port, and lenet on MNIST."""

import numpy as np
import pytest

from cnnforge.hw.folded import FoldedAccelerator, FoldedMapping, folded_memories, folded_writes
from cnnforge.hw.network import network_writes, preset_parallelism, weight_memories
from cnnforge.hw.params import ConfigError, Conv2D, Dense, Flatten, MaxPool, Network
from cnnforge.sim.reference import golden, model_file
from cnnforge.sim.verify.networks import random_images, random_qnet
from cnnforge.sim.verify.system import simulate_network

from helpers import mnist_images
from test_network_accel import NETWORKS as CHAIN_NETWORKS

STALLS = ((0.0, 0.0), (0.3, 0.4))

#: The dataflow chain's test networks, and what only the folded mapping takes: non-square
#: maps, a 3x3 pool (a block of five pixel pairs, the last one half empty), odd widths without
#: a pool (the last pair half empty), a stride-2 conv reading a map another conv wrote.
NETWORKS = dict(CHAIN_NETWORKS, **{
    "pool3-odd": Network((11, 9, 1), (Conv2D(5, 3, 1, "same"), MaxPool(3), Conv2D(3, 2, 2),
                                      Flatten(), Dense(4))),
    "no-pool-chain": Network((10, 10, 2), (Conv2D(9, 3), Conv2D(6, 3, 2, "same"), Flatten(),
                                           Dense(7, True), Dense(3))),
})


def lenet():
    return model_file.load_network(model_file.DEFAULT_PATH.with_name("lenet.npz"))


# -- geometry and refusals ------------------------------------------------------------------------

def test_steps_of_lenet():
    """A conv with its pool is one step; a dense layer after a map is a convolution whose
    kernel is the whole map (flatten order = tap order); the weights fill the SPRAM in order."""
    mp = FoldedMapping(lenet().network, 8)
    steps = mp.steps
    assert [(s.index, s.kh, s.in_c, s.pool, s.relu) for s in steps] == [
        (0, 5, 1, 2, True), (2, 5, 16, 2, True), (5, 5, 32, 1, True), (6, 1, 64, 1, False)]
    assert [s.passes(8) for s in steps] == [2 * 14 * 14 * 2, 4 * 5 * 5 * 2, 8, 2]
    assert [mp.weight_base(k) for k in range(4)] == [0, 50, 1650, 8050]
    assert mp.weight_words == 8178
    assert mp.multipliers == 16 and mp.pipeline == "folded"
    assert isinstance(preset_parallelism(lenet().network, "up5k"), FoldedMapping)


def test_map_layout_puts_a_pair_in_two_banks():
    """The two pixels of a pair (x and x + stride) are always in different banks, and no two
    pixels share a bank address."""
    for stride in (1, 2):
        step = FoldedMapping(Network((7, 13, 3), (Conv2D(2, 3, stride), Flatten(), Dense(2))),
                             2).steps[0]
        seen = set()
        for y in range(7):
            for x in range(13):
                for c in range(3):
                    bank, addr = step.address(y, x, c)
                    assert addr < step.bank_depth and (bank, addr) not in seen
                    seen.add((bank, addr))
                if x + stride < 13:
                    assert step.address(y, x, 0)[0] != step.address(y, x + stride, 0)[0]


@pytest.mark.parametrize("layers, message", [
    ((Conv2D(4, 3), MaxPool(3, 2), Flatten(), Dense(2)), "stride = size"),
    ((Conv2D(4, 3), MaxPool(2), MaxPool(2), Flatten(), Dense(2)), "right after a convolution"),
])
def test_folded_refusals(layers, message):
    with pytest.raises(ConfigError, match=message):
        FoldedMapping(Network((12, 12, 1), layers), 8)


def test_weights_beyond_the_spram_are_refused():
    net = Network((32, 32, 8), (Flatten(), Dense(512)))    # 8,192 inputs x 64 groups of 8
    with pytest.raises(ConfigError, match="more than the SPRAM"):
        FoldedMapping(net, 8, target="ice40")
    FoldedMapping(net, 8, target="generic")                 # block RAM has no such bound


def test_memories_and_writes_follow_one_list():
    qnet = random_qnet(NETWORKS["valid-stride2-hidden"], 3)
    mp = FoldedMapping(qnet.network, 4, target="ice40")
    mems = folded_memories(mp)
    assert mems == weight_memories(mp)
    assert [(m.layer, m.kind) for m in mems] == [
        (0, "conv_w"), (0, "conv_b"), (0, "requant_mult"), (3, "dense_w"), (3, "dense_b"),
        (3, "requant_mult"), (4, "dense_w"), (4, "dense_b"), (4, "requant_mult"),
        (5, "dense_w"), (5, "dense_b")]
    assert all(m.storage == "SPRAM" for m in mems if m.kind.endswith("_w"))
    writes = folded_writes(qnet, mp)
    assert writes == network_writes(qnet, mp)
    for index, mem in enumerate(mems):
        mine = [(a, w) for i, a, w in writes if i == index]
        assert [a for a, _ in mine] == list(range(mem.words))
        assert all(0 <= w < 1 << mem.bits for _, w in mine)
    # A weight word holds the group's lanes at one tap: conv 0's first word is w[0..3, tap 0].
    w = qnet.layers[0].w.reshape(8, -1)
    first = next(word for i, a, word in writes if i == 0 and a == 0)
    assert [(first >> (8 * n)) & 0xff for n in range(4)] == [int(v) & 0xff for v in w[:4, 0]]


def test_accelerator_refuses_a_foreign_mapping():
    net, other = NETWORKS["stride2-same-rgb"], NETWORKS["explicit-pads"]
    with pytest.raises(ValueError, match="another network"):
        FoldedAccelerator(random_qnet(net, 1), FoldedMapping(other, 4))
    with pytest.raises(TypeError, match="QuantNetwork"):
        FoldedAccelerator(None, FoldedMapping(net, 4))
    with pytest.raises(ValueError, match="even"):
        FoldedMapping(net, 3)


# -- whole networks in RTL ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NETWORKS))
def test_generated_network_bit_exact(name):
    """Portable datapath (behavioural products and weight memory), random stalls on both
    streams; cycles per image within 5 % of the mapping's estimate."""
    net = NETWORKS[name]
    qnet = random_qnet(net, 17 if name == "explicit-pads" else 11)
    mp = FoldedMapping(net, 4, target="generic")
    images = random_images(net, 5, 21)
    stats = simulate_network(f"folded_{name}", qnet, mp, images, stalls=STALLS)
    assert stats["mismatches"] == 0
    assert len(set(golden.infer_int(qnet, images).cls.tolist())) > 1
    assert stats["cycles_per_image"] == pytest.approx(mp.cycles_per_image, rel=0.05)


@pytest.mark.parametrize("name, lanes", [("stride2-same-rgb", 8), ("pool3-odd", 2)])
def test_ice40_datapath_bit_exact(name, lanes):
    """The iCE40 datapath: dual 8x8 SB_MAC16 and SB_SPRAM256KA (Yosys's models), the weights
    written through the write port first (the SPRAM starts empty), random stalls."""
    net = NETWORKS[name]
    qnet = random_qnet(net, 11)
    mp = FoldedMapping(net, lanes, target="ice40")
    stats = simulate_network(f"folded_ice40_{name}", qnet, mp, random_images(net, 4, 5),
                             stalls=STALLS)
    assert stats["mismatches"] == 0


def test_lenet_on_mnist_ice40():
    """The committed lenet model on the iCEBreaker's configuration (SB_MAC16 and SPRAM models),
    MNIST test images, every result word; cycles per image within 2 % of the estimate."""
    images, labels = mnist_images("test", 3)
    qnet = lenet()
    mp = preset_parallelism(qnet.network, "up5k")
    stats = simulate_network("folded_lenet_ice40", qnet, mp, images, labels)
    assert stats["mismatches"] == 0
    assert stats["accuracy"] == float(np.mean(golden.infer_int(qnet, images).cls == labels))
    assert stats["cycles_per_image"] == pytest.approx(mp.cycles_per_image, rel=0.02)
    assert stats["cycles_per_image"] <= 1.5 * qnet.network.total_macs / mp.multipliers


def test_board_core_uploads_into_empty_spram_and_classifies(tmp_path):
    """The iCEBreaker's board core (UART link, one clock) with the folded accelerator on the
    iCE40 datapath (SB_MAC16 and SPRAM models): no model at start (the SPRAM is empty), the
    host uploads the network through ``WRITE_WEIGHTS`` frames at the UART pins, then every
    class, logit and probability is the golden model's."""
    from cnnforge.boards.top import board_core
    from cnnforge.sim.verify.board_system import SIM_BAUD, SIM_CLK_FREQ, run_sim_job
    from cnnforge.sim.verify.rtl_runner import ice40_cells_sim
    from helpers import check_classification
    net = NETWORKS["valid-stride2-hidden"]
    qnet = random_qnet(net, 11)
    model_file.save(qnet, tmp_path / "net.npz")
    images = random_images(net, 3, 8)[..., 0]      # one channel: the host takes (h, w)
    mp = FoldedMapping(net, 4, target="ice40")
    link = board_core(qnet, None, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD,
                      accel=FoldedAccelerator(qnet, mp))
    out = run_sim_job("board_folded_ice40", link,
                      "cnnforge.sim.verify.tb_board:upload_network_and_classify",
                      {"images": [im.tolist() for im in images],
                       "model_path": str(tmp_path / "net.npz"), "lanes": {},
                       "folded": {"lanes": 4, "target": "ice40"}},
                      divisor=SIM_CLK_FREQ // SIM_BAUD, extra_sources=[ice40_cells_sim()])
    upload = out["result"]["upload"]
    assert not upload["loaded_before"] and upload["loaded_after"]
    for k, (got, image) in enumerate(zip(out["result"]["results"], images)):
        check_classification(got, qnet, image, f"image {k}")


def test_tang_nano_9k_board_core_through_its_uart(tmp_path):
    """The Tang Nano 9K's board core as its build makes it (preset ``gw1n-9``: the folded
    accelerator with portable products, built with its default model ``mnist-small``): the
    host uploads other tensors of the same network through ``WRITE_WEIGHTS`` frames at the
    UART pins, then MNIST test images are classified, every class, logit and probability the
    uploaded model's; and the built-in model through the fault cases."""
    from cnnforge.boards.board import get_board
    from cnnforge.boards.top import board_core
    from cnnforge.hw.network import network_accelerator
    from cnnforge.sim.verify.board_system import SIM_BAUD, SIM_CLK_FREQ, run_sim_job
    from helpers import check_board_scenario, check_classification
    spec = get_board("tangnano9k")
    built = model_file.load_network(model_file.DEFAULT_PATH.with_name(spec.model))
    mp = preset_parallelism(built.network, spec.preset)
    assert isinstance(mp, FoldedMapping) and mp.target == "generic"
    from cnnforge.hw.model import QuantLayer, QuantNetwork
    other = random_qnet(built.network, 3)
    # Shifts and the softmax constants are built in; the tensors are uploaded.
    uploaded = QuantNetwork(built.network, [
        None if p is None else QuantLayer(q.w, q.b, q.mult, p.shift)
        for p, q in zip(built.layers, other.layers)], built.softmax_mult, built.softmax_shift)
    model_file.save(uploaded, tmp_path / "uploaded.npz")
    images, _ = mnist_images("test", 3)
    assert not np.array_equal(golden.infer_int(built, images).logits,
                              golden.infer_int(uploaded, images).logits)

    def core():
        return board_core(built, None, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD, timeout_s=0.002,
                          accel=network_accelerator(built, mp))

    out = run_sim_job("board_tangnano9k", core(),
                      "cnnforge.sim.verify.tb_board:upload_network_and_classify",
                      {"images": [im.tolist() for im in images],
                       "model_path": str(tmp_path / "uploaded.npz"), "lanes": {},
                       "folded": {"lanes": mp.lanes, "target": "generic"}},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    assert out["result"]["upload"]["loaded_after"]
    for k, (got, image) in enumerate(zip(out["result"]["results"], images)):
        check_classification(got, uploaded, image, f"image {k}")
    # The built-in model, then the fault cases of tests/test_link.py, each followed by a good
    # request.
    images, _ = mnist_images("test", 5)
    out = run_sim_job("board_tangnano9k", core(),
                      "cnnforge.sim.verify.tb_board:board_scenario",
                      {"images": [im.tolist() for im in images[:3]],
                       "fault_images": [im.tolist() for im in images[3:]]},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    check_board_scenario(out, images[:3], images[3:],
                         lambda got, image, where: check_classification(got, built, image, where))


def test_classify_sim_a_layer_list_model_on_the_icebreaker(tmp_path):
    """``cnnforge classify --sim --board icebreaker --model M --sim-datapath board`` for a
    layer-list model: the board's folded accelerator on the iCE40 datapath (cell models),
    the host uploading the model into the empty SPRAM first, then the golden classes."""
    from cnnforge.sim.verify.board_system import simulate
    net = Network((28, 28, 1), (Conv2D(4, 3, 2), MaxPool(2), Flatten(), Dense(6)))
    qnet = random_qnet(net, 5)
    model_file.save(qnet, tmp_path / "small.npz")
    images = random_images(net, 2, 3)[..., 0]
    info, results = simulate(images, tmp_path / "small.npz", "up5k", target=None,
                             name="host_sim_folded")
    assert info["classes"] == 6 and info["model_loaded"] is False
    ref = golden.infer_int(qnet, images)
    assert [r.cls for r in results] == ref.cls.tolist()
    assert [list(r.logits) for r in results] == ref.logits.tolist()
    assert [list(r.probs) for r in results] == ref.probs.tolist()
