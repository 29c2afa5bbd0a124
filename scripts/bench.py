"""``make bench`` and ``make sim-full``: cycles per image measured in RTL simulation.

Each configuration's accelerator runs MNIST test images back to back in Verilator; cycles per
image are the harness's cycle count (first pixel offered to last result taken) divided by the
images, so pipeline fill is included. Simulation uses the portable datapath for every target
(the iCE40 dual-SB_MAC16 lanes are proved equal to it in tests/test_mac.py).
"""

import json
import time
from pathlib import Path


from . import mnist
from .errors import CnnforgeError
from .fsutil import atomic_write_text
from .report import markdown_table


__all__ = ["bench", "sim_full"]


def _generic(par):
    from .hw.accel import Parallelism
    return Parallelism(**{**par.to_dict(), "target": "generic"})


def golden_images_per_second(model, images):
    from .sim.reference.golden import predict_int
    start = time.perf_counter()
    predict_int(model, images)
    return len(images) / (time.perf_counter() - start)


def bench(mnist_dir=None, images=200, presets=("up5k", "ecp5-85f"), out="build", train_steps=10,
          log=print):
    from .hw.accel import PRESETS
    from .sim.reference import model_file
    from .sim.verify.system import simulate
    from .sim.verify.train_system import train_bench
    model = model_file.load()
    test_x, test_y = mnist.load("test", mnist_dir)
    train_x, train_y = mnist.load("train", mnist_dir) if train_steps else (None, None)
    x, y = test_x[:images], test_y[:images]
    cpu_rate = golden_images_per_second(model, test_x)
    rows = []
    for name in presets:
        par = PRESETS[name]
        stats = simulate(f"bench_{name}", model, _generic(par), x, y)
        util = model.config.macs / (par.multipliers(model.config) * stats["cycles_per_image"])
        rows.append({"config": name, **par.to_dict(), "multipliers": par.multipliers(model.config),
                     "cycles_per_image": round(stats["cycles_per_image"], 1),
                     "multiplier_utilization": round(util, 4),
                     "images": stats["images"], "accuracy": stats["accuracy"],
                     "mismatches": stats["mismatches"],
                     "golden_cpu_images_per_s": round(cpu_rate, 1)})
        log(f"{name}: {stats['cycles_per_image']:.0f} cycles/image over {stats['images']} images")
        if train_steps:
            # On-chip training (hw/train.py): forward + backward + update of one image, from the
            # random init, the final masters checked against the golden trainer.
            t = train_bench(name, train_x, train_y, steps=train_steps, log=log)
            if not t["bit_exact"]:
                raise CnnforgeError(f"{name}: the training RTL disagrees with the golden trainer")
            rows[-1].update({"train_grad_lanes": t["grad_lanes"], "train_steps": t["steps"],
                             "train_cycles_per_step": round(t["cycles_per_step"], 1),
                             "train_to_inference": round(t["cycles_per_step"]
                                                         / stats["cycles_per_image"], 2)})
    out = Path(out)
    atomic_write_text(out / "bench.json", json.dumps({"macs_per_image": model.config.macs,
                                                       "configs": rows}, indent=1))
    table = markdown_table(
        ["config", "multipliers", "cycles/image", "multiplier utilization", "images simulated",
         "accuracy", "training cycles/step", "training / inference", "golden numpy images/s (CPU)"],
        [(r["config"], r["multipliers"], r["cycles_per_image"],
          f"{100 * r['multiplier_utilization']:.1f} %", r["images"],
          f"{100 * r['accuracy']:.2f} %", r.get("train_cycles_per_step", "-"),
          f"{r['train_to_inference']:.2f} x" if "train_to_inference" in r else "-",
          r["golden_cpu_images_per_s"]) for r in rows])
    atomic_write_text(out / "bench.md", table + "\n")
    log(table)
    return rows


def sim_full(mnist_dir=None, images=10_000, preset="up5k", log=print):
    from .hw.accel import PRESETS
    from .sim.reference import model_file
    from .sim.verify.system import simulate_chunked
    model = model_file.load()
    x, y = mnist.load("test", mnist_dir)
    log(f"simulating {min(images, len(x))} test images through the {preset} accelerator RTL "
        f"(Verilator)...")
    try:
        stats = simulate_chunked(f"sim_full_{preset}", model, _generic(PRESETS[preset]),
                                 x[:images], y[:images], log=log)
    except AssertionError as e:
        raise CnnforgeError(f"the RTL disagrees with the golden model: {e}") from None
    log(f"{stats['images']} images, {stats['mismatches']} mismatching result words, "
        f"accuracy {100 * stats['accuracy']:.2f} %, {stats['cycles_per_image']:.0f} cycles/image, "
        f"{stats['seconds']} s")
    return stats
