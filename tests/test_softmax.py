"""The softmax block against the golden ``softmax_int`` and argmax, word for word."""

import numpy as np
import pytest

from cnnforge.hw.params import NetworkConfig, SoftmaxFormat, Widths
from cnnforge.hw.softmax import Softmax
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, run_stream_test
from helpers import mnist_images, needs_mnist, reference_model, slow_on_mnist


REFERENCE = NetworkConfig()
pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def expected_words(logits, mult, shift):
    logits = np.asarray(logits, np.int64)
    probs = golden.softmax_int(logits, mult, shift)
    cls = np.argmax(logits, axis=1)
    return [{"prob": int(p), "cls": int(c)}
            for row, c in zip(probs, cls) for p in row]


def check(name, config, logits, mult, shift, stalls=STALL_SWEEP, pipelined_exp=False):
    logits = np.asarray(logits, np.int64)
    result = run_stream_test(
        name, lambda: Softmax(config, softmax_mult=mult, softmax_shift=shift,
                              pipelined_exp=pipelined_exp),
        inputs=[int(v) for v in logits.reshape(-1)],
        expected=expected_words(logits, mult, shift), stalls=stalls)
    result.assert_ok()
    images = len(logits)
    print(f"{name}: {images * config.classes} words, no-stall {result.runs[0].cycles} cycles "
          f"for {images} images")
    return result


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="softmax_mult must be in 1..65535, not 0"):
        Softmax(REFERENCE, softmax_mult=0, softmax_shift=10)
    with pytest.raises(ValueError, match="softmax_shift must be in 1..46, not 47"):
        Softmax(REFERENCE, softmax_mult=1, softmax_shift=47)
    with pytest.raises(TypeError, match="softmax_mult must be an integer"):
        Softmax(REFERENCE, softmax_mult=1.5, softmax_shift=3)
    with pytest.raises(TypeError, match="config must be a NetworkConfig"):
        Softmax({}, softmax_mult=1, softmax_shift=3)
    with pytest.raises(TypeError, match="pipelined_exp must be a bool, not 1"):
        Softmax(REFERENCE, softmax_mult=1, softmax_shift=3, pipelined_exp=1)
    with pytest.raises(TypeError, match="tables_in_block_ram must be a bool, not 'yes'"):
        Softmax(REFERENCE, softmax_mult=1, softmax_shift=3, tables_in_block_ram="yes")


def test_tables_in_block_ram_where_asked():
    """The two tables ask Yosys for block RAM with ``tables_in_block_ram`` (the iCE40 preset's
    accelerator does: its gate-level run in tests/test_boards.py reads them from SB_RAM40_4K),
    and `cnnforge check` counts them there."""
    from cnnforge.boards.check import block_ram_blocks, design_memories
    for asked in (False, True):
        tables = [m for m in design_memories(Softmax(REFERENCE, softmax_mult=3, softmax_shift=4,
                                                     tables_in_block_ram=asked))
                  if not m.writable]
        assert len(tables) == 2 and all(m.block == asked for m in tables)
        assert sum(block_ram_blocks(m, "ice40") for m in tables) == (2 if asked else 0)


def test_newton_step_operands_fit_the_multiplier():
    """The widths the block's serial multiplier assumes hold for every normalized sum."""
    fmt = SoftmaxFormat()
    m = np.arange(1 << 15, 1 << 16)
    x0 = fmt.recip_table()[(m >> (15 - fmt.recip_index_bits)) & 63]
    r = (1 << 31) - m * x0
    x1 = (x0 * r) >> 30
    assert r.min() > 0 and r.max() < 1 << 31
    assert x0.max() < 1 << Softmax.MUL_BITS and x1.max() < 1 << Softmax.MUL_BITS


def random_logits(rng, config, count, spread):
    width = Widths(config).dense_acc
    lim = min(spread, 2 ** (width - 1) - 1)
    return rng.integers(-lim, lim + 1, (count, config.classes))


