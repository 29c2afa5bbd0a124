"""Builds that cannot lose a good bitstream, and a programmer that loads only good ones.

No Yosys runs here: :func:`cnnforge.boards.build.run_toolchain` is replaced by a fake that writes
what the tools would (a bitstream of the right shape, nextpnr's JSON report) or stops midway,
and the programmer's command is never executed. The real builds (``-m bitstream``,
tests/test_boards.py) check their bitstreams with the same :func:`check_bitstream`.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from amaranth.build.run import BuildPlan

from cnnforge import cli
from cnnforge.boards import build as build_mod
from cnnforge.boards.build import TimingError, build, check_bitstream, program, run_toolchain
from cnnforge.boards.board import get_board
from cnnforge.boards.top import BoardTop
from cnnforge.errors import CnnforgeError, ToolError
from cnnforge.sim.verify.fake_accel import FakeAccel
from helpers import BOARD_CONFIG


def fake_bitstream(family, device="LFE5U-25F", fill=0x5A, size=None):
    """Bytes shaped like icepack's (iCE40UP5K) or ecppack's (``device``) output."""
    if family == "ice40":
        head, tail, pad, size = b"\xff\x00\x00\xff\x7e\xaa\x99\x7e", b"\x01\x06", b"\x00", \
            size or 104_090
    else:
        head = b"\xff\x00Part: " + device.encode() + b"-8CSFBGA285\x00\xff\xff\xff\xbd\xb3"
        tail, pad, size = b"\x5e\x00\x00\x00", b"\xff" * 4, size or 120_000
    body = bytes([fill]) * (size - len(head) - len(tail) - len(pad))
    return head + body + tail + pad


def nextpnr_report(fmax_mhz, target_mhz=30.0):
    return {"utilization": {"ICESTORM_LC": {"used": 100, "available": 5280}},
            "fmax": {"cd_sync": {"achieved": fmax_mhz, "constraint": target_mhz}}}


class FakeTools:
    """Stands in for :func:`run_toolchain`: writes the plan's files, the iCE40 bitstream
    (``fill`` varies its content) and nextpnr's report; or, with ``stop``, an empty bitstream
    and then an exception (``KeyboardInterrupt``: Ctrl-C while icepack writes)."""

    def __init__(self, fmax_mhz=40.0, fill=0x5A, stop=None, log_line=None):
        self.fmax_mhz, self.fill, self.stop, self.log_line = fmax_mhz, fill, stop, log_line
        self.folders = []

    def __call__(self, plan, folder, env):
        self.folders.append(folder)
        plan.extract(str(folder))
        if self.log_line:
            (folder / "top.tim").write_text(f"Info: placing\n{self.log_line}\n")
        if self.stop is not None:
            (folder / "top.bin").write_bytes(b"")
            raise self.stop
        (folder / "nextpnr.json").write_text(json.dumps(nextpnr_report(self.fmax_mhz)))
        (folder / "top.bin").write_bytes(fake_bitstream("ice40", fill=self.fill))


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """``run(tools)``: a build of the iCEBreaker (its board top with a stand-in accelerator) into
    ``tmp_path`` with ``tools`` as the toolchain."""
    monkeypatch.setattr(build_mod, "tool_env", lambda family: dict(os.environ))
    # (the report's logic by block is a second Yosys run: stood in for as well)
    monkeypatch.setattr(build_mod, "block_statistics", lambda folder, family, env: [
        {"block": "top", "cells": {label: 1 for label, _ in family.block_cells}}])
    monkeypatch.setattr(build_mod, "BoardTop", lambda spec, model, **kwargs: BoardTop(
        spec, model, **{**kwargs, "accel": FakeAccel(BOARD_CONFIG)}))

    def run(tools, **kwargs):
        monkeypatch.setattr(build_mod, "run_toolchain", tools)
        return build("icebreaker", tmp_path, log=lambda *a: None, **kwargs)
    return run


@pytest.fixture
def programmer(monkeypatch):
    """The commands ``program`` would run (none is executed)."""
    commands = []
    monkeypatch.setattr(build_mod.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(build_mod.subprocess, "run",
                        lambda command: commands.append(command) or subprocess.CompletedProcess(
                            command, 0))
    return commands


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_interrupted_build_keeps_the_last_good_one(fake_build, programmer, tmp_path):
    report = fake_build(FakeTools())
    final = tmp_path / "icebreaker"
    assert report["timing_met"] and report["bitstream"] == str(final / "top.bin")
    before = snapshot(final)
    assert {"top.bin", "report.json", "report.md", "top.il"} <= set(before)
    program("icebreaker", tmp_path)
    assert programmer == [["iceprog", str(final / "top.bin")]]

    tools = FakeTools(stop=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        fake_build(tools)
    assert tools.folders[0] != final and tools.folders[0].parent == tmp_path
    assert snapshot(final) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icebreaker"]
    program("icebreaker", tmp_path)
    assert len(programmer) == 2


def test_failed_build_is_kept_aside(fake_build, tmp_path):
    """Timing not met or a tool error: the report and logs go to <board>.failed/, the last
    good build stays; the next good build replaces both."""
    fake_build(FakeTools(fill=1))
    final, failed = tmp_path / "icebreaker", tmp_path / "icebreaker.failed"
    good = snapshot(final)
    with pytest.raises(TimingError, match=r"Fmax 20.00 MHz < target 30.00 MHz \(report in "
                                          rf"{failed / 'report.md'}; {final} keeps"):
        fake_build(FakeTools(fmax_mhz=20.0, fill=2))
    assert snapshot(final) == good
    saved = json.loads((failed / "report.json").read_text())
    assert not saved["timing_met"] and saved["bitstream"] == str(failed / "top.bin")
    assert "timing NOT met" in (failed / "report.md").read_text()

    with pytest.raises(ToolError, match=rf"the build failed: ERROR: no route \(log: "
                                        rf"{failed / 'build.log'}\)$"):
        fake_build(FakeTools(stop=subprocess.CalledProcessError(1, "sh"),
                             log_line="ERROR: no route"))
    assert snapshot(final) == good and (failed / "top.tim").exists()
    assert not (failed / "report.json").exists()

    report = fake_build(FakeTools(fill=3))
    assert not failed.exists()
    assert (final / "top.bin").read_bytes() == fake_bitstream("ice40", fill=3)
    assert report["bitstream_sha256"] == hashlib.sha256(fake_bitstream("ice40", fill=3)) \
        .hexdigest()


def test_next_build_removes_what_a_killed_one_left(fake_build, tmp_path):
    fake_build(FakeTools(fill=1))
    final, dead = tmp_path / "icebreaker", dead_pid()
    for leftover in (f"icebreaker.new-{dead}", f"icebreaker.old-{dead}"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "top.bin").write_bytes(b"")
    (final / ".report.json.x1y2.part").write_text("{")
    old_part, new_part = tmp_path / ".bench.json.a.part", tmp_path / ".bench.json.b.part"
    old_part.write_text("{")
    new_part.write_text("{")       # a live writer's
    an_hour_ago = time.time() - 3600
    os.utime(old_part, (an_hour_ago, an_hour_ago))
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            (tmp_path / f"icebreaker.new-{live.pid}").mkdir()     # a build running elsewhere
            fake_build(FakeTools(fill=2))
        finally:
            live.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".bench.json.b.part", "icebreaker", f"icebreaker.new-{live.pid}"]
    assert not list(final.glob("*.part")) and not list(final.glob(".*.part"))
    assert (final / "top.bin").read_bytes() == fake_bitstream("ice40", fill=2)


def test_kill_between_the_renames_is_repaired(fake_build, programmer, tmp_path):
    """Killed after renaming the old build aside, before renaming the new one in: the next build
    puts the old one back before it starts (and keeps it when that build is interrupted)."""
    fake_build(FakeTools(fill=1))
    final = tmp_path / "icebreaker"
    good = snapshot(final)
    final.rename(tmp_path / f"icebreaker.old-{dead_pid()}")
    with pytest.raises(KeyboardInterrupt):
        fake_build(FakeTools(stop=KeyboardInterrupt()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icebreaker"]
    assert snapshot(final) == good
    program("icebreaker", tmp_path)


def good_build(out, board="icebreaker", folder_name=None, **report):
    """A build folder as build() leaves it (bitstream and report), written directly."""
    spec = get_board(board)
    folder = out / (folder_name or board)
    folder.mkdir(parents=True)
    data = fake_bitstream(spec.family.name, spec.device.name)
    name = spec.family.bitstream_file
    (folder / name).write_bytes(data)
    (folder / "report.json").write_text(json.dumps({
        "board": board, "device": spec.device.name, "timing_met": True, "fmax_mhz": 31.5,
        "target_mhz": 30.0, "bitstream": str(folder / name), "bitstream_bytes": len(data),
        "bitstream_sha256": hashlib.sha256(data).hexdigest(), **report}))
    return folder / name


def test_program_loads_a_good_build(tmp_path, programmer):
    for board in ("icebreaker", "orangecrab"):
        path = good_build(tmp_path, board)
        assert check_bitstream(board, tmp_path) == path
        program(board, tmp_path)
        assert programmer[-1][-1] == str(path)


def test_program_loads_the_training_build(tmp_path, programmer, capsys):
    """`program --train` loads `<board>-train/` (the on-chip training build), with its checks."""
    with pytest.raises(CnnforgeError, match=r"no bitstream .*orangecrab-train/top.bit: run `make "
                                            r"bitstream BOARD=orangecrab TRAIN=random`"):
        check_bitstream("orangecrab", tmp_path, train=True)
    path = good_build(tmp_path, "orangecrab", "orangecrab-train")
    assert cli.main(["program", "--board", "orangecrab", "--out", str(tmp_path), "--train"]) == 0
    assert programmer[-1][-1] == str(path)
    assert cli.main(["program", "--board", "orangecrab", "--out", str(tmp_path)]) == 1
    assert "no bitstream" in capsys.readouterr().err


def _empty(path):
    path.write_bytes(b"")


def _text(path):
    path.write_text("this is not a bitstream\n" * 5000)


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-64])


def _truncated_inside(path):
    """Cut short, then padded back to a plausible size: only its end shows it."""
    data = path.read_bytes()
    path.write_bytes(data[:80_000] + bytes(len(data) - 80_000))


def _timing_failed(path):
    report = json.loads((path.parent / "report.json").read_text())
    (path.parent / "report.json").write_text(json.dumps({**report, "timing_met": False,
                                                         "fmax_mhz": 27.25}))


def _stale_report(path):
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(data)


def _no_report(path):
    (path.parent / "report.json").unlink()


def _old_report(path):
    report = json.loads((path.parent / "report.json").read_text())
    del report["bitstream_sha256"]
    (path.parent / "report.json").write_text(json.dumps(report))


def _missing(path):
    path.unlink()


@pytest.mark.parametrize("board, damage, message", [
    ("icebreaker", _empty, r"top.bin: it is empty \(an interrupted build\?\); rebuild with "
                           r"`make bitstream BOARD=icebreaker`$"),
    ("icebreaker", _text, "top.bin: it does not start like an ice40 bitstream"),
    ("icebreaker", _truncated, "top.bin: it has 104,026 bytes; a complete iCE40UP5K bitstream "
                               "has 104,090 to"),
    ("icebreaker", _truncated_inside, r"top.bin: it is truncated \(its last command is not "
                                      r"0106\)"),
    ("orangecrab", _truncated_inside, r"top.bit: it is truncated \(its last command is not "
                                      r"5E000000\)"),
    ("icebreaker", _timing_failed, r"top.bin: its build did not meet timing \(Fmax 27.25 MHz, "
                                   r"target 30.00 MHz, report.md\); not loading it$"),
    ("icebreaker", _stale_report, "top.bin is not the bitstream report.json describes"),
    ("icebreaker", _no_report, "top.bin: no report.json beside it; rebuild"),
    ("icebreaker", _old_report, r"report.json: not a build report of this version \(KeyError"),
    ("icebreaker", _missing, r"no bitstream .*top.bin: run `make bitstream BOARD=icebreaker`$"),
])
def test_program_refuses(tmp_path, programmer, board, damage, message):
    damage(good_build(tmp_path, board))
    with pytest.raises(CnnforgeError, match=message) as info:
        program(board, tmp_path)
    assert "\n" not in str(info.value)
    assert programmer == []


def test_program_refuses_another_devices_bitstream(tmp_path, programmer):
    path = good_build(tmp_path, "ulx3s")
    data = fake_bitstream("ecp5", "LFE5U-25F", size=300_000)
    path.write_bytes(data)
    _timing_failed(path)        # would be refused for this too: the bitstream is checked first
    with pytest.raises(CnnforgeError, match="top.bit: it is for LFE5U-25F-8CSFBGA285, not the "
                                            "LFE5U-85F"):
        program("ulx3s", tmp_path)
    assert programmer == []


def test_run_toolchain_ends_the_tools_when_interrupted(tmp_path):
    """An interrupted build ends its tools (their process group), not only the shell."""
    plan = BuildPlan("build_top")
    # A tool that outlives the shell (a child of it) would write late.txt.
    plan.add_file("build_top.sh", "(sleep 1; echo late > late.txt) &\nwait\n")

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            run_toolchain(plan, tmp_path, dict(os.environ))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(1.5)
    assert (tmp_path / "build_top.sh").exists() and not (tmp_path / "late.txt").exists()

    plan = BuildPlan("build_top")
    plan.add_file("build_top.sh", "echo done > done.txt\nexit 3\n")
    with pytest.raises(subprocess.CalledProcessError):
        run_toolchain(plan, tmp_path, dict(os.environ))
    assert (tmp_path / "done.txt").read_text() == "done\n"


def test_sigterm_ends_a_command_like_ctrl_c(fake_build, monkeypatch, tmp_path, capsys):
    """`kill` of `cnnforge bitstream`: one line, status 130, the build's fresh folder removed,
    the last good build intact; the handler is only in place while the command runs."""
    fake_build(FakeTools(fill=1))
    good = snapshot(tmp_path / "icebreaker")

    def killed(plan, folder, env):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        pytest.fail("SIGTERM did not interrupt the build")
    monkeypatch.setattr(build_mod, "run_toolchain", killed)

    def outside(signum, frame):         # (and keeps pytest alive if main() sets none)
        raise RuntimeError("SIGTERM reached the handler outside the command")
    before = signal.signal(signal.SIGTERM, outside)
    started = time.monotonic()
    try:
        code = cli.main(["bitstream", "--board", "icebreaker", "--out", str(tmp_path)])
        assert signal.getsignal(signal.SIGTERM) == outside
    finally:
        signal.signal(signal.SIGTERM, before)
    out, err = capsys.readouterr()
    assert code == 130 and err == "cnnforge bitstream: interrupted\n"
    assert time.monotonic() - started < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["icebreaker"]
    assert snapshot(tmp_path / "icebreaker") == good


FAKE_NEXTPNR = """
import json, sys
args = sys.argv[1:]
# (a placement for the margin writes no bitstream: no output option but its report and log)
assert "--asc" not in args and args.count("--seed") <= 1 and "--json" in args, args
seed = args[args.index("--seed") + 1] if "--seed" in args else "default"
if seed == "3":
    sys.exit("ERROR: no route")
