"""Run MNIST images through the whole accelerator in RTL simulation and compare with golden."""

import concurrent.futures
import multiprocessing
import time

import numpy as np
from amaranth import Module, Shape
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...hw.accel import Accelerator, ResultLayout, model_writes
from ...hw.model import QuantNetwork
from ...hw.network import NetworkResultLayout, network_accelerator, network_writes
from ..reference import golden
from .rtl_runner import ice40_cells_sim, run_stream_test


__all__ = ["ModelLoader", "stream_words", "cycle_budget", "simulate", "simulate_chunked",
           "network_stream_words", "simulate_network"]


class ModelLoader(wiring.Component):
    """Test wrapper: one input stream carrying pixels and model writes for an Accelerator.

    Payload ``write`` 0: a pixel (``data`` low byte(s)); 1: a model word (``memory``, ``addr``,
    ``data``) for the accelerator's write port, taken in the cycle it is presented. Lets the
    harness ROM load a model (e.g. the SPRAM dense weights of the iCE40 target) before the
    images, as the board's host link does.
    """

    def __init__(self, accel):
        self._accel = accel
        self.layout = data.StructLayout({"write": 1, "memory": accel.mw.memory.shape(),
                                         "addr": 16,
                                         "data": max(accel.mw_data_bits,
                                                     accel.i.payload.shape().size)})
        super().__init__({"i": In(stream.Signature(self.layout)),
                          "o": Out(stream.Signature(accel.o.payload.shape()))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self._accel
        wiring.connect(m, wiring.flipped(self.o), accel=accel.o)
        p = self.i.payload
        m.d.comb += [
            accel.i.payload.eq(p.data),
            accel.i.valid.eq(self.i.valid & ~p.write),
            self.i.ready.eq(p.write | accel.i.ready),
            accel.mw.en.eq(self.i.valid & p.write),
            accel.mw.memory.eq(p.memory),
            accel.mw.addr.eq(p.addr),
            accel.mw.data.eq(p.data),
        ]
        return m


def stream_words(model, images):
    """Harness input words and expected result words (raw bits) for ``images``; and the golden
    result. Packed with numpy: 10,000 images are 7.8 million input words."""
    ref = golden.infer_int(model, images)
    config = model.config
    pixels = np.asarray(images, np.uint8).reshape(-1, config.in_channels).astype(np.int64)
    shifts = 8 * np.arange(config.in_channels)
    inputs = (pixels << shifts).sum(axis=1).tolist()
    return inputs, _result_words(ResultLayout(config), ref, config.classes), ref


def _result_words(layout, ref, classes):
    """The result stream's words (raw bits of ``layout``) of the golden result ``ref``."""
    fields = {name: (field.offset, Shape.cast(field.shape).width) for name, field in layout}
    columns = {
        "logit": ref.logits.astype(np.int64),
        "prob": ref.probs.astype(np.int64),
        "cls": np.repeat(ref.cls.astype(np.int64)[:, None], classes, axis=1),
    }
    words = [((columns[name] & ((1 << width) - 1)).astype(object) << offset)
             for name, (offset, width) in fields.items()]
    return sum(words).reshape(-1).tolist()


def cycle_budget(accel, config, images, stalls=((0.0, 0.0),), words=0):
    """Cycles a run of ``images`` may take before it counts as hung: twice the accelerator's
    sustained cycles per image (:attr:`~cnnforge.hw.accel.Accelerator.cycles_per_image`, at
    least one pixel per cycle) plus a softmax's worth per image, for the images and two more
    (the pipeline's fill and drain), stretched by the worst random gap or stall of ``stalls``,
    plus one cycle per input word (``words``: model writes)."""
    per_image = 2 * max(accel.cycles_per_image, config.input_size ** 2) + 100 * config.classes
    slowest = max(max(stall) for stall in stalls)
    return int(per_image * (images + 2) / max(0.05, 1 - slowest)) + words


def simulate(name, model, parallelism, images, labels=None, *, stalls=((0.0, 0.0),),
             load_model=None):
    """Simulate ``images`` back to back; assert every result word; return the statistics.

    ``load_model``: a QuantModel written through the model write port before the images (the
    accelerator is built with ``model``'s contents, or with no dense weights for the ``ice40``
    target, whose SPRAM starts empty). The ``ice40`` target simulates the vendor primitives
    with Yosys's models and needs ``load_model``.

    Returns ``{"images", "cycles", "cycles_per_image", "mismatches", "accuracy", "seconds"}``
    for the first (normally the no-stall) run; ``cycles`` count from the first pixel
    (the model writes, one per cycle, subtracted).
    """
    start = time.perf_counter()
    golden_model = model if load_model is None else load_model
    inputs, expected, ref = stream_words(golden_model, images)
    extra = []
    if parallelism.target == "ice40":
        if load_model is None:
            raise ValueError("the ice40 target's SPRAM starts empty: pass load_model")
        cells = ice40_cells_sim()
        if cells is None:
            raise RuntimeError("the ice40 target needs Yosys's share/ice40/cells_sim.v")
        extra.append(cells)
    writes = []
    accel = Accelerator(model, parallelism)
    if load_model is None:
        factory = lambda: accel
    else:
        writes = [{"write": 1, "memory": mem, "addr": a, "data": w}
                  for mem, a, w in model_writes(load_model, parallelism)]
        inputs = writes + [{"write": 0, "memory": 0, "addr": 0, "data": p} for p in inputs]
        factory = lambda: ModelLoader(accel)
    result = run_stream_test(name, factory, inputs=inputs,
                             expected=expected, stalls=stalls,
                             max_cycles=cycle_budget(accel, model.config, len(images), stalls,
                                                     len(inputs)),
                             extra_sources=extra)
    return _statistics(result, len(writes), ref, labels, start)


def _statistics(result, writes, ref, labels, start):
    """The statistics of :func:`simulate` from a stream run (asserted) that began with
    ``writes`` model words."""
    run = result.runs[0]
    run.cycles -= writes          # the no-stall run takes one model word per cycle
    mismatches = sum(g != e for g, e in zip(run.words, result.expected))
    mismatches += abs(len(result.expected) - run.received)
    result.assert_ok()
    images = len(ref.cls)
    stats = {"images": images, "cycles": run.cycles,
             "cycles_per_image": run.cycles / images, "mismatches": mismatches,
             "seconds": round(time.perf_counter() - start, 1)}
    if labels is not None:
        stats["accuracy"] = float(np.mean(ref.cls == np.asarray(labels)))
    return stats


def _simulate_part(name, model, parallelism, images, labels):
    """One chunk of :func:`simulate_chunked` (a worker process's task)."""
    run = simulate_network if isinstance(model, QuantNetwork) else simulate
    return run(name, model, parallelism, images, labels)


def simulate_chunked(name, model, parallelism, images, labels=None, *, chunk=1000, jobs=1,
                     log=None):
    """:func:`simulate` (:func:`simulate_network` for a
    :class:`~cnnforge.hw.model.QuantNetwork` and its
    :class:`~cnnforge.hw.network.LayerParallelism`) in chunks of ``chunk`` images, ``jobs`` of
    them at a time, each in its own process. Each of the ``jobs`` slots has its own simulator
    build (``<name>`` for the first, ``<name>_j<k>`` for the others), which serves every chunk it
    runs: the images reach it as a ROM file. Cycles add up over the chunks, so each chunk's
    pipeline fill (about one image) is counted. Same statistics as :func:`simulate`; a chunk whose
    words disagree raises its AssertionError once the chunks running beside it are done."""
    start = time.perf_counter()
    total = {"images": 0, "cycles": 0, "mismatches": 0, "correct": 0}
    parts = [slice(first, first + chunk) for first in range(0, len(images), chunk)]
    slots = [name] + [f"{name}_j{k}" for k in range(1, max(1, jobs))]

    def add(stats):
        total["images"] += stats["images"]
        total["cycles"] += stats["cycles"]
        total["mismatches"] += stats["mismatches"]
        if labels is not None:
            total["correct"] += round(stats["accuracy"] * stats["images"])
        if log is not None:
            log(f"  {total['images']} images: {total['mismatches']} mismatching words, "
                f"{total['cycles'] / total['images']:.0f} cycles/image")

    def task(slot, part):
        return (slot, model, parallelism, images[part], None if labels is None else labels[part])

    if len(slots) == 1 or len(parts) == 1:
        for part in parts:
            add(_simulate_part(*task(slots[0], part)))
    else:
        # Python stays off the simulators' path: each process elaborates, builds its Verilator
        # model once and streams its chunks' ROM files through it.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(len(slots), mp_context=context) as pool:
            free, running = list(slots), {}
            waiting = list(parts)
            try:
                while waiting or running:
                    while waiting and free:
                        slot = free.pop(0)
                        running[pool.submit(_simulate_part, *task(slot, waiting.pop(0)))] = slot
                    done, _ = concurrent.futures.wait(
                        running, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        free.append(running.pop(future))
                        add(future.result())
            except BaseException:
                for future in running:
                    future.cancel()
                raise
    correct = total.pop("correct")
    total["cycles_per_image"] = total["cycles"] / max(1, total["images"])
    if labels is not None:
        total["accuracy"] = correct / max(1, total["images"])
    total["seconds"] = round(time.perf_counter() - start, 1)
    return total


def network_stream_words(qnet, images):
    """:func:`stream_words` for a :class:`~cnnforge.hw.model.QuantNetwork`: harness input words
    (pixels), expected result words and the golden result."""
    ref = golden.infer_int(qnet, images)
    network = qnet.network
    channels = network.input[2]
    pixels = golden.as_images(images, network.input).reshape(-1, channels).astype(np.int64)
    inputs = (pixels << (8 * np.arange(channels))).sum(axis=1).tolist()
    return inputs, _result_words(NetworkResultLayout(network), ref, network.classes), ref


def simulate_network(name, qnet, parallelism, images, labels=None, *, stalls=((0.0, 0.0),),
                     load=None):
    """:func:`simulate` for a layer-list accelerator (:class:`NetworkAccelerator`): ``images``
    back to back, every result word asserted; ``load`` a :class:`QuantNetwork` written through
    the model write port first (the accelerator is built with ``qnet``'s contents). Same
    statistics as :func:`simulate`."""
    if not isinstance(qnet, QuantNetwork):
        raise TypeError(f"qnet must be a QuantNetwork, not {qnet!r}")
    start = time.perf_counter()
    accel = network_accelerator(qnet, parallelism)
    extra = []
    if parallelism.target == "ice40":
        # SB_MAC16 and SB_SPRAM256KA: Yosys's models. The SPRAM starts empty: the model is
        # written through the write port first, as the board's host link does.
        load = qnet if load is None else load
        cells = ice40_cells_sim()
        if cells is None:
            raise RuntimeError("the ice40 target needs Yosys's share/ice40/cells_sim.v")
        extra.append(cells)
    inputs, expected, ref = network_stream_words(qnet if load is None else load, images)
    writes = []
    if load is None:
        factory = lambda: accel
    else:
        writes = [{"write": 1, "memory": mem, "addr": a, "data": w}
                  for mem, a, w in network_writes(load, parallelism)]
        inputs = writes + [{"write": 0, "memory": 0, "addr": 0, "data": p} for p in inputs]
        factory = lambda: ModelLoader(accel)
    side = qnet.network.input[0]
    per_image = 2 * max(accel.cycles_per_image, side * side) + 100 * qnet.network.classes
    slowest = max(max(stall) for stall in stalls)
    budget = int(per_image * (len(images) + 2 * len(parallelism.stages)) / max(0.05, 1 - slowest))
    result = run_stream_test(name, factory, inputs=inputs, expected=expected, stalls=stalls,
                             max_cycles=budget + len(inputs), extra_sources=extra)
    return _statistics(result, len(writes), ref, labels, start)
