"""Markdown tables from the JSON records that simulations and benchmarks leave in build/."""

import json
from collections import defaultdict
from pathlib import Path

from .errors import CnnforgeError

__all__ = ["sim_summary", "markdown_table"]


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sim_summary(path):
    """One row per block: tests, words compared, simulated cycles, simulated cycles/s."""
    path = Path(path)
    if not path.exists():
        raise CnnforgeError(f"{path}: no simulation records (run `make sim` first)")
    per_block = defaultdict(lambda: {"tests": 0, "words": 0, "cycles": 0, "seconds": 0.0,
                                     "rate": []})
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        b = per_block[rec["block"]]
        b["tests"] += 1
        b["words"] += rec["words"]
        b["cycles"] += rec["cycles"]
        b["seconds"] += rec["seconds"]
        b["rate"].append(rec["cycles_per_s"])
    rows = [(block, b["tests"], b["words"], b["cycles"], round(sum(b["rate"]) / len(b["rate"])),
             f"{b['seconds']:.1f}") for block, b in sorted(per_block.items())]
    return markdown_table(["block", "tests", "words compared", "simulated cycles",
                           "sim cycles/s", "wall s (incl. build)"], rows)