fmax = {"default": 31.0, "1": 20.0}[seed]
report = {"utilization": {"ICESTORM_LC": {"used": 100, "available": 5280}},
          "fmax": {"cd_sync": {"achieved": fmax, "constraint": 30.0}}}
open(args[args.index("--report") + 1], "w").write(json.dumps(report))
open(args[args.index("--log") + 1], "w").write("Info: placed\\n")
"""


def test_margin_seeds_are_placed_and_reported(fake_build, monkeypatch, tmp_path):
    """``make bitstream`` places the netlist with nextpnr's default seed and seeds 1 and 2 beside
    the one kept (here seed 2, tried first) and reports how many meet the clock; a seed
    whose placement fails is a one-line error naming its log."""
    fake = tmp_path / "fake_nextpnr.py"
    fake.write_text(FAKE_NEXTPNR)
    monkeypatch.setenv("NEXTPNR_ICE40", f"{sys.executable} {fake}")
    monkeypatch.setenv("CNNFORGE_NEXTPNR_SEEDS", "2,3,default")    # seed 2 first, and meets
    report = fake_build(FakeTools(fmax_mhz=40.0), margin_seeds=build_mod.MARGIN_SEEDS)
    assert report["nextpnr_seeds"] == [
        {"seed": 2, "fmax_mhz": 40.0, "met": True, "bitstream": True},
        {"seed": None, "fmax_mhz": 31.0, "met": True, "bitstream": False},
        {"seed": 1, "fmax_mhz": 20.0, "met": False, "bitstream": False}]
    assert report["margin_seeds"] == [None, 1, 2]
    text = (tmp_path / "icebreaker" / "report.md").read_text()
    assert ("- nextpnr placements: seed 2 40.00 MHz (this bitstream), default seed 31.00 MHz, "
            "seed 1 20.00 MHz") in text
    assert ("- clock margin: 2 of 3 placements (nextpnr default seed, seed 1, seed 2) meet "
            "30.00 MHz") in text

    folder = tmp_path / "icebreaker"
    with pytest.raises(ToolError, match=r"nextpnr with seed 3 failed \(log: .*seeds/3.log\)$"):
        build_mod.place_seeds(folder, get_board("icebreaker").family, dict(os.environ), [3], 30.0)
