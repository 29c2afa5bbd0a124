"""Logic by block: where a build's cells go, module by module.

A board build flattens the design before it maps it, so its report gives one total per
resource. :func:`block_statistics` runs the build's own Yosys script again with the hierarchy
kept (``synth_<family> -noflatten``, every other step as built: the DSP mapping of the
requantizer included) and reads Yosys's ``stat`` per module: each block's own LUT4s, carries,
flip-flops, DSPs, block RAMs and SPRAMs (its submodules have rows of their own).

What the numbers are not: the placed design's logic cells. nextpnr packs a LUT4, a carry and a
flip-flop into one logic cell when they connect, and optimization across module boundaries
(constants, duplicates) happens only in the flat build, so the LUT4 sum differs from the
report's cell count (the iCEBreaker's ``mnist-seed`` build: 3,768 LUT4 and 2,618 flip-flops
in blocks, 5,268 logic cells placed). The hard blocks are the same cells in both, except that
the flat build may share or drop one the hierarchy keeps apart (that build: 26 block RAMs by
block, 25 placed; DSPs and SPRAMs equal; ``tests/test_boards.py`` holds them to that).
"""

import collections
import re
import subprocess

from ..errors import ToolError
from ..fsutil import atomic_write_text


__all__ = ["BLOCK_SCRIPT", "BLOCK_STAT", "parse_stat", "block_script", "block_statistics",
           "block_table"]

#: The script (written beside the build's ``top.ys``) and its ``stat`` output.
BLOCK_SCRIPT = "blocks.ys"
BLOCK_STAT = "blocks.stat"


def parse_stat(text):
    """``{module: Counter(cell type: count)}`` of Yosys's ``stat`` output (each module's own
    cells; the "design hierarchy" totals are left out)."""
    modules, current = {}, None
    for line in text.splitlines():
        m = re.match(r"=== (\S+) ===", line)
        if m:
            current = modules.setdefault(m.group(1).lstrip("\\"), collections.Counter())
            continue
        if "design hierarchy" in line:
            current = None
        m = re.match(r"\s+(\d+)\s+(\S+)$", line)
        if m and current is not None:
            current[m.group(2)] += int(m.group(1))
    return modules


def block_script(build_script):
    """The build's Yosys script (``top.ys``'s text) with the hierarchy kept: ``-noflatten`` on
    its ``synth_*`` command, no output files, ``stat`` into :data:`BLOCK_STAT`."""
    lines, synth = [], False
    for line in build_script.splitlines():
        if re.match(r"synth_\w+\b", line):
            line, synth = f"{line} -noflatten", True
        elif line.startswith("write_"):
            continue
        lines.append(line)
    if not synth:
        raise ToolError("the build's Yosys script has no synth_* command")
    return "\n".join(lines + [f"tee -q -o {BLOCK_STAT} stat", ""])


def block_statistics(folder, family, env):
    """Rows ``{"block": module path, "cells": {label: count}}`` of the build in ``folder``
    (its ``top.il`` and ``top.ys``), hierarchy order, modules without cells left out; labels
    from ``family.block_cells`` (a label's cell types: a name, or a prefix ending in ``*``).
    Runs the family's Yosys (``env["YOSYS"]``, as :func:`~.build.tool_env` gives it)."""
    atomic_write_text(folder / BLOCK_SCRIPT, block_script((folder / "top.ys").read_text()))
    stat = folder / BLOCK_STAT
    stat.unlink(missing_ok=True)
    with open(folder / "blocks.log", "wb") as log:
        run = subprocess.run([env["YOSYS"], "-q", BLOCK_SCRIPT], cwd=folder, env=env,
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if run.returncode or not stat.is_file():
        raise ToolError(f"Yosys failed on the hierarchical statistics (log: "
                        f"{folder / 'blocks.log'})")
    rows = []
    for module, cells in sorted(parse_stat(stat.read_text()).items()):
        counts = {label: sum(n for cell, n in cells.items()
                             if (cell.startswith(pattern[:-1]) if pattern.endswith("*")
                                 else cell == pattern))
                  for label, pattern in family.block_cells}
        if any(counts.values()):
            rows.append({"block": module, "cells": counts})
    return rows


def block_table(rows, labels):
    """Markdown lines of ``rows`` (:func:`block_statistics`), a total row last."""
    lines = ["| block | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for row in rows:
        name = row["block"].removeprefix("top.")
        lines.append(f"| {name} | " + " | ".join(str(row["cells"][k]) for k in labels) + " |")
    total = {k: sum(r["cells"][k] for r in rows) for k in labels}
    lines.append("| total | " + " | ".join(str(total[k]) for k in labels) + " |")
    return lines

