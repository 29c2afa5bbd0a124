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
    networks = network_rows(mnist_dir, presets, min(images, NETWORK_BENCH_IMAGES), log=log)
    out = Path(out)
    atomic_write_text(out / "bench.json", json.dumps({"macs_per_image": model.config.macs,
                                                       "configs": rows, "networks": networks},
                                                      indent=1))
    table = markdown_table(
        ["config", "multipliers", "cycles/image", "multiplier utilization", "images simulated",
         "accuracy", "training cycles/step", "training / inference", "golden numpy images/s (CPU)"],
        [(r["config"], r["multipliers"], r["cycles_per_image"],
          f"{100 * r['multiplier_utilization']:.1f} %", r["images"],
          f"{100 * r['accuracy']:.2f} %", r.get("train_cycles_per_step", "-"),
          f"{r['train_to_inference']:.2f} x" if "train_to_inference" in r else "-",
          r["golden_cpu_images_per_s"]) for r in rows])
    network_table = markdown_table(
        ["network", "config", "multipliers", "cycles/image (sim)", "sustained (model)",
         "MACs / multipliers", "x the bound", "images", "mismatching words"],
        [(r["network"], r["config"], r["multipliers"], r["cycles_per_image"],
          r["sustained_cycles_per_image"], r["multiplier_bound"], f"{r['bound_ratio']:.2f}",
          r["images"], r["mismatches"]) for r in networks])
    atomic_write_text(out / "bench.md", table + "\n\n" + network_table + "\n")
    log(table)
    log(network_table)
    return rows


#: Images per layer-list row of `make bench` (a lenet image is 20,000 to 160,000 cycles).
NETWORK_BENCH_IMAGES = 20


def network_rows(mnist_dir, presets, images, *, networks=("lenet",), log=print):
    """``make bench``'s layer-list rows: each committed network on the layer-list accelerator
    as built for each preset (:func:`~cnnforge.hw.network.preset_parallelism`),
    ``images`` test images in RTL, cycles per image against the multiplier bound (MACs per
    image over multipliers)."""
    from . import datasets
    from .evaluate import dataset_of
    from .hw.network import preset_parallelism
    from .sim.reference import model_file
    from .sim.verify.system import simulate_network
    from .train import model_path
    rows = []
    for network in networks:
        qnet, info = model_file.load_network(model_path(network), with_info=True)
        x, y = datasets.load(dataset_of(qnet, info), "test", mnist_dir)
        for preset in presets:
            par = preset_parallelism(qnet.network, preset)
            stats = simulate_network(f"bench_{network}_{preset}", qnet, par, x[:images],
                                     y[:images])
            bound = qnet.network.total_macs / par.multipliers
            rows.append({"network": network, "config": preset, "multipliers": par.multipliers,
                         "lanes": par.to_dict(),
                         "cycles_per_image": round(stats["cycles_per_image"], 1),
                         "sustained_cycles_per_image": par.cycles_per_image,
                         "multiplier_bound": round(bound), "images": stats["images"],
                         "bound_ratio": round(stats["cycles_per_image"] / bound, 3),
                         "mismatches": stats["mismatches"], "accuracy": stats["accuracy"]})
            log(f"{network} {preset}: {stats['cycles_per_image']:.0f} cycles/image "
                f"({par.multipliers} multipliers; bound {bound:.0f})")
    return rows


def sim_full(mnist_dir=None, images=10_000, preset="up5k", log=print, model_path=None,
             multipliers=None, jobs=1):
    """Test images through the RTL, every result word checked against the golden model. The
    seed network (the default model) runs on ``preset``'s accelerator; any other model file on
    the layer-list accelerator (:mod:`cnnforge.hw.network`) as built for ``preset``
    (:func:`~cnnforge.hw.network.preset_parallelism`), or with ``multipliers`` balanced over its
    layers. ``jobs``: chunks of 1,000 images simulated side by side, one process each."""
    from . import datasets
    from .evaluate import dataset_of
    from .hw.accel import PRESETS
    from .hw.network import LayerParallelism, preset_parallelism
    from .hw.params import ConfigError
    from .sim.reference import model_file
    from .sim.verify.system import simulate_chunked
    qnet, info = model_file.load_network(model_path, with_info=True)
    name = "seed" if model_path is None else Path(model_path).stem
    try:
        model, par = qnet.seed_model(), _generic(PRESETS[preset])
        if multipliers is not None:
            raise ConfigError("a multiplier budget asks for the layer-list accelerator")
        what = f"the {preset} accelerator"
    except ConfigError:
        try:
            model, par = qnet, (preset_parallelism(qnet.network, preset) if multipliers is None
                                else LayerParallelism.balanced(qnet.network, multipliers))
        except ConfigError as e:
            raise CnnforgeError(f"{model_path}: {e}") from None
        how = ("folded: every layer on one MAC array" if par.pipeline == "folded" else
               f"{par.pipeline} pipeline")
        what = (f"the layer-list accelerator ({par.multipliers} multipliers, {how}, target "
                f"{par.target}, {par.cycles_per_image:,} cycles/image sustained)")
    x, y = datasets.load(dataset_of(qnet, info), "test", mnist_dir)
    log(f"simulating {min(images, len(x))} test images of {name} through {what} in RTL "
        f"(Verilator, {jobs} job{'s' if jobs > 1 else ''})...")
    try:
        stats = simulate_chunked(f"sim_full_{name}_{preset}", model, par,
                                 x[:images], y[:images], jobs=jobs, log=log)
    except AssertionError as e:
        raise CnnforgeError(f"the RTL disagrees with the golden model: {e}") from None
    log(f"{stats['images']} images, {stats['mismatches']} mismatching result words, "
        f"accuracy {100 * stats['accuracy']:.2f} %, {stats['cycles_per_image']:.0f} cycles/image, "
        f"{stats['seconds']} s")
    return stats
