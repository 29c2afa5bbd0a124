"""Run MNIST images through the whole accelerator in RTL simulation and compare with golden."""

import time

import numpy as np

from ..hw.accel import Accelerator, ResultLayout
from . import golden
from .rtl_runner import run_stream_test


__all__ = ["stream_words", "simulate"]


def stream_words(model, images):
    """Harness input words and expected result words for ``images``; and the golden result."""
    ref = golden.infer_int(model, images)
    inputs = [[int(p)] for p in np.asarray(images, np.uint8).reshape(-1)]
    expected = [{"logit": int(ref.logits[n, k]), "prob": int(ref.probs[n, k]),
                 "cls": int(ref.cls[n])}
                for n in range(len(images)) for k in range(model.config.classes)]
    return inputs, expected, ref


def simulate(name, model, parallelism, images, labels=None, *, stalls=((0.0, 0.0),)):
    """Simulate ``images`` back to back; assert every result word; return the statistics.

    Returns ``{"images", "cycles", "cycles_per_image", "mismatches", "accuracy", "seconds"}``
    for the first (normally the no-stall) run.
    """
    start = time.perf_counter()
    inputs, expected, ref = stream_words(model, images)
    result = run_stream_test(name, lambda: Accelerator(model, parallelism), inputs=inputs,
                             expected=expected, stalls=stalls,
                             max_cycles=60_000 * len(images) + 100_000)
    run = result.runs[0]
    mismatches = sum(g != e for g, e in zip(run.words, result.expected))
    mismatches += abs(len(result.expected) - run.received)
    result.assert_ok()
    stats = {"images": len(images), "cycles": run.cycles,
             "cycles_per_image": run.cycles / len(images), "mismatches": mismatches,
             "seconds": round(time.perf_counter() - start, 1)}
    if labels is not None:
        stats["accuracy"] = float(np.mean(ref.cls == np.asarray(labels)))
    return stats
