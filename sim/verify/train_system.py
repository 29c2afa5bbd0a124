"""On-chip training in RTL simulation: training steps through :class:`TrainingAccelerator`,
every master compared with the golden trainer (``sim/reference/trainer.py``).

:func:`simulate_training` builds a :class:`TrainHarness` around the accelerator: the input words
(TRAIN images, DUMP beats, INFER images) sit in a file-backed ROM; the result stream, the dump
stream and a per-step cycle count are written to files by a simulation-only sink
(``sim/verify/sink.v``), so Python only loads, starts, waits for ``done`` and reads the files with numpy.
"""

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from amaranth import Instance, ClockSignal, Module, Mux, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...hw.accel import ResultLayout
from ...hw.train import TrainCommand, TrainInputLayout, TrainingAccelerator, parse_dump
from ..reference import golden
from .harness import xorshift32, payload_width
from .rtl_runner import BUILD, ROM_MODEL, build_verilog, run_cocotb
from ..reference.trainer import train_step


__all__ = ["TrainHarness", "input_words", "simulate_training", "golden_training",
           "train_bench", "readmemh_large_inits",
           "TrainRun", "compare_dumps", "SINK_MODEL"]

SINK_MODEL = Path(__file__).parent / "sink.v"


class TrainHarness(wiring.Component):
    """Drive a :class:`TrainingAccelerator` from a ROM file, sink its streams into files.

    ``in_gap``/``out_stall`` are 16-bit thresholds of random source gaps and sink stalls (both
    output streams), from xorshift32 generators seeded by ``seed``. ``done`` rises when
    ``n_results`` result words, ``n_dump`` dump words and ``n_steps`` step completions have
    been seen. The step file gets, per step, the cycles from the first pixel taken to
    ``step_done`` (the trainer's ``busy`` span plus one).
    """

    def __init__(self, dut, n_inputs, rom_file, folder, *, n_results, n_dump, n_steps):
        self._dut = dut
        self._n_in = n_inputs
        self._rom_file = rom_file
        self._folder = Path(folder)
        self._n = (n_results, n_dump, n_steps)
        super().__init__({
            "start": In(1), "in_gap": In(16), "out_stall": In(16), "seed": In(32),
            "done": Out(1), "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self._dut
        n_results, n_dump, n_steps = self._n
        running = Signal()
        rng_in, rng_o, rng_d = Signal(32, init=1), Signal(32, init=1), Signal(32, init=1)
        with m.If(self.start):
            m.d.sync += [running.eq(1), rng_in.eq(self.seed), rng_o.eq(self.seed ^ 0x9E3779B9),
                         rng_d.eq(self.seed ^ 0x7F4A7C15)]
        with m.Elif(running):
            m.d.sync += [rng_in.eq(xorshift32(rng_in)), rng_o.eq(xorshift32(rng_o)),
                         rng_d.eq(xorshift32(rng_d))]

        in_width = payload_width(dut.i)
        src_idx = Signal(32)
        src_valid = Signal()
        rom_data = Signal(in_width)
        m.submodules.rom = Instance("cnnforge_rom", p_WIDTH=in_width, p_DEPTH=self._n_in,
                                    p_FILE=str(self._rom_file), i_addr=src_idx, o_data=rom_data)
        m.d.comb += [dut.i.payload.eq(rom_data), dut.i.valid.eq(src_valid)]
        with m.If(running & (~src_valid | dut.i.ready)):
            next_idx = src_idx + (src_valid & dut.i.ready)
            m.d.sync += [src_idx.eq(next_idx),
                         src_valid.eq((next_idx < self._n_in) & (rng_in[:16] >= self.in_gap))]

        res_n, dump_n, step_n = Signal(32), Signal(32), Signal(32)
        step_cycles = Signal(32)
        m.d.sync += step_cycles.eq(Mux(dut.busy, step_cycles + 1, 0))
        m.d.comb += [
            dut.o.ready.eq(running & (rng_o[:16] >= self.out_stall)),
            dut.dump.ready.eq(running & (rng_d[:16] >= self.out_stall)),
            self.done.eq((res_n >= n_results) & (dump_n >= n_dump) & (step_n >= n_steps)),
        ]
        res_take = dut.o.valid & dut.o.ready
        dump_take = dut.dump.valid & dut.dump.ready
        with m.If(res_take):
            m.d.sync += res_n.eq(res_n + 1)
        with m.If(dump_take):
            m.d.sync += dump_n.eq(dump_n + 1)
        with m.If(dut.step_done):
            m.d.sync += step_n.eq(step_n + 1)
        with m.If(running & ~self.done):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        for name, en, value in (("results", res_take, dut.o.payload.as_value()),
                                ("dump", dump_take, dut.dump.payload),
                                ("steps", dut.step_done, step_cycles + 1)):
            m.submodules[f"sink_{name}"] = Instance(
                "cnnforge_sink", p_WIDTH=len(value), p_FILE=str(self._folder / f"{name}.txt"),
                i_clk=ClockSignal("sync"), i_en=en, i_flush=self.done, i_data=value)
        return m


_INIT_BLOCK = re.compile(r"  initial begin\n((?:    (\S+)\[(\d+)\] = (\d+)'h([0-9a-fA-F]+);\n)+)  end\n")


def readmemh_large_inits(text, folder, min_words=64):
    """Swap every memory ``initial`` block of ``min_words`` or more words in any module for a
    ``$readmemh`` of a hex file in ``folder``: the simulator's C++ compiler then never sees
    the (tens of thousands of) initial words of the masters and weights."""
    folder = Path(folder)
    count = [0]

    def swap(match):
        lines = match.group(1).splitlines()
        if len(lines) < min_words:
            return match.group(0)
        name = match.group(2)
        words = {}
        for line in lines:
            lhs, rhs = line.strip().rstrip(";").split(" = ")
            words[int(lhs[lhs.index("[") + 1:-1])] = rhs.split("'h")[1]
        if sorted(words) != list(range(len(words))):
            return match.group(0)
        count[0] += 1
        path = folder / f"init{count[0]}_{name}.hex"
        path.write_text("".join(words[i] + "\n" for i in range(len(words))))
        return f'  initial $readmemh("{path}", {name});\n'

    return _INIT_BLOCK.sub(swap, text)


def _pack(layout, columns):
    """Raw words of ``layout`` from numpy columns (one int64 array per field)."""
    word = None
    for name, fld in layout:
        width = Shape.cast(fld.shape).width
        v = (np.asarray(columns[name], np.int64) & ((1 << width) - 1)).astype(object) << fld.offset
        word = v if word is None else word + v
    return word


def input_words(config, images, labels, *, dump_every=1, dump_first=False, infer_images=(),
                infer_first=()):
    """Input words: ``infer_first`` images (``INFER``, back to back), then per training image its pixels (``TRAIN``, with the label), a ``DUMP`` beat
    after every ``dump_every``-th step (and before the first if ``dump_first``), then the
    ``INFER`` images. Returns a list of raw ints."""
    layout = TrainInputLayout(config)
    npx = config.input_size ** 2 * 1
    chunks = []

    def image_words(image, cmd, label):
        px = np.asarray(image, np.uint8).reshape(-1, config.in_channels).astype(np.int64)
        pixel = (px << (8 * np.arange(config.in_channels))).sum(axis=1)
        return _pack(layout, {"pixel": pixel, "label": np.full(len(pixel), label),
                              "cmd": np.full(len(pixel), cmd.value)}).tolist()

    dump = _pack(layout, {"pixel": [0], "label": [0], "cmd": [TrainCommand.DUMP.value]}).tolist()
    for image in infer_first:
        chunks.append(image_words(image, TrainCommand.INFER, 0))
    if dump_first:
        chunks.append(dump)
    for n, (image, label) in enumerate(zip(images, labels)):
        chunks.append(image_words(image, TrainCommand.TRAIN, int(label)))
        if dump_every and (n + 1) % dump_every == 0:
            chunks.append(dump)
    for image in infer_images:
        chunks.append(image_words(image, TrainCommand.INFER, 0))
    assert all(len(c) in (1, npx) for c in chunks)
    return [w for c in chunks for w in c]


def _read_hex(path):
    text = Path(path).read_text().split()
    return np.array([int(w, 16) for w in text], dtype=object)


@dataclass
class TrainRun:
    """What :func:`simulate_training` saw."""
    dumps: dict                  # parse_dump of every dump
    results: list = field(repr=False)   # raw result words
    logits: np.ndarray = None    # (images, classes)
    probs: np.ndarray = None
    cls: np.ndarray = None
    step_cycles: np.ndarray = None
    cycles: int = 0
    timed_out: bool = False
    seconds: float = 0.0


def simulate_training(name, state, parallelism, images, labels, *, grad_lanes=1, dump_every=1,
                      dump_first=False, infer_images=(), infer_first=(), in_gap=0.0,
                      out_stall=0.0, seed=1, max_cycles=None):
    """Train on ``images``/``labels`` in RTL (from ``state``, which is not changed).

    Returns a :class:`TrainRun`: the dumped masters (every ``dump_every`` steps), the result
    words of every image (the training images' forward passes, then ``infer_images``), the
    cycles of every training step. Result rows: ``infer_first``, the training images, then
    ``infer_images``. The ``ice40`` target's SPRAM is not simulated here (the
    trainer writes only the words it updates): ``target`` is taken as ``generic``.
    """
    start = time.perf_counter()
    config = state.config
    if parallelism.target == "ice40":
        from ...hw.accel import Parallelism
        d = parallelism.to_dict()
        d["target"] = "generic"
        parallelism = Parallelism(**d)
    folder = BUILD / name
    folder.mkdir(parents=True, exist_ok=True)
    words = input_words(config, images, labels, dump_every=dump_every, dump_first=dump_first,
                        infer_images=infer_images, infer_first=infer_first)
    rom_file = (folder / "rom.hex").resolve()
    rom_file.write_text("".join(f"{w:x}\n" for w in words))
    n_images = len(images) + len(infer_images) + len(infer_first)
    n_dumps = (len(images) // dump_every if dump_every else 0) + int(dump_first)
    dut = TrainingAccelerator(state, parallelism, grad_lanes=grad_lanes)
    n_dump_words = n_dumps * dut.trainer.dump_words
    harness = TrainHarness(dut, len(words), rom_file, folder.resolve(),
                           n_results=n_images * config.classes, n_dump=n_dump_words,
                           n_steps=len(images))
    for f in ("results", "dump", "steps"):
        (folder / f"{f}.txt").unlink(missing_ok=True)
    path = build_verilog(harness, name)
    path.write_text(readmemh_large_inits(path.read_text(), folder.resolve()))
    if max_cycles is None:
        per_image = 40 * config.input_size ** 2 + 4 * config.classes * config.features \
            + 2 * dut.trainer.dump_words + 20_000
        max_cycles = int(per_image * (n_images + 1) / max(0.05, 1 - max(in_gap, out_stall)))
    job = {"in_gap": round(in_gap * 65536), "out_stall": round(out_stall * 65536),
           "seed": seed, "max_cycles": max_cycles, "drain": 64,
           "out": str(folder / "run.json")}
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    run_cocotb(name, [path, ROM_MODEL, SINK_MODEL], "top", "cnnforge.sim.verify.tb_train",
               {"CNNFORGE_TB_JOB": job_path})
    info = json.loads((folder / "run.json").read_text())
    results = _read_hex(folder / "results.txt")
    dumps = _read_hex(folder / "dump.txt")
    steps = _read_hex(folder / "steps.txt")
    run = TrainRun(dumps=parse_dump(config, dumps[:len(dumps) - len(dumps) %
                                                  dut.trainer.dump_words]) if len(dumps) else {},
                   results=list(results), step_cycles=np.asarray(steps, np.int64),
                   cycles=info["cycles"], timed_out=info["timed_out"])
    layout = ResultLayout(config)
    if len(results):
        cols = {}
        r = np.asarray(results, dtype=object)
        for fname, fld in layout:
            width = Shape.cast(fld.shape).width
            v = np.array([(int(x) >> fld.offset) & ((1 << width) - 1) for x in r], np.int64)
            if Shape.cast(fld.shape).signed:
                v = v - ((v >> (width - 1)) << width)
            cols[fname] = v
        n = len(r) // config.classes
        run.logits = cols["logit"][:n * config.classes].reshape(n, config.classes)
        run.probs = cols["prob"][:n * config.classes].reshape(n, config.classes)
        run.cls = cols["cls"][:n * config.classes].reshape(n, config.classes)[:, 0]
    run.seconds = round(time.perf_counter() - start, 1)
    return run


def golden_training(state, images, labels, *, dump_every=1, dump_first=False):
    """The golden trainer on the same steps: ``(final state, dumps dict, logits, probs)``, with
    dumps in the layout of :func:`parse_dump` (taken where the RTL dumps)."""
    state = state.copy()
    keys = ("dense_m", "dense_b", "conv_m", "conv_b", "lfsr")
    dumps = {k: [] for k in keys}
    logits, probs = [], []

    def snap():
        dumps["dense_m"].append(state.dense_m.copy())
        dumps["dense_b"].append(state.dense_b.copy())
        dumps["conv_m"].append(state.conv_m.reshape(state.config.filters, -1).copy())
        dumps["conv_b"].append(state.conv_b.copy())
        dumps["lfsr"].append(state.lfsr.state)

    if dump_first:
        snap()
    for n, (image, label) in enumerate(zip(images, labels)):
        step = train_step(state, image, int(label))
        logits.append(step.logits)
        probs.append(step.probs)
        if dump_every and (n + 1) % dump_every == 0:
            snap()
    return state, {k: np.asarray(v, np.int64) for k, v in dumps.items()}, \
        np.asarray(logits), np.asarray(probs)


def compare_dumps(rtl, ref):
    """``None`` if equal, else a message naming the first differing dump, tensor and index."""
    for name in ("dense_m", "dense_b", "conv_m", "conv_b", "lfsr"):
        a, b = np.asarray(rtl.get(name)), np.asarray(ref[name])
        if a.shape != b.shape:
            return f"{name}: RTL shape {a.shape}, golden {b.shape}"
        bad = np.argwhere(a != b)
        if len(bad):
            idx = tuple(int(i) for i in bad[0])
            return (f"{name}: {len(bad)} values differ; first at dump {idx[0]} index {idx[1:]}: "
                    f"RTL {a[idx]}, golden {b[idx]}")
    return None


def train_bench(preset, train_images, train_labels, *, steps=10, grad_lanes=None,
                rounding="nearest", check=True, test_images=(), test_labels=(), log=print):
    """Cycles per training step of a preset in RTL (random init, the first ``steps`` of
    ``train_images``, a dump after the last step, then ``test_images`` classified); with
    ``check`` the final masters and every forward result are compared with the golden trainer.
    Returns a dict for ``make bench``."""
    from ...hw.accel import PRESETS
    from ...hw.params import NetworkConfig, TrainFormat
    from ..reference.trainer import init_random
    grad_lanes = PRESETS[preset].grad_lanes if grad_lanes is None else grad_lanes
    x, y = train_images, train_labels
    state = init_random(NetworkConfig(), TrainFormat(rounding=rounding))
    infer, infer_labels = test_images, test_labels
    run = simulate_training(f"train_bench_{preset}_{rounding}_g{grad_lanes}", state,
                            PRESETS[preset], x[:steps], y[:steps], grad_lanes=grad_lanes,
                            dump_every=steps, infer_images=infer)
    out = {"preset": preset, "grad_lanes": grad_lanes, "rounding": rounding, "steps": steps,
           "cycles_per_step": float(np.mean(run.step_cycles)),
           "cycles_per_step_max": int(run.step_cycles.max()), "seconds": run.seconds}
    if check:
        final, ref, logits, probs = golden_training(state, x[:steps], y[:steps],
                                                    dump_every=steps)
        problem = compare_dumps(run.dumps, ref)
        out["bit_exact"] = problem is None and np.array_equal(run.logits[:steps], logits) \
            and np.array_equal(run.probs[:steps], probs)
        if problem:
            log(f"MISMATCH: {problem}")
        if len(infer):
            out["test_accuracy"] = float(np.mean(run.cls[steps:] == infer_labels))
            out["test_accuracy_golden"] = float(np.mean(
                golden.predict_int(final.model(), infer) == infer_labels))
    log(f"{preset} (grad_lanes {grad_lanes}, {rounding}): {out['cycles_per_step']:.0f} cycles "
        f"per training step over {steps} steps" +
        (f", bit-exact: {out['bit_exact']}" if check else "") + f" ({run.seconds} s)")
    return out
