"""``make bitstream BOARD=…`` and ``make program BOARD=…``.

Tools come from PyPI (YoWASP) by default; ``CNNFORGE_TOOLS=system`` uses ``yosys``,
``nextpnr-ice40``/``nextpnr-ecp5``, ``icepack``/``ecppack`` from ``PATH``. Either way the
variables ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK`` override
single tools (amaranth.build's convention).

``build(board, out_dir)`` writes ``<out_dir>/<board>/``: the bitstream (``top.bin`` for iCE40,
``top.bit`` for ECP5), nextpnr's log and JSON report, and ``report.json`` / ``report.md`` with
resource use against the device, Fmax against the target clock and images/s (compute-bound from
``build/bench.json`` when ``make bench`` has run, link-bound from the baud rate). Timing not met
is an error (after the report is written).

A build never leaves ``<board>/`` without a complete bitstream and its report: it runs in a fresh
folder ``<board>.new-<pid>`` beside it, which replaces ``<board>/`` only when the bitstream and
``report.json`` are complete and timing is met. A failed build (timing not met, a tool error)
becomes ``<board>.failed/`` (its report and logs; the error names it) and leaves the last good
build in place; an interrupted one is removed. The next build removes what a killed one left
(fresh folders of processes that are gone, ``.part`` files) and restores ``<board>/`` if the kill
came between the two renames that replace it. :func:`program` loads a bitstream only after
checking it (:func:`check_bitstream`) and that its report says timing was met.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import CnnforgeError, ToolError
from ..fsutil import atomic_write_text
from ..hw.util import REPLICA
from .protocol import (MAX_ZERO_RUN, OVERHEAD_BYTES, STREAM_HEADER_BYTES, ReplyMode,
                       image_bytes, stream_reply_bytes, zero_run_limit)
from .blocks import BLOCK_SCRIPT, block_statistics, block_table
from .board import get_board
from .family import FAMILIES
from .top import BoardTop, link_config


__all__ = ["tool_env", "build", "run_toolchain", "program", "check_bitstream",
           "link_images_per_second", "TimingError", "ice40_dsps", "nextpnr_seeds", "MARGIN_SEEDS",
           "nextpnr_command", "place_seeds",
           "parse_parallelism"]

class TimingError(CnnforgeError):
    """nextpnr's Fmax is below the target clock."""


#: Yosys commands between reading the design and ``synth_*``. ``proc; splitnets``: see
#: tests/test_synth_mac.py (Yosys ABC9 assert on array views). ``setattr``: the registers the RTL
#: duplicates on purpose (signals with the :data:`~cnnforge.hw.util.REPLICA` attribute, copies
#: placed near their loads to cut a long fanout) keep their copies; opt_merge would fold
#: identical registers back into one. It runs before splitnets: the split wires lose the
#: attribute.
PREPARE_SCRIPT = f"proc\nsetattr -set keep 1 a:{REPLICA} %ci1 c:* %i\nsplitnets"


def tool_env(family):
    """Environment for amaranth.build with every tool of ``family`` (a
    :class:`~cnnforge.boards.family.Family` or its name) resolved; ToolError naming the first
    missing one."""
    family = FAMILIES[family] if isinstance(family, str) else family
    system = os.environ.get("CNNFORGE_TOOLS", "yowasp") == "system"
    env = dict(os.environ)
    # pip puts the YoWASP commands beside the interpreter: found even in an unactivated venv.
    search = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for t in family.tools:
        tool = os.environ.get(t.var) or (t.native if system else t.yowasp)
        found = shutil.which(tool, path=search)
        if found is not None and not system and t.var not in os.environ:
            tool = found
        if found is None:
            if t.var in os.environ:
                hint = f"${t.var} is set to {tool!r}"
            elif system:
                hint = f"install it or unset CNNFORGE_TOOLS to use pip's {t.yowasp}"
            else:
                hint = f"pip install {t.pip}, or CNNFORGE_TOOLS=system for {t.native}"
            raise ToolError(f"{tool} not found ({hint})")
        env[t.var] = tool
    return env


def link_images_per_second(config, baud, request_bytes=None):
    """Images/s the UART allows streaming (``CLASSIFY_IMAGE`` with class-only replies, requests
    and replies on the two wires at once: the busier wire sets the rate), 10 bits per byte;
    ``request_bytes``: a request's bytes on the line (default: the raw image's frame)."""
    if request_bytes is None:
        request_bytes = OVERHEAD_BYTES + STREAM_HEADER_BYTES + image_bytes(config)
    reply = OVERHEAD_BYTES + stream_reply_bytes(config, ReplyMode.CLASS)
    return baud / (10 * max(request_bytes, reply))



def _preset(name):
    from ..hw.accel import PRESETS
    return PRESETS[name]