@pytest.mark.parametrize("pipelined_exp", [
    pytest.param(False, id="serial", marks=pytest.mark.slow(
        reason="the serial softmax on 1,000 random words: its edge cases, 3 classes, the up5k "
               "datapath and the board core on MNIST")),
    # the pipelined one keeps its random run
    pytest.param(True, id="pipelined"),
])
def test_random_logits(pipelined_exp):
    """1,000+ words: random logits at several spreads (all in the table, some underflowing,
    extreme distances), the model's scale and others."""
    rng = np.random.default_rng(1)
    width = Widths(REFERENCE).dense_acc
    logits = np.concatenate([
        random_logits(rng, REFERENCE, 40, 30_000),
        random_logits(rng, REFERENCE, 40, 300_000),
        random_logits(rng, REFERENCE, 20, 2 ** (width - 1) - 1),
    ])
    tag = "_pipelined" if pipelined_exp else ""
    check(f"softmax_random{tag}", REFERENCE, logits, 33497, 23, pipelined_exp=pipelined_exp)
    check(f"softmax_random_scale{tag}", REFERENCE, logits[:30], 65535, 20,
          stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:], pipelined_exp=pipelined_exp)


@pytest.mark.parametrize("pipelined_exp", [False, True], ids=["serial", "pipelined"])
def test_edge_cases(pipelined_exp):
    """Ties (lowest index wins, equal probabilities), all equal, the widest distance the logits
    allow (max and min logit), one dominant class (p = 1.0 = 32768), shift 1."""
    width = Widths(REFERENCE).dense_acc
    top, bottom = 2 ** (width - 1) - 1, -2 ** (width - 1)
    logits = np.array([
        [0] * 10,
        [5, 9, 9, 1, 9, 0, 0, 0, 0, 0],
        [bottom] * 9 + [top],
        [top] + [bottom] * 9,
        [top] * 10,
        [bottom] * 10,
        [-1, -1, -2, -3, -4, -5, -6, -7, -8, -9],
    ])
    tag = "_pipelined" if pipelined_exp else ""
    result = check(f"softmax_edges{tag}", REFERENCE, logits, 33497, 23,
                   pipelined_exp=pipelined_exp)
    words = expected_words(logits, 33497, 23)
    assert words[2 * 10 + 9]["cls"] == 9 and words[2 * 10 + 9]["prob"] >= 32760   # ~1.0
    assert [w["cls"] for w in words[10:20]] == [1] * 10
    check(f"softmax_edges_shift1{tag}", REFERENCE, logits[:2] // 1000, 3, 1,
          stalls=STALL_SWEEP[:1], pipelined_exp=pipelined_exp)
    # Throughput claim: about 480 to 530 cycles per image for 10 classes, no backpressure;
    # the pipelined exp step saves (MUL_BITS + 7) * classes - classes - its depth (~12).
    per_image = 530 - (210 if pipelined_exp else 0)
    assert result.runs[0].cycles <= len(logits) * per_image + 20


def test_three_classes():
    cfg = NetworkConfig(input_size=10, in_channels=1, filters=4, kernel=3, pool=2, classes=3)
    rng = np.random.default_rng(3)
    logits = random_logits(rng, cfg, 50, 100_000)
    check("softmax_3", cfg, logits, 40000, 22, stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    check("softmax_3_pipelined", cfg, logits, 40000, 22, stalls=STALL_SWEEP[-1:],
          pipelined_exp=True)


@needs_mnist
@slow_on_mnist
def test_mnist_logits():
    """Logits of MNIST test images through the committed model."""
    model = reference_model()
    images, _ = mnist_images("test", 100)
    logits = golden.infer_int(model, images).logits
    check("softmax_mnist", model.config, logits, model.softmax_mult, model.softmax_shift,
          stalls=STALL_SWEEP[:1] + STALL_SWEEP[-1:])
    check("softmax_mnist_pipelined", model.config, logits, model.softmax_mult,
          model.softmax_shift, stalls=STALL_SWEEP[-1:], pipelined_exp=True)
