# amaranth: UnusedElaboratable=no
"""On-chip training (hw/train.py) against the golden trainer (sim/reference/trainer.py), bit for bit.

Every test trains in RTL (Verilator) and compares every master, bias and the LFSR state after
every step (the trainer's DUMP stream) with ``sim/reference/trainer.py``; the forward results of the
training images and of inference images after training are compared too.
"""

import os

import numpy as np
import pytest

from cnnforge.hw.accel import PRESETS, Parallelism
from cnnforge.hw.params import NetworkConfig, TrainFormat, Widths
from cnnforge.hw.train import Trainer, dump_order
from cnnforge.sim.reference import golden
from cnnforge.sim.reference.trainer import init_random
from cnnforge.sim.verify.train_system import compare_dumps, golden_training, simulate_training
from helpers import mnist_images, needs_mnist

SMALL = NetworkConfig(input_size=12, filters=4, kernel=3, classes=10)
SMALL_PAR = Parallelism(conv_lanes=2, requant_parallel=2, dense_mults=4)


def mnist_train(count, crop=None):
    """The first ``count`` training images and labels, the images cropped to their central
    ``crop`` x ``crop`` pixels."""
    x, y = mnist_images("train", count)
    if crop is not None:
        lo = (28 - crop) // 2
        x = x[:, lo:lo + crop, lo:lo + crop]
    return x, y


def check_run(run, state, images, labels, infer=(), dump_first=False):
    """Every dump, every forward result, and the inference after training."""
    assert not run.timed_out, f"timed out after {run.cycles} cycles"
    final, ref, logits, probs = golden_training(state, images, labels, dump_first=dump_first)
    problem = compare_dumps(run.dumps, ref)
    assert problem is None, problem
    n = len(images)
    assert run.logits.shape[0] == n + len(infer)
    assert np.array_equal(run.logits[:n], logits), "forward logits of the training images"
    assert np.array_equal(run.probs[:n], probs), "forward probabilities of the training images"
    if len(infer):
        inf = golden.infer_int(final.model(), np.asarray(infer))
        assert np.array_equal(run.logits[n:], inf.logits)
        assert np.array_equal(run.cls[n:], inf.cls)
    assert len(run.step_cycles) == n
    return final, ref


# --- argument checks ---------------------------------------------------------------------------

def test_grad_lanes_is_checked():
    state = init_random(SMALL)
    with pytest.raises(ValueError, match=r"grad_lanes must divide conv_lanes \(2\), dense_mults "
                                         r"\(4\) and filters // 2 \(2\), not 3"):
        Trainer(state, SMALL_PAR, grad_lanes=3)
    with pytest.raises(ValueError, match=r"grad_lanes must divide conv_lanes \(4\), dense_mults "
                                         r"\(4\) and filters // 2 \(2\), not 4"):
        Trainer(state, Parallelism(conv_lanes=4, requant_parallel=2, dense_mults=4),
                grad_lanes=4)
    with pytest.raises(TypeError, match="grad_lanes must be an integer"):
        Trainer(state, SMALL_PAR, grad_lanes=1.5)
    with pytest.raises(TypeError, match="parallelism must be a Parallelism"):
        Trainer(state, {"conv_lanes": 2})


def test_dump_order_counts():
    assert dump_order(NetworkConfig()) == [("dense_m", 54080), ("dense_b", 10),
                                           ("conv_m", 288), ("conv_b", 32), ("lfsr", 1)]


# --- small network: extremes -------------------------------------------------------------------

#: Large learning rates (lr 2**-1) with small shifts: variant "a" saturates dense masters (and
#: has a dense-bias shift of 0), variant "b" (conv_b_shift 0, a smaller conv scale and error
#: shift) the conv biases; both saturate conv masters and dense biases.
SATURATING = {
    "a": dict(lr_shift=1),
    "b": dict(lr_shift=1, conv_scale_log2=-11, err_shift=6),
}


def _saturating_state(rounding, variant):
    """Dense biases started near their bounds."""
    state = init_random(SMALL, TrainFormat(rounding=rounding, **SATURATING[variant]))
    sign = np.where(np.arange(SMALL.classes) % 2, 1, -1)
    state.dense_b = sign * (Widths(SMALL).dense_bias_max - 3000)
    return state


@needs_mnist
@pytest.mark.parametrize("rounding, variant", [("nearest", "a"), ("stochastic", "b")])
def test_small_network_saturation(rounding, variant):
    """Large learning rates: masters and biases saturate (shifts of 0 included)."""
    state = _saturating_state(rounding, variant)
    images, labels = mnist_train(6, crop=12)
    infer, _ = mnist_images("test", 3)
    infer = infer[:, 8:20, 8:20]
    run = simulate_training(f"train_small_sat_{rounding}", state, SMALL_PAR, images, labels,
                            grad_lanes=2, dump_first=True, infer_images=infer)
    final, ref = check_run(run, state, images, labels, infer, dump_first=True)
    # The test covers what it claims: saturation in the golden run.
    fmt, w = state.fmt, Widths(SMALL)
    assert (np.abs(ref["dense_b"]) == w.dense_bias_max).any()
    assert (ref["conv_m"] == fmt.master_max).any() or (ref["conv_m"] == fmt.master_min).any()
    if variant == "a":
        assert fmt.dense_b_shift == 0
        assert (ref["dense_m"] == fmt.master_max).any()
        assert (ref["dense_m"] == fmt.master_min).any()
    else:
        assert fmt.conv_b_shift == 0
        assert (np.abs(ref["conv_b"]) == w.conv_bias_max).any()


