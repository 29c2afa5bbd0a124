"""``cnnforge explore MODEL --board B``: the design space of a model's layer-list accelerator on a
board — every balanced parallelism from one multiplier per layer to as many as the layers can
use, each through :func:`cnnforge.boards.check.check` (cycles per image, block RAM) — written as
``build/explore/<model>-<board>.{json,csv,png}``; the best point that fits is printed.

On the iCE40 the sweep is the folded mapping's lanes (two products per SB_MAC16). Points are
placed by their logic as the check estimates it before synthesis (ECP5 ``TRELLIS_COMB``, iCE40
logic cells; :mod:`cnnforge.boards.logic`), and "fits" means logic, block RAM, DSPs and SPRAM.
"""

import csv
import io
import json
import math
from pathlib import Path

from .errors import CnnforgeError
from .fsutil import atomic_write_bytes, atomic_write_text


__all__ = ["explore", "explore_cli"]


def _budgets(network):
    """Multiplier budgets from one per layer to what the layers can use, about 25 % apart."""
    from .hw.network import ConvStage, stages
    useful = 0
    for stage in stages(network):
        if isinstance(stage, ConvStage):
            useful += stage.conv.filters * stage.conv.in_channels
        else:
            useful += stage.dense.features
    budget, out = len(stages(network)), []
    while budget < useful:
        out.append(budget)
        budget = max(budget + 1, math.ceil(budget * 1.25))
    return out + [useful]


def explore(qnet, board, log=print):
    """The sweep: a list of points (dicts), each with ``multipliers``, ``cycles_per_image``,
    ``images_per_s``, ``block_ram``, ``fits``, ``default`` and the ``lanes``."""
    from .boards.board import get_board
    from .boards.check import check
    from .hw.network import LayerParallelism, preset_parallelism
    from .hw.accel import PRESETS
    from .hw.network import DEEP_MAX_WEIGHT_WORDS
    from .hw.folded import FoldedMapping
    from .hw.params import ConfigError
    spec = get_board(board)
    default = check(qnet, board)          # refuses boards the generator does not build for
    if default["totals"]["logic"] is None:
        raise CnnforgeError(f"{board}: explore plots images/s against logic, which is not "
                            f"estimated for the {spec.family.name} family yet (no calibration)")
    plans = {}
    if spec.family.name == "ice40":
        # The folded mapping: lanes of the shared MAC array (one SB_MAC16 and two products
        # each; the weights need lanes / 2 SPRAMs).
        for lanes in range(2, 17, 2):
            try:
                par = FoldedMapping(qnet.network, lanes, target="ice40")
            except ConfigError:
                continue
            plans.setdefault(json.dumps(par.to_dict(), sort_keys=True), par)
    else:
        pipeline = PRESETS[spec.preset].pipeline
        deepest = DEEP_MAX_WEIGHT_WORDS if pipeline == "deep" else None
        for budget in _budgets(qnet.network):
            par = LayerParallelism.balanced(qnet.network, budget, pipeline=pipeline,
                                            max_weight_words=deepest)
            plans.setdefault(json.dumps(par.to_dict(), sort_keys=True), par)
    chosen = json.dumps(preset_parallelism(qnet.network, spec.preset).to_dict(), sort_keys=True)
    points = []
    for key, par in plans.items():
        r = default if key == chosen else check(qnet, board, parallelism=par)
        t = r["totals"]
        points.append({"multipliers": t["multipliers"], "cycles_per_image": t["cycles_per_image"],
                       "logic": t["logic"], "logic_available": t["logic_available"],
                       "logic_name": t["logic_name"],
                       "block_ram_name": t["block_ram_name"], "problem": r["problem"],
                       "images_per_s": round(t["images_per_s"], 1),
                       "block_ram": t["block_ram"], "block_ram_available": t["block_ram_available"],
                       "fits": r["fits"], "default": key == chosen,
                       "lanes": par.to_dict()})
        log(f"  {t['multipliers']:5d} multipliers: {t['cycles_per_image']:>9,} cycles/image, "
            f"logic about {t['logic']:,}, {t['block_ram']} {t['block_ram_name']}"
            f"{'' if r['fits'] else ' (' + r['problem'] + ')'}")
    points.sort(key=lambda p: (p["multipliers"], p["cycles_per_image"]))
    return points


def _plot(points, title):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for fits, marker, label in ((True, "o", "fits"), (False, "x", "does not fit")):
        sel = [p for p in points if p["fits"] == fits]
        if sel:
            ax.plot([p["logic"] for p in sel], [p["images_per_s"] for p in sel], marker,
                    linestyle="none", label=label)
    for p in points:
        if p["default"]:
            ax.plot(p["logic"], p["images_per_s"], "o", markersize=14, fillstyle="none",
                    color="red", label="default (the board preset's budget)")
    if points:
        ax.axvline(points[0]["logic_available"], color="grey", linestyle="--",
                   label="the device's logic")
    ax.set_xscale("log")
    ax.set_yscale("log")
    name = points[0]["logic_name"] if points else "logic"
    ax.set_xlabel(f"logic ({name}), estimated before synthesis")
    ax.set_ylabel("images/s at the board's clock (compute-bound)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def explore_cli(model_path, board, out_dir="build/explore", log=print):
    from .sim.reference import model_file
    qnet = model_file.load_network(model_path)
    name = f"{Path(model_path).stem}-{board}"
    log(f"exploring {Path(model_path).name} on {board}:")
    points = explore(qnet, board, log=log)
    out = Path(out_dir)
    atomic_write_text(out / f"{name}.json", json.dumps({"model": str(model_path),
                                                         "board": board, "points": points},
                                                        indent=1))
    text = io.StringIO()
    writer = csv.writer(text)
    columns = ["multipliers", "cycles_per_image", "images_per_s", "logic", "block_ram", "fits",
               "default"]
    writer.writerow(columns)
    for p in points:
        writer.writerow([p[c] for c in columns])
    atomic_write_text(out / f"{name}.csv", text.getvalue())
    atomic_write_bytes(out / f"{name}.png",
                       _plot(points, f"{Path(model_path).stem} on {board}: every balanced "
                                     f"parallelism"))
    fitting = [p for p in points if p["fits"]]
    if not fitting:
        raise CnnforgeError(f"{model_path} on {board}: no point of the sweep fits")
    best = max(fitting, key=lambda p: (p["images_per_s"], -p["logic"]))
    log(f"best fitting point: {best['multipliers']} multipliers, {best['cycles_per_image']:,} "
        f"cycles/image, {best['images_per_s']:,.0f} images/s, logic about {best['logic']:,} "
        f"{best['logic_name']}, {best['block_ram']} {best['block_ram_name']}; wrote "
        f"{out / name}.{{json,csv,png}}")
    return points