def ice40_dsps(par, config=None):
    """SB_MAC16 blocks a parallelism needs on the iCE40: the convolution's and the dense
    engine's dual 8x8 instances, two per requantization multiplier (a 21x16 product splits into
    16x16 and 5x16)."""
    from ..hw.params import NetworkConfig, Widths
    config = config or NetworkConfig()
    acc = Widths(config).conv_acc
    conv = -(-par.conv_multipliers(config) // 2)
    requant = par.requant_parallel * -(-acc // 16)
    dense = -(-par.dense_mults // 2)
    return {"conv": conv, "requant": requant, "dense": dense, "total": conv + requant + dense}


#: Yosys commands (after `proc; splitnets`): the requantization's products onto SB_MAC16 like
#: `synth_ice40 -dsp`, restricted to that module (see build()).
_ICE40_REQUANT_DSP = "\n".join([
    "opt_dff *requant",
    "wreduce *requant",
    "techmap -map +/mul2dsp.v -map +/ice40/dsp_map.v -D DSP_A_MAXWIDTH=16 -D DSP_B_MAXWIDTH=16 "
    "-D DSP_A_MINWIDTH=2 -D DSP_B_MINWIDTH=2 -D DSP_Y_MINWIDTH=11 -D DSP_NAME=$__MUL16X16 "
    "*requant/t:$mul",
    "ice40_dsp *requant",
    "chtype -set $mul *requant/t:$__soft_mul",
])


def check_ice40_dsps(folder, expected_8x8):
    """The synthesized netlist keeps the explicit dual 8x8 SB_MAC16 as instantiated (a guard
    against Yosys passes that rewrite DSP parameters)."""
    netlist = json.loads((folder / "top.json").read_text())
    dual = 0
    for module in netlist.get("modules", {}).values():
        for cell in module.get("cells", {}).values():
            if cell["type"] == "SB_MAC16":
                params = cell["parameters"]
                if int(str(params.get("MODE_8x8", "0")), 2) == 1:
                    dual += 1
                    if int(str(params.get("A_REG", "0")), 2) != 1 or \
                            int(str(params.get("TOP_8x8_MULT_REG", "0")), 2) != 1:
                        raise ToolError(f"{folder}: a dual 8x8 SB_MAC16 lost its registers")
    if dual != expected_8x8:
        raise ToolError(f"{folder}: {dual} dual 8x8 SB_MAC16 in the netlist, expected "
                        f"{expected_8x8} (were their parameters rewritten?)")


def _bench_cycles(preset, bench_path):
    try:
        bench = json.loads(Path(bench_path).read_text())
    except (OSError, ValueError):
        return None
    for row in bench.get("configs", []):
        if row.get("config") == preset:
            return row.get("cycles_per_image")
    return None


def _parse_report(family, report):
    util = report.get("utilization", {})
    resources = []
    for label, cell in family.resources:
        if cell in util:
            resources.append({"resource": label, "cell": cell, "used": util[cell]["used"],
                              "available": util[cell]["available"]})
    fmax = {}
    for clock, entry in report.get("fmax", {}).items():
        fmax[clock] = {"achieved_mhz": entry["achieved"], "constraint_mhz": entry["constraint"]}
    return resources, fmax


def clock_verdict(fmax, target):
    """``(accelerator Fmax, met)`` from nextpnr's per-clock figures: the accelerator's clock is
    the one constrained closest to ``target`` (MHz); every clock must meet its constraint (a
    link clock its own, slower one)."""
    if not fmax:
        return 0.0, False
    main = min(fmax.values(), key=lambda f: abs(f["constraint_mhz"] - target))
    others = [f for f in fmax.values() if f is not main]
    met = main["achieved_mhz"] >= target and all(
        f["achieved_mhz"] >= f["constraint_mhz"] for f in others)
    return main["achieved_mhz"], met


def _markdown(r):
    par = r.get("parallelism")
    what = f"preset `{r['preset']}`"
    if par and r["preset"] == "layer-list" and par.get("mapping") == "folded":
        what = (f"layer-list accelerator, folded ({r['multipliers']} multipliers shared by "
                f"every layer: {par['lanes']} lanes x 2 pixels, target {par['target']})")
    elif par and r["preset"] == "layer-list":
        layers = ", ".join(
            f"layer {k}: {v}" + (f"x{par['channels'][k]}" if par["channels"].get(k, 1) > 1 else "")
            for k, v in par["lanes"].items())
        what = (f"layer-list accelerator ({r['multipliers']} multipliers: {layers}; pipeline "
                f"{par['pipeline']})")
    elif par:
        what += (f" (conv_lanes {par['conv_lanes']}{', window' if par['conv_window'] else ''}, "
                 f"requant_parallel {par['requant_parallel']}, dense_mults "
                 f"{par['dense_mults']}, target {par['target']}"
                 f"{', pipeline ' + par['pipeline'] if par.get('pipeline') == 'deep' else ''})")
    if r.get("training"):
        what += f", with on-chip training ({r['training']} init)"
    lines = [f"# {r['board']}: {r['device']}, {what}", "",
             "| resource | used | available | % |", "|---|---:|---:|---:|"]
    for row in r["resources"]:
        pct = 100 * row["used"] / row["available"] if row["available"] else 0
        lines.append(f"| {row['resource']} | {row['used']} | {row['available']} | {pct:.1f} |")
    lines += ["", f"- clock: target {r['target_mhz']:.2f} MHz, nextpnr Fmax "
                  f"{r['fmax_mhz']:.2f} MHz: timing {'met' if r['timing_met'] else 'NOT met'}"]
    link = r.get("link_clk_mhz")
    if link:
        achieved = min((f["achieved_mhz"] for f in r["fmax"].values()
                        if abs(f["constraint_mhz"] - link) < 0.01), default=0.0)
        lines.append(f"- host link clock (its own domain, `ClockCrossing`): target {link:.2f} "
                     f"MHz, nextpnr Fmax {achieved:.2f} MHz")
    tries = r.get("nextpnr_seeds") or []
    if len(tries) > 1 or (tries and tries[0]["seed"] is not None):
        lines.append("- nextpnr placements: " + ", ".join(
            f"{_seed_name(t['seed'])} {t['fmax_mhz']:.2f} MHz"
            + (" (this bitstream)" if t.get("bitstream") else "") for t in tries))
    margin = r.get("margin_seeds")
    if margin:
        met = [t for t in tries if t["seed"] in margin and t.get("met")]
        lines.append(f"- clock margin: {len(met)} of {len(margin)} placements (nextpnr "
                     f"{', '.join(_seed_name(seed) for seed in margin)}) meet "
                     f"{r['target_mhz']:.2f} MHz")
    if r["family"] == "ice40":
        lines.append("- nextpnr-ice40 does not time paths inside SB_MAC16 (its ports count as "
                     "registers): the convolution's and dense engine's MAC inputs and outputs "
                     "are registered inside the DSP; the requantization's (when on SB_MAC16) "
                     "only on the accumulator input, so its multiply is not in the figure.")
    if r.get("dsp_mapping"):
        lines.append(f"- {r['dsp_mapping']}")
    cpi = r.get("cycles_per_image")
    if cpi:
        lines.append(f"- compute-bound: {cpi:g} cycles/image ({r.get('cycles_source')}) -> "
                     f"{r['images_per_s_compute']:.0f} images/s at the target clock, "
                     f"{r['images_per_s_fmax']:.0f} at Fmax")
    else:
        lines.append("- compute-bound images/s: run `make bench` first (no build/bench.json)")
    coded = r.get("images_per_s_link_mnist")
    if r.get("link") == "usb":
        lines.append("- host link: USB full speed, CDC-ACM serial device (clocks usb 12 MHz, "
                     "usb_io 48 MHz); link-bound images/s: `cnnforge bench-link --sim --board "
                     f"{r['board']} --link usb` measures it at the packet level")
    else:
        lines.append(f"- link-bound (streamed, class-only replies): {r['images_per_s_link']:.0f} "
                     f"images/s at {r['baud']} baud with raw images"
                     + (f", {coded:.0f} zero-run coded (the MNIST test set's mean)" if coded
                        else "")
                     + " (`cnnforge bench-link --sim` measures it through the simulated pins)")
    lines.append(f"- build time: {r['seconds']:.0f} s")
    blocks = r.get("blocks")
    if blocks and blocks["rows"]:
        labels = list(blocks["rows"][0]["cells"])
        lines += ["", "## Logic by block", "",
                  f"Each module's own cells, from the build's Yosys script run again with the "
                  f"hierarchy kept (`synth_{r['family']} -noflatten`, {blocks['seconds']:.0f} s; "
                  f"`{BLOCK_SCRIPT}` in the build folder; `top` is the board's top, `core` the "
                  f"host link, `core.accel` the accelerator). LUT4, carry and FF do not sum to "
                  f"the logic cells above: nextpnr packs them together, and the flat build "
                  f"optimizes across modules (it may also share a hard block the hierarchy "
                  f"keeps apart).", ""]
        lines += block_table(blocks["rows"], labels)
    return "\n".join(lines) + "\n"


#: The build script's output (Yosys, nextpnr, the packer), in the build folder.
TOOL_LOG = "build.log"


def run_toolchain(plan, folder, env):
    """Write ``plan``'s files into ``folder`` and run its build script there, its output into
    ``folder / TOOL_LOG``.

    The tools run in a process group of their own, ended (SIGTERM) when the build is interrupted
    (Ctrl-C, or SIGTERM through the command line): no tool writes on into a folder the build has
    given up. :class:`subprocess.CalledProcessError` if the script fails.
    """
    if os.name != "posix":
        plan.execute_local(str(folder), env=env)
        return
    plan.extract(str(folder))
    script = ["sh", f"{plan.script}.sh"]
    # The tools' output (thousands of lines) goes to build.log, named when the build fails.
    with open(folder / TOOL_LOG, "wb") as out, \
            subprocess.Popen(script, cwd=folder, env=env, start_new_session=True, stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL) as proc:
        try:
            code = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if code:
        raise subprocess.CalledProcessError(code, script)


def _alive(pid):
    """Whether process ``pid`` runs and is not this one (elsewhere than POSIX: assumed not)."""
    if pid == os.getpid() or os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


#: Age (s) after which a ``.part`` file in the output folder is a leftover: a live
#: :func:`~cnnforge.fsutil.atomic_open` holds one for the seconds its write takes.
PART_FILE_AGE = 600


def _tidy(final):
    """Remove what killed builds of ``final`` left (their fresh folders, the previous build
    renamed aside, ``.part`` files); restore ``final`` when a kill came between the renames that
    replace it."""
    for path in sorted(final.parent.glob(glob.escape(final.name) + ".*-*")):
        kind, _, pid = path.name[len(final.name) + 1:].partition("-")
        if kind not in ("new", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not final.exists():
            os.replace(path, final)
        else:
            shutil.rmtree(path, ignore_errors=True)
    now = time.time()
    for folder, min_age in ((final, 0), (final.parent, PART_FILE_AGE)):
        for part in folder.glob(".*.part"):
            with contextlib.suppress(OSError):
                if now - part.stat().st_mtime >= min_age:
                    part.unlink()


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block is done (POSIX)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _replace_folder(new, final):
    """``new`` becomes ``final``: the old one is renamed aside, the new one in, the old one
    removed."""
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    with _signals_held():
        if final.exists():
            os.replace(final, old)
        os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def failed_folder(final):
    """Where a failed build of ``final`` (a board's build folder) is kept."""
    return final.with_name(final.name + ".failed")


@contextlib.contextmanager
def _fresh_folder(final):
    """A new, empty folder beside ``final`` for a build. It replaces ``final`` when the block
    completes; an interrupted block (KeyboardInterrupt) removes it, a failed one (any other
    exception) keeps it as :func:`failed_folder`, and ``final`` is left as it was."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _tidy(final)
    fresh = final.with_name(f"{final.name}.new-{os.getpid()}")
    fresh.mkdir()
    failed = failed_folder(final)
    try:
        yield fresh
    except KeyboardInterrupt:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(fresh, failed)
        raise
    _replace_folder(fresh, final)
    shutil.rmtree(failed, ignore_errors=True)


def _last_tool_error(folder):
    """The last ERROR line of nextpnr's or Yosys's log in ``folder``, or ``""``."""
    for logname in ("top.tim", "top.rpt", TOOL_LOG):
        path = folder / logname
        if path.exists():
            errors = [ln for ln in path.read_text(errors="replace").splitlines()
                      if "ERROR" in ln]
            if errors:
                return errors[-1].strip()
    return ""


def build(board, out_dir="build", *, model=None, clk_freq=None, baud=None, parallelism=None,
          accel=None, bench_path=None, train_init=None, name=None, request_bytes=None,
          link=None, margin_seeds=(), log=print):
    """Synthesize, place and route, pack; write the report. Returns the report dict.

    ``margin_seeds`` (e.g. :data:`MARGIN_SEEDS`): once a placement meets the clock, the netlist
    is placed and routed again with each of these seeds not yet tried (:func:`place_seeds`, no
    bitstream), and the report gives every placement's Fmax and how many of these meet: a
    clock that one lucky seed meets shows as such.

    ``train_init`` (``"random"``, ``"model"``): build with on-chip training
    (:class:`~cnnforge.hw.train.TrainingAccelerator`, ``TRAIN``/``READ_WEIGHTS`` on the link)
    from that starting point; the build folder is then ``<board>-train``.

    ``model`` a :class:`~cnnforge.hw.model.QuantNetwork` other than the seed network: built as
    a :class:`~cnnforge.hw.network.NetworkAccelerator` with ``parallelism`` (a
    :class:`~cnnforge.hw.network.LayerParallelism`; default: the board preset's multiplier
    budget balanced over the layers) in ``<board>-<name>``.

    ``link``: the host link (:attr:`~cnnforge.boards.board.Board.links`; None: the board's
    default); another than the default is built in ``<board>-<link>``.

    ``request_bytes(max_run)``: the mean bytes of a streamed request with zero runs of at most
    ``max_run`` (the link's) over the images the report's link-bound rate is for (the command
    line gives the MNIST test set's).
    """
    from ..hw.model import QuantNetwork
    from ..hw.network import FoldedMapping, LayerParallelism, network_accelerator, \
        preset_parallelism
    from ..hw.params import ConfigError
    from ..sim.reference import model_file
    spec = get_board(board)
    link = spec.check_link(link)
    # A training build's preset; fails at once, before any tool runs, if the board cannot fit it.
    preset = spec.training_preset() if train_init is not None else spec.preset
    env = tool_env(spec.family)
    board_default = model is None
    if board_default:
        # The board's own model (one whose memories cannot hold the seed network), or the seed;
        # either is the board's default build (build/<board>/, what `make program` loads).
        model = (model_file.load_network(model_file.DEFAULT_PATH.with_name(spec.model))
                 if spec.model else model_file.load())
    network_par = None
    if isinstance(model, QuantNetwork):
        try:
            model = model.seed_model()          # the seed network: the board's presets
        except ConfigError:
            if train_init is not None:
                raise CnnforgeError("on-chip training builds the seed network only "
                                    "(mnist-seed)") from None
            # The board preset's multiplier budget and pipeline (deep for the ULX3S' 100 MHz).
            network_par = parallelism if isinstance(parallelism, (LayerParallelism, FoldedMapping)) \
                else \
                preset_parallelism(model.network, preset)
            parallelism = None
            # `cnnforge check` first: a network that cannot fit stops here, in one line.
            from .check import check
            verdict = check(model, board, parallelism=network_par)
            if not verdict["fits"]:
                raise CnnforgeError(f"{spec.name}: {verdict['problem']}")
    layer_list = network_par is not None

    def new_top():
        return BoardTop(spec, model, parallelism=parallelism, clk_freq=clk_freq, baud=baud,
                        accel=(network_accelerator(model, network_par) if layer_list
                               else accel),
                        train_init=train_init, link=link)

    top = new_top()
    par = top.parallelism
    custom = parallelism is not None and par.to_dict() != _preset(preset).to_dict()
    variant = ("-train" if train_init else
               f"-{name or 'network'}" if layer_list and not board_default else "")
    if baud is not None and baud != spec.baud:
        # (a link at another rate is another bitstream: it does not replace the board's)
        variant += f"-{baud / 1e6:g}mbaud"
    if link != spec.links[0]:
        variant += f"-{link}"
    final = Path(out_dir) / (spec.name + variant)
    failed = failed_folder(final)
    platform = spec.platform()
    opts = {
        "script_after_read": PREPARE_SCRIPT,
        "nextpnr_opts": " ".join(filter(None, [
            "--report nextpnr.json --timing-allow-fail",
            spec.family.nextpnr_options(top.clk_freq / 1e6)])),
    }
    dsp_note = None
    if spec.family.name in ("gw1n", "gw2a"):
        # synth_gowin maps the products to the DSP blocks itself (MULT9X9, MULT18X18: the
        # report counts them); no explicit primitives (MAC target generic).
        opts["synth_opts"] = spec.family.synth_options()
        dsp_note = "products in MULT9X9/MULT18X18 where synth_gowin infers them (target generic)"
    elif spec.family.name == "ice40":
        # The convolution's and dense engine's SB_MAC16 are explicit instances (two int8
        # products each). `synth_ice40 -dsp` must not be used: its ice40_dsp pass rewrites the
        # parameters of every SB_MAC16, explicit ones included (dual 8x8 becomes 16x16, the
        # input/product registers are dropped). When the DSPs left suffice, the requantization
        # products (the only other multipliers) are mapped the same way as -dsp would, but in
        # the requantization module only, before synthesis; otherwise they stay in LUTs.
        opts["synth_opts"] = ""
        if layer_list:
            dsp_note = (f"SB_MAC16: {network_par.lanes} (dual 8x8: the shared MAC array's "
                        f"{network_par.multipliers} products, explicit); requantization in "
                        f"LUTs (radix 4)")
        elif par is not None and accel is None:
            needed = ice40_dsps(par)
            if needed["total"] <= spec.device.dsps:
                opts["script_after_read"] += "\n" + _ICE40_REQUANT_DSP
                where = f"{needed['requant']} requantization (Yosys ice40_dsp, that module only)"
            else:
                where = f"requantization in LUTs (all would need {needed['total']})"
            dsp_note = (f"SB_MAC16: {needed['conv']} convolution, {needed['dense']} dense "
                        f"(dual 8x8), {where}")
    elif train_init is not None and accel is None:
        # The training preset (Board.train_preset) leaves room in the DSPs: Yosys maps every
        # product, the trainer's included, to a MULT18X18D (the conv's stay explicit).
        opts["synth_opts"] = ""
        dsp_note = ("MULT18X18D: the convolution's products (explicit) and every other product "
                    "(Yosys)")
    elif os.environ.get("CNNFORGE_ECP5_DSP", "0") != "1":
        # synth_ecp5 maps every product to a MULT18X18D and cannot be told which ones: the
        # ecp5-85f configuration has 208 (144 + 32 + 2 x 16), the 85F 156. -nodsp keeps Yosys
        # from inferring any; the convolution's products are explicit MULT18X18D instances
        # (MACArray target "ecp5"), the rest in LUTs (CNNFORGE_ECP5_DSP=1 lets Yosys map them
        # too, for configurations that fit).
        opts["synth_opts"] = "-nodsp"
        if par is not None and accel is None and par.target == "ecp5":
            conv = par.conv_multipliers(model.config)
            dsp_note = (f"MULT18X18D: {conv} convolution (explicit, registered); "
                        f"requantization and dense products in LUTs (-nodsp)")
        elif (par is not None and accel is None) or layer_list:
            dsp_note = "all products in LUTs (-nodsp, MAC target generic)"
    with _fresh_folder(final) as folder:
        log(f"{spec.name}: building {spec.device.name} at {top.clk_freq / 1e6:.2f} MHz in "
            f"{folder} (it becomes {final} once complete)")
        start = time.perf_counter()
        target = top.clk_freq / 1e6
        tried = []
        for seed in nextpnr_seeds(spec):
            if tried:
                how = f"--seed {seed}" if seed is not None else "its default seed"
                log(f"{spec.name}: Fmax {tried[-1][1]:.2f} MHz < {target:.2f}: placing and "
                    f"routing again with nextpnr {how}")
                platform = spec.platform()      # a platform (and its top) is prepared once
                top = new_top()
            seed_opts = dict(opts)
            if seed is not None:
                seed_opts["nextpnr_opts"] = opts["nextpnr_opts"] + f" --seed {seed}"
            # The last placement's timing log stays (top.<seed>.tim) for its critical path.
            if tried and (folder / "top.tim").exists():
                last = "default" if tried[-1][0] is None else tried[-1][0]
                (folder / "top.tim").replace(folder / f"top.{last}.tim")
            (folder / "nextpnr.json").unlink(missing_ok=True)
            plan = platform.build(top, name="top", do_build=False, **seed_opts)
            try:
                run_toolchain(plan, folder, env)
            except subprocess.CalledProcessError:
                raise ToolError(f"{spec.name}: the build failed: "
                                f"{_last_tool_error(folder) or 'no ERROR line'} (log: "
                                f"{failed / TOOL_LOG})") from None
            report = json.loads((folder / "nextpnr.json").read_text())
            resources, fmax = _parse_report(spec.family, report)
            fmax_mhz, met = clock_verdict(fmax, target)
            tried.append((seed, fmax_mhz, met))
            if met:
                break
        margin = []
        rest = [seed for seed in margin_seeds if seed not in [t[0] for t in tried]]
        if met and rest:
            log(f"{spec.name}: placing and routing the netlist with nextpnr seeds "
                f"{', '.join(_seed_name(seed) for seed in rest)} too (the clock's margin)")
            margin = place_seeds(folder, spec.family, env, rest, target)
        seconds = time.perf_counter() - start
        blocks = None
        if spec.family.block_cells:
            blocks_start = time.perf_counter()
            blocks = {"rows": block_statistics(folder, spec.family, env),
                      "seconds": round(time.perf_counter() - blocks_start, 1)}
        if spec.family.name == "ice40" and layer_list:
            check_ice40_dsps(folder, network_par.lanes)
        elif spec.family.name == "ice40" and par is not None and accel is None:
            needed = ice40_dsps(par)
            check_ice40_dsps(folder, needed["conv"] + needed["dense"])
        bitstream = folder / spec.family.bitstream_file
        if not bitstream.is_file():
            raise ToolError(f"{spec.name}: the tools wrote no {bitstream.name} (in {failed})")
        data = bitstream.read_bytes()
        cycles_source = "build/bench.json"
        if layer_list:
            cycles = network_par.cycles_per_image
            cycles_source = ("the folded mapping's estimate (sim-full gives the exact count)"
                             if isinstance(network_par, FoldedMapping) else
                             "the layer-list model: the slowest engine's sustained cycles")
        elif custom and accel is None:
            # The slowest stage's sustained cycles per image, as its engine reports them.
            cycles, cycles_source = top.accelerator.cycles_per_image, "estimate: slowest stage"
        else:
            cycles = _bench_cycles(preset, bench_path or Path(out_dir) / "bench.json")
            estimate = getattr(top.accelerator, "cycles_per_image", None)
            if cycles is None and estimate and accel is None and train_init is None:
                # No `make bench` row for this preset: the engines' own figure.
                cycles = estimate
                cycles_source = "estimate: slowest stage (no make bench row for the preset)"
        # The decoder's longest zero run (a UART's from its divisor; USB makes the stream wait).
        from .uart import divisor_for
        usb = link == "usb"
        max_run = (MAX_ZERO_RUN if usb else
                   zero_run_limit(divisor_for(top.link_clk_freq or top.clk_freq, top.baud)))
        mnist_bytes = request_bytes(max_run) if request_bytes and not usb else None
        result = {
            "board": spec.name, "device": spec.device.name, "family": spec.family.name,
            "preset": ("layer-list" if layer_list else
                       "(replaced accelerator)" if accel is not None else
                       "custom" if custom else preset),
            "training": train_init,
            "network": model.network.to_dict() if layer_list else None,
            "multipliers": network_par.multipliers if layer_list else None,
            "parallelism": (network_par.to_dict() if layer_list else
                            par.to_dict() if par is not None else None),
            "dsp_mapping": dsp_note, "cycles_source": cycles_source,
            "target_mhz": target, "fmax_mhz": fmax_mhz, "fmax": fmax,
            "timing_met": met, "link": link, "baud": None if usb else top.baud,
            "link_clk_mhz": top.link_clk_freq / 1e6 if top.link_clk_freq else None,
            # Every placement: those tried until one met the clock (the last made the
            # bitstream), then the margin's (placed only).
            "nextpnr_seeds": (
                [{"seed": seed, "fmax_mhz": f, "met": ok, "bitstream": j == len(tried) - 1}
                 for j, (seed, f, ok) in enumerate(tried)]
                + [{"seed": seed, "fmax_mhz": f, "met": ok, "bitstream": False}
                   for seed, f, ok in margin]),
            "margin_seeds": list(margin_seeds) if met and margin_seeds else None,
            "resources": resources, "cycles_per_image": cycles,
            "images_per_s_compute": target * 1e6 / cycles if cycles else None,
            "images_per_s_fmax": fmax_mhz * 1e6 / cycles if cycles else None,
            # (USB: no rate from a formula; `cnnforge bench-link --sim --link usb` measures it)
            "images_per_s_link": (None if usb else
                                  link_images_per_second(link_config(model), top.baud)),
            "link_max_zero_run": max_run,
            "images_per_s_link_mnist": (
                link_images_per_second(link_config(model), top.baud, mnist_bytes)
                if mnist_bytes else None),
            # Where the bitstream ends up; program() checks that the file there is this one.
            "bitstream": str((final if met else failed) / bitstream.name),
            "bitstream_bytes": len(data),
            "bitstream_sha256": hashlib.sha256(data).hexdigest(),
            "seconds": round(seconds, 1),
            "blocks": blocks,
        }
        atomic_write_text(folder / "report.json", json.dumps(result, indent=1))
        atomic_write_text(folder / "report.md", _markdown(result))
        log(_markdown(result))
        if not met:
            report_md = failed / "report.md"
            if fmax_mhz >= target:
                raise TimingError(f"{spec.name}: timing not met: the host link's clock misses "
                                  f"its {result['link_clk_mhz']:.2f} MHz (report in "
                                  f"{report_md}; {final} keeps the last good build)")
            raise TimingError(f"{spec.name}: timing not met: Fmax {fmax_mhz:.2f} MHz < target "
                              f"{target:.2f} MHz (report in {report_md}; {final} keeps the "
                              f"last good build)")
    return result


#: The placements whose timing ``make bitstream`` reports beside the one it keeps: a board's
#: clock should be met by at least two of them, not by one lucky seed.
MARGIN_SEEDS = (None, 1, 2)

#: nextpnr options that name its outputs (and the seed): :func:`place_seeds` replaces them.
_NEXTPNR_OUTPUTS = ("--asc", "--textcfg", "--write", "--report", "--log", "--seed")


def _seed_name(seed):
    return "default seed" if seed is None else f"seed {seed}"


def nextpnr_command(folder, env):
    """The nextpnr command of the build script in ``folder`` (as words, the tool resolved from
    ``env`` as the script does), without the options naming its outputs and seed."""
    script = (folder / "build_top.sh").read_text().replace("\\\n", " ")
    for line in script.splitlines():
        if line.startswith('"$NEXTPNR'):
            words = shlex.split(line)
            tool = words[0].lstrip("$")
            default = re.search(rf": \${{{tool}:=([^}}]*)}}", script)
            command = shlex.split(env.get(tool) or (default.group(1) if default else tool))
            skip = False
            for word in words[1:]:
                if skip:
                    skip = False
                elif word in _NEXTPNR_OUTPUTS:
                    skip = True
                else:
                    command.append(word)
            return command
    raise ToolError(f"no nextpnr command in {folder / 'build_top.sh'}")


def place_seeds(folder, family, env, seeds, target, *, jobs=None):
    """Place and route the netlist in build folder ``folder`` again with each nextpnr seed of
    ``seeds`` (None: nextpnr's default), ``jobs`` at a time (default: the CPU count, at most
    2), writing no bitstream (``folder/seeds/<seed>.json``, ``.tim``); ``[(seed, Fmax MHz,
    met)]``, as :func:`clock_verdict` judges ``target`` (MHz)."""
    command = nextpnr_command(folder, env)
    (folder / "seeds").mkdir(exist_ok=True)
    jobs = jobs or max(1, min(2, os.cpu_count() or 1))
    pending, running, results = list(seeds), [], {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                tag = "default" if seed is None else str(seed)
                args = command + ([] if seed is None else ["--seed", str(seed)]) + [
                    "--report", f"seeds/{tag}.json", "--log", f"seeds/{tag}.tim"]
                with open(folder / "seeds" / f"{tag}.log", "wb") as out:
                    proc = subprocess.Popen(args, cwd=folder, env=env, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
                running.append((seed, tag, proc))
            seed, tag, proc = running[0]
            if proc.wait():
                raise ToolError(f"nextpnr with {_seed_name(seed)} failed (log: "
                                f"{folder / 'seeds' / (tag + '.log')})")
            running.pop(0)
            report = json.loads((folder / "seeds" / f"{tag}.json").read_text())
            results[seed] = clock_verdict(_parse_report(family, report)[1], target)
    finally:
        for _, _, proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    return [(seed, *results[seed]) for seed in seeds]


def nextpnr_seeds(board):
    """The nextpnr seeds a build of ``board`` (a :class:`~cnnforge.boards.board.Board`) tries
    until one meets the clock (``None``: nextpnr's default): the board's
    :attr:`~cnnforge.boards.board.Board.nextpnr_seeds`, or ``CNNFORGE_NEXTPNR_SEEDS``
    (comma-separated, e.g. ``default,2,3``) for every board. The report names the seeds tried
    and their Fmax."""
    text = os.environ.get("CNNFORGE_NEXTPNR_SEEDS")
    if not text:
        return tuple(board.nextpnr_seeds)
    seeds = []
    for item in (t.strip() for t in text.split(",")):
        if item == "default":
            seeds.append(None)
        else:
            try:
                seeds.append(int(item))
            except ValueError:
                raise CnnforgeError(f"CNNFORGE_NEXTPNR_SEEDS: {item!r} is not an integer or "
                                    f"'default'") from None
    if not seeds:
        raise CnnforgeError("CNNFORGE_NEXTPNR_SEEDS is empty")
    return tuple(seeds)


def parse_parallelism(text, board, *, training=False):
    """``"conv_lanes=4,requant_parallel=1,dense_mults=4"``: the board's preset with these
    fields replaced; a :class:`~cnnforge.hw.accel.Parallelism`, checked against the committed
    model's network (:meth:`~cnnforge.hw.accel.Parallelism.check`, the trainer's rules too for
    a ``training`` build) and, on the iCE40, against its SB_MAC16 count, before any tool runs."""
    from ..hw.accel import Parallelism
    from ..sim.reference import model_file
    spec = get_board(board)
    fields = _preset(spec.preset).to_dict()
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CnnforgeError(f"--parallelism sets no field, give e.g. conv_lanes=4 (fields: "
                            f"{', '.join(fields)})")
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise CnnforgeError(f"--parallelism: {item!r} is not one of "
                                f"{', '.join(f'{k}=...' for k in fields)}")
        if key in ("target", "pipeline"):
            fields[key] = value
        elif key in ("conv_window", "dense_buffer"):
            fields[key] = value.lower() in ("1", "true", "yes")
        else:
            try:
                fields[key] = int(value)
            except ValueError:
                raise CnnforgeError(f"--parallelism: {key} must be an integer, not {value!r}") \
                    from None
    config = model_file.load().config
    try:
        par = Parallelism(**fields).check(config, training=training)
    except (TypeError, ValueError) as e:
        raise CnnforgeError(f"--parallelism: {e}") from None
    if spec.family.name == "ice40" and par.target == "ice40":
        needed = ice40_dsps(par, config)
        explicit = needed["conv"] + needed["dense"]
        if explicit > spec.device.dsps:
            raise CnnforgeError(f"--parallelism: the convolution and dense engine need {explicit} "
                                f"SB_MAC16 ({needed['conv']} + {needed['dense']}), the "
                                f"{spec.name}'s device has {spec.device.dsps}")
    return par


def check_bitstream(board, out_dir="build", *, train=False):
    """The path of ``<out_dir>/<board>/``'s bitstream (``<board>-train/``'s with ``train``: the
    build with on-chip training) after checking that it is a complete one for the board's
    device and that ``report.json`` beside it describes this file and says timing was met;
    :class:`CnnforgeError` (one line) otherwise."""
    spec = get_board(board)
    folder = Path(out_dir) / (spec.name + ("-train" if train else ""))
    bitstream = folder / spec.family.bitstream_file
    make = f"make bitstream BOARD={spec.name}" + (" TRAIN=random" if train else "")
    rebuild = f"rebuild with `{make}`"
    if not bitstream.is_file():
        raise CnnforgeError(f"no bitstream {bitstream}: run `{make}`")
    data = bitstream.read_bytes()
    problem = spec.family.bitstream_problem(data, spec.device)
    if problem:
        raise CnnforgeError(f"{bitstream}: {problem}; {rebuild}")
    try:
        report = json.loads((folder / "report.json").read_text())
        digest, met = report["bitstream_sha256"], report["timing_met"]
        fmax, target = report["fmax_mhz"], report["target_mhz"]
    except FileNotFoundError:
        raise CnnforgeError(f"{bitstream}: no report.json beside it; {rebuild}") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CnnforgeError(f"{folder / 'report.json'}: not a build report of this version "
                            f"({type(e).__name__}: {e}); {rebuild}") from None
    if digest != hashlib.sha256(data).hexdigest():
        raise CnnforgeError(f"{bitstream} is not the bitstream report.json describes; {rebuild}")
    if not met:
        raise CnnforgeError(f"{bitstream}: its build did not meet timing (Fmax {fmax:.2f} MHz, "
                            f"target {target:.2f} MHz, report.md); not loading it")
    return bitstream


def program(board, out_dir="build", *, train=False, log=print):
    """Load ``<out_dir>/<board>/``'s bitstream (``<board>-train/``'s with ``train``) onto the
    board (SRAM: lost at power-off), after :func:`check_bitstream`."""
    spec = get_board(board)
    programmer = spec.programmer
    bitstream = check_bitstream(spec.name, out_dir, train=train)
    tool = os.environ.get(programmer.var, programmer.tool)
    if shutil.which(tool) is None:
        raise ToolError(f"{tool} not found: {programmer.install}")
    command = programmer.argv(tool, bitstream)
    log(" ".join(command))
    if subprocess.run(command).returncode != 0:
        raise ToolError(f"{tool} failed programming {spec.name}")