@needs_mnist
def test_small_network_stalls():
    """Random input gaps and backpressure on the result and dump streams; stochastic
    rounding; one gradient lane. Inference images stream back to back before the first
    training image (which waits until they are out) and after the last."""
    state = init_random(SMALL, TrainFormat(rounding="stochastic", lr_shift=3))
    images, labels = mnist_train(5, crop=12)
    first = mnist_images("test", 4)[0][:, 8:20, 8:20]
    after = mnist_images("test", 7)[0][4:, 8:20, 8:20]
    run = simulate_training("train_small_stalls", state, SMALL_PAR, images, labels,
                            grad_lanes=1, in_gap=0.3, out_stall=0.5, seed=7,
                            infer_first=first, infer_images=after)
    before = golden.infer_int(state.model(), first)
    assert np.array_equal(run.logits[:len(first)], before.logits)
    assert np.array_equal(run.probs[:len(first)], before.probs)
    run.logits, run.probs, run.cls = (a[len(first):] for a in (run.logits, run.probs, run.cls))
    check_run(run, state, images, labels, after)


# --- the reference network ---------------------------------------------------------------------

#: Training steps of the default reference-network test (per-step comparison; about 2 min on
#: one core, most of it the Verilator build); the slow test runs 50.
REF_STEPS = int(os.environ.get("CNNFORGE_TRAIN_STEPS", "12"))


def _reference_up5k(steps, name):
    state = init_random(NetworkConfig(), TrainFormat())
    images, labels = mnist_train(steps)
    infer, _ = mnist_images("test", 10)
    run = simulate_training(name, state, PRESETS["up5k"], images, labels, grad_lanes=4,
                            infer_images=infer)
    check_run(run, state, images, labels, infer)
    print(f"up5k: {np.mean(run.step_cycles):.0f} cycles per training step "
          f"({run.step_cycles.min()}..{run.step_cycles.max()}), {run.seconds} s")
    # Against the preset's sustained inference cycles per image (its slowest stage).
    from cnnforge.hw.accel import Accelerator
    per_image = Accelerator(state.model(), PRESETS["up5k"]).cycles_per_image
    assert run.step_cycles.max() <= 2.5 * per_image


@needs_mnist
def test_reference_network_up5k():
    """The reference network, UP5K parallelism (its preset, 4 gradient lanes), from
    the LFSR random init: every master after each MNIST training step, the forward results,
    then inference of test images with the trained weights; <= 2.5x the inference cycles."""
    _reference_up5k(REF_STEPS, "train_ref_up5k")


@needs_mnist
@pytest.mark.slow(reason="test_reference_network_up5k: the same, REF_STEPS (12) steps")
def test_reference_network_up5k_50_steps():
    """As above, 50 steps, every master after every step (about 5 min)."""
    _reference_up5k(50, "train_ref_up5k_50")


@needs_mnist
@pytest.mark.slow(reason="300 steps at the ECP5-85F parallelism: test_reference_network_up5k "
                         "(12 steps) and the small-network tests (both roundings)")
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_reference_network_ecp5_long(rounding):
    """ECP5-85F parallelism (32 dense multipliers, 16 gradient lanes), 300 steps, every master
    after every 10th step, accuracy of the RTL-trained weights on 200 test images."""
    state = init_random(NetworkConfig(), TrainFormat(rounding=rounding))
    images, labels = mnist_train(300)
    infer, infer_labels = mnist_images("test", 200)
    run = simulate_training(f"train_ref_ecp5_{rounding}", state, PRESETS["ecp5-85f"], images,
                            labels, grad_lanes=16, dump_every=10, infer_images=infer)
    final, ref, logits, probs = golden_training(state, images, labels, dump_every=10)
    problem = compare_dumps(run.dumps, ref)
    assert problem is None, problem
    inf = golden.infer_int(final.model(), infer)
    assert np.array_equal(run.cls[len(images):], inf.cls)
    acc = float(np.mean(run.cls[len(images):] == infer_labels))
    print(f"ecp5-85f: {np.mean(run.step_cycles):.0f} cycles per training step, "
          f"accuracy after {len(images)} steps {100 * acc:.1f} %, {run.seconds} s")


@needs_mnist
@pytest.mark.slow(reason="lane geometries no preset uses: the small-network tests (2 conv "
                         "lanes, 4 dense multipliers, 1 and 2 gradient lanes)")
@pytest.mark.parametrize("conv_lanes, dense_mults, grad_lanes", [(4, 4, 4), (2, 8, 2)])
def test_small_network_geometries(conv_lanes, dense_mults, grad_lanes):
    """Lane geometries the presets do not cover: grad_lanes == dense_mults == conv_lanes
    (8 filters, two channel groups), and dense words wider than pooled beats (two banks)."""
    config = NetworkConfig(input_size=12, filters=8, kernel=3, classes=10)
    state = init_random(config, TrainFormat(lr_shift=3))
    par = Parallelism(conv_lanes=conv_lanes, requant_parallel=2, dense_mults=dense_mults)
    images, labels = mnist_train(4, crop=12)
    run = simulate_training(f"train_small_geom_{conv_lanes}_{dense_mults}_{grad_lanes}", state,
                            par, images, labels, grad_lanes=grad_lanes)
    check_run(run, state, images, labels)
