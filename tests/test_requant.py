# amaranth: UnusedElaboratable=no
"""Requantize against :func:`cnnforge.sim.reference.golden.requantize`, word for word.

Stream regressions run in the hardware harness (:func:`run_stream_test`, Verilator) over the
whole STALL_SWEEP: random accumulators (full conv_acc range and a range landing around the
0..255 output window), edge cases (accumulator extremes, multipliers 0 and 65535, exact
rounding ties of both signs, the saturation boundaries at 0 and 255) and real data (MNIST test
images through the committed model: ``conv_acc`` in, ``act`` out). The no-stall run checks the
sustained throughput. Two tiny Amaranth-simulator tests cover what the harness cannot see: the
multiplier write port, and the stream rule on ``o`` (valid and payload hold until the transfer).
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.hw.requant import Requantize
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, run_stream_test
from helpers import (case, mnist_images, needs_mnist, pack_rows, reference_model, simulate_stream,
                     slow_on_mnist)


CONFIG = NetworkConfig()
WIDTHS = Widths(CONFIG)
F = CONFIG.filters
ACC_MIN = -(1 << (WIDTHS.conv_acc - 1))
ACC_MAX = (1 << (WIDTHS.conv_acc - 1)) - 1
MULT_MAX = (1 << WIDTHS.requant_mult) - 1


# -- vectors --------------------------------------------------------------------------------------

def beats(tensor, lanes):
    """``(..., F)`` channels-last tensor -> ``(beats, lanes)``: positions in order, then groups."""
    return np.asarray(tensor).reshape(-1, lanes)


def stream_words(acc, mult, shift, lanes):
    """Input and expected words for accumulators ``acc`` ``(positions, F)``."""
    act = golden.requantize(acc, mult, shift)
    return (pack_rows(beats(acc, lanes), WIDTHS.conv_acc),
            pack_rows(beats(act, lanes), WIDTHS.act))


def special_mults(rng):
    """Random multipliers with the special values 0, 65535, 1 and a power of two."""
    mult = rng.integers(1, MULT_MAX + 1, F)
    mult[:4] = [0, MULT_MAX, 1, 1 << 12]
    return mult


def tie_acc(m, shift):
    """An accumulator with ``acc * m`` exactly half way (``2**(shift-1)`` mod ``2**shift``), or None."""
    if m == 0:
        return None
    a = (m & -m).bit_length() - 1            # m = 2**a * odd
    if a > shift - 1:
        return None
    modulus = 1 << (shift - a)
    odd = m >> a
    return ((1 << (shift - 1 - a)) * pow(odd, -1, modulus)) % modulus, modulus


def edge_acc(mult, shift, rng):
    """Positions ``(n, F)`` of edge-case accumulators for every channel's multiplier."""
    half = 1 << (shift - 1)
    columns = []
    for m in (int(x) for x in mult):
        vals = [ACC_MIN, ACC_MIN + 1, -1, 0, 1, ACC_MAX - 1, ACC_MAX]
        if m:
            # Around the boundaries of rounded values -1/0, 0/1, 254/255, 255/256: the smallest
            # acc rounding to >= r is ceil((r * 2**shift - half) / m).
            for r in (-1, 0, 1, 2, 128, 254, 255, 256, 257):
                a0 = -((-(r * (1 << shift) - half)) // m)
                vals += [a0 - 1, a0, a0 + 1]
            tie = tie_acc(m, shift)
            if tie is not None:
                t, modulus = tie
                # Ties of both signs, landing on small results and across the clip points.
                for target in (-3, -1, 0, 1, 2, 100, 254, 255, 256):
                    base = (target * (1 << shift)) // m
                    k = (base - t) // modulus
                    vals += [t + k * modulus, t + (k + 1) * modulus]
        vals = [v for v in vals if ACC_MIN <= v <= ACC_MAX]
        columns.append(vals)
    n = max(len(c) for c in columns)
    # Pad each channel with random repeats of its own edge values so every position is complete.
    out = np.array([c + [c[int(i)] for i in rng.integers(0, len(c), n - len(c))] for c in columns],
                   np.int64).T
    return out


def random_acc(mult, shift, n, rng):
    """``(n, F)``: half uniform over the full width, half landing around the output window."""
    full = rng.integers(ACC_MIN, ACC_MAX + 1, (n // 2, F))
    target = rng.uniform(-40, 300, (n - n // 2, F))
    scale = np.where(mult > 0, (1 << shift) / np.maximum(mult, 1), 1.0)
    near = np.rint(target * scale + rng.integers(-3, 4, target.shape)).astype(np.int64)
    near = np.where(mult > 0, near, rng.integers(ACC_MIN, ACC_MAX + 1, near.shape))
    return np.concatenate([full, np.clip(near, ACC_MIN, ACC_MAX)])


def check_throughput(result, dut, n_in):
    """No-stall run: one beat every ``steps`` cycles from the first to the last word."""
    cycles = result.runs[0].cycles
    budget = n_in * dut.steps + dut.latency + 3
    assert n_in * dut.steps <= cycles <= budget, (cycles, budget)
    return cycles


# -- constructor ----------------------------------------------------------------------------------

MODEL_MULT = np.arange(F) + 100


@pytest.mark.parametrize("kwargs, error, message", [
    ({"lanes": 0}, ValueError, r"lanes must be at least 1, not 0"),
    ({"lanes": 5}, ValueError, r"lanes must divide filters \(32\), not 5"),
    ({"lanes": 4.0}, TypeError, r"lanes must be an integer, not 4.0"),
    ({"lanes": True}, TypeError, r"lanes must be an integer, not True"),
    ({"parallel": 3}, ValueError, r"parallel must divide lanes \(4\), not 3"),
    ({"parallel": 0}, ValueError, r"parallel must be at least 1, not 0"),
    ({"digit": 0}, ValueError, r"digit must be at least 1, not 0"),
    ({"digit": 17}, ValueError, r"digit must be at most 16, not 17"),
    ({"requant_shift": 0}, ValueError, r"requant_shift must be at least 1, not 0"),
    ({"requant_shift": 41}, ValueError, r"requant_shift must be at most 40, not 41"),
    ({"requant_shift": "8"}, TypeError, r"requant_shift must be an integer, not '8'"),
    ({"stall_free": 1}, TypeError, r"stall_free must be a bool, not 1"),
    ({"requant_mult": np.arange(31)}, ValueError, r"requant_mult must have shape \(32,\), not \(31,\)"),
    ({"requant_mult": np.full(F, 1 << 16)}, ValueError, r"requant_mult values must be in 0..65535"),
    ({"requant_mult": np.full(F, -1)}, ValueError, r"requant_mult values must be in 0..65535"),
    ({"requant_mult": np.full(F, 1.5)}, TypeError, r"requant_mult must be an array of integers"),
])
def test_constructor_validates(kwargs, error, message):
    args = {"lanes": 4, "requant_mult": MODEL_MULT, "requant_shift": 8, **kwargs}
    with pytest.raises(error, match=message):
        Requantize(CONFIG, **args)


def test_constructor_rejects_non_config():
    with pytest.raises(TypeError, match=r"config must be a NetworkConfig or StageConfig, not 'x'"):
        Requantize("x", lanes=4, requant_mult=MODEL_MULT, requant_shift=8)


def test_ports_and_properties():
    dut = Requantize(CONFIG, lanes=16, requant_mult=MODEL_MULT, requant_shift=8, parallel=4)
    assert dut.steps == 4 and dut.parallel == 4 and dut.lanes == 16
    assert dut.i.payload.shape().elem_shape.width == WIDTHS.conv_acc
    assert dut.i.payload.shape().elem_shape.signed
    assert dut.o.payload.shape().length == 16
    assert len(dut.mult_data) == 16 and len(dut.mult_addr) == 5
    assert Requantize(CONFIG, lanes=8, requant_mult=MODEL_MULT, requant_shift=8).parallel == 8
    assert dut.requant_mult.tolist() == MODEL_MULT.tolist()


# -- Amaranth-simulator checks (short) ------------------------------------------------------------

def simulate(dut, inputs, n_out, *, gap, stall, seed, writes=()):
    """Drive ``dut`` with random gaps and stalls; check the stream rule on ``o`` every cycle.

    ``writes``: ``(addr, data)`` multiplier writes done before the stream starts.
    Returns the output words and the cycle count.
    """
    async def write_multipliers(ctx):
        for addr, value in writes:
            ctx.set(dut.mult_en, 1)
            ctx.set(dut.mult_addr, addr)
            ctx.set(dut.mult_data, value)
            await ctx.tick()
        ctx.set(dut.mult_en, 0)

    return simulate_stream(dut, inputs, n_out, gap=gap, stall=stall, seed=seed,
                           max_cycles=20 * (len(inputs) + 10) * dut.steps,
                           before=write_multipliers)


@pytest.mark.parametrize("lanes, parallel, stall_free", [(4, 2, False), (8, 8, False),
                                                        (4, 2, True)])
def test_multiplier_write_port(lanes, parallel, stall_free):
    rng = np.random.default_rng(5)
    shift = 12
    mult = special_mults(rng)
    new = special_mults(np.random.default_rng(6))[::-1].copy()
    acc = random_acc(new, shift, 6, rng)
    ins, exp = stream_words(acc, new, shift, lanes)
    dut = Requantize(CONFIG, lanes=lanes, parallel=parallel, requant_mult=mult,
                     requant_shift=shift, stall_free=stall_free)
    got, _ = simulate(dut, ins, len(exp), gap=0.3, stall=0.3, seed=1,
                      writes=[(f, int(new[f])) for f in range(F)])
    assert got == exp
    # The old multipliers would not have produced this.
    assert stream_words(acc, mult, shift, lanes)[1] != exp


@pytest.mark.parametrize("shift, stall_free", [(36, False), (40, True)])
def test_largest_shifts(shift, stall_free):
    """Shifts beyond the product width: ``2**(shift-1)`` outgrows the product; mostly 0, some 1."""
    rng = np.random.default_rng(shift)
    mult = special_mults(rng)
    acc = np.concatenate([edge_acc(mult, shift, rng), random_acc(mult, shift, 8, rng)])
    ins, exp = stream_words(acc, mult, shift, 16)
    dut = Requantize(CONFIG, lanes=16, parallel=8, requant_mult=mult, requant_shift=shift,
                     stall_free=stall_free)
    got, _ = simulate(dut, ins, len(exp), gap=0.2, stall=0.5, seed=shift)
    assert got == exp


@pytest.mark.parametrize("lanes, parallel, stall_free", [(16, 16, False), (16, 16, True),
                                                        (4, 1, False), (4, 1, True)])
def test_latency_and_rate(lanes, parallel, stall_free):
    """First result exactly ``latency`` cycles after its beat; then one beat per ``steps``."""
    dut = Requantize(CONFIG, lanes=lanes, parallel=parallel, requant_mult=MODEL_MULT,
                     requant_shift=8, stall_free=stall_free)
    n = 3 * dut.fifo_depth + 8
    taken, offered = [], []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for t in range(n * dut.steps + 40):
            await ctx.delay(1e-9)
            if ctx.get(dut.o.valid):
                offered.append(t)
            if ctx.get(dut.i.valid) and ctx.get(dut.i.ready):
                taken.append(t)
            await ctx.tick()
            if len(taken) == n:
                ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(taken) == len(offered) == n
    assert offered[0] - taken[0] == dut.latency
    assert offered == [t + dut.latency for t in taken]
    assert taken == [taken[0] + k * dut.steps for k in range(n)]


# -- hardware-harness regressions -----------------------------------------------------------------

RANDOM_CASES = [
    # name, lanes, parallel, shift, digit (None: Requantize.DIGIT; 16: whole products, iCE40),
    # stall_free
    case("l1_p1_s1", 1, 1, 1, None, False),
    case("l4_p2_s28", 4, 2, 28, None, False),
    case("l16_p16_s23", 16, 16, 23, None, False),
    case("l4_p1_s23_d16", 4, 1, 23, 16, False),
    case("l4_p4_s9_d5", 4, 4, 9, 5, False),
    case("l8_p8_s23_d4_free", 8, 8, 23, 4, True),   # the deep pipeline's (ecp5-85f)
    # stall-free with parts: reassembly, credit
    case("l4_p1_s7_free", 4, 1, 7, None, True,
         slow="stall-free requantization with parts (no preset): its write-port and exact "
              "latency tests in the Amaranth simulator"),
]


@pytest.mark.parametrize("name, lanes, parallel, shift, digit, stall_free", RANDOM_CASES)
def test_random_and_edges(name, lanes, parallel, shift, digit, stall_free):
    rng = np.random.default_rng(sum(map(ord, name)))
    mult = special_mults(rng)
    edges = edge_acc(mult, shift, rng)
    # 2,000 random input beats (lanes * 2,000 random accumulators).
    rand = random_acc(mult, shift, 2000 * lanes // F, rng)
    acc = np.concatenate([edges, rand])
    # The edge set holds exact ties of both signs and both saturations.
    prod = edges * mult.astype(np.int64)
    tie = (prod % (1 << shift)) == (1 << (shift - 1))
    assert (tie & (prod > 0)).any() and (tie & (prod < 0)).any()
    act = golden.requantize(acc, mult, shift)
    assert (act == 0).any() and (act == 255).any()
    ins, exp = stream_words(acc, mult, shift, lanes)
    assert len(ins) >= 1000 + len(beats(edges, lanes))
    make = lambda: Requantize(CONFIG, lanes=lanes, parallel=parallel, requant_mult=mult,
                              requant_shift=shift, digit=digit, stall_free=stall_free)
    result = run_stream_test(f"requant_{name}", make, inputs=ins, expected=exp,
                             stalls=STALL_SWEEP)
    result.assert_ok()
    cycles = check_throughput(result, make(), len(ins))
    print(f"requant {name}: {len(ins)} beats in {cycles} cycles (no stalls)")


@needs_mnist
@slow_on_mnist
@pytest.mark.parametrize("parallel, stall_free", [(16, True), (4, False)])
def test_mnist_conv_acc_to_act(parallel, stall_free):
    """Real data: 6 MNIST test images back to back, ``conv_acc`` in, ``act`` out."""
    model = reference_model()
    images, _ = mnist_images("test", 6)
    inf = golden.infer_int(model, images)
    lanes = 16
    ins = pack_rows(beats(inf.conv_acc, lanes), WIDTHS.conv_acc)
    exp = pack_rows(beats(inf.act, lanes), WIDTHS.act)
    make = lambda: Requantize(model.config, lanes=lanes, parallel=parallel,
                              requant_mult=model.requant_mult,
                              requant_shift=model.requant_shift, stall_free=stall_free)
    result = run_stream_test(f"requant_mnist_p{parallel}", make, inputs=ins, expected=exp,
                             stalls=STALL_SWEEP)
    result.assert_ok()
    cycles = check_throughput(result, make(), len(ins))
    print(f"requant mnist p{parallel}: {len(ins)} beats in {cycles} cycles (no stalls)")
