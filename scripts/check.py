"""``cnnforge check MODEL --board B``: the table and the verdict of
:func:`cnnforge.boards.check.check`, printed; one line and a non-zero exit if it does not fit."""

from .boards.check import LOGIC_ERROR, check
from .errors import CnnforgeError


__all__ = ["check_cli"]


def check_cli(model_path, board, multipliers=None, log=print):
    """Print the check; :class:`CnnforgeError` (one line) if the model does not fit."""
    import time
    from .report import markdown_table
    from .sim.reference import model_file
    start = time.perf_counter()
    qnet = model_file.load_network(model_path)
    r = check(qnet, board, multipliers)
    t = r["totals"]
    log(f"{model_path} on {r['board']} ({r['device']}, {t['clock_mhz']:.0f} MHz): layer-list "
        f"accelerator, {t['multipliers']} multipliers ({t['pipeline']}"
        f"{' mapping' if t['pipeline'] == 'folded' else ' pipeline'})")
    log(markdown_table(
        ["layer", "kind", "output", "MACs", "weights", "multipliers", "weight memory (bits)",
         "cycles/image"],
        [(x["layer"], x["kind"], x["output"], f"{x['macs']:,}", f"{x['weights']:,}",
          x.get("parallelism", "-"), f"{x['weight_bits']:,}",
          "-" if x["cycles"] is None else f"{x['cycles']:,}") for x in r["layers"]]))
    where = (f"{t['dsps']} of {t['dsps_available']} {t['dsp_name']}" if t["dsps"]
             else f"products {t['products']}")
    spram = (f", SPRAM {t['spram']} of {t['spram_available']}" if t.get("spram_available")
             else "")
    log(f"total: {t['macs']:,} MACs, {t['multipliers']} multipliers ({where}), "
        f"block RAM {t['block_ram']} of {t['block_ram_available']} "
        f"{t['block_ram_name']}{spram}")
    share = None
    if t["logic"] is None:
        log(f"logic: not estimated (no calibration for the {r['family']} family yet: "
            f"{t['logic_available']:,} {t['logic_name']} available)")
    else:
        share = t["logic"] / t["logic_available"]
        log(f"logic: about {t['logic']:,} of {t['logic_available']:,} {t['logic_name']} "
            f"({share:.0%}; estimated before synthesis, +/- {LOGIC_ERROR:.0%}), {t['ff']:,} "
            f"flip-flops")
    log(f"{t['cycles_per_image']:,} cycles/image ({t['cycles_per_image'] / t['multiplier_bound']:.2f}"
        f" x MACs / multipliers): {t['images_per_s']:,.0f} images/s at {t['clock_mhz']:.0f} MHz "
        f"compute-bound, {t['images_per_s_link']:,.0f} images/s through the UART "
        f"({time.perf_counter() - start:.1f} s)")
    if not r["fits"]:
        raise CnnforgeError(f"{model_path} on {r['board']}: {r['problem']}")
    if share is not None and share > 1:
        log(f"fits, unless the logic estimate is high: {share:.0%} of the device")
    else:
        log("fits")
    return r
