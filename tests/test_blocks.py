"""Logic by block (cnnforge.boards.blocks): the build's script with the hierarchy kept."""

import pytest
from amaranth import Module, Signal
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from cnnforge.boards.blocks import block_script, block_statistics, block_table
from cnnforge.boards.build import tool_env
from cnnforge.boards.family import FAMILIES
from cnnforge.errors import ToolError


class Counter(wiring.Component):
    """8 flip-flops and an incrementer (a carry chain)."""
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        return m


class Table(wiring.Component):
    """A 512 x 8 block RAM read at ``addr``, and a counter of its own."""
    addr: In(9)
    data: Out(8)
    tick: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.submodules.counter = counter = Counter()
        m.submodules.mem = mem = Memory(shape=8, depth=512, init=range(256))
        rd = mem.read_port()
        m.d.comb += [rd.addr.eq(self.addr), self.data.eq(rd.data), self.tick.eq(counter.count)]
        return m


def test_block_script_keeps_the_build_and_the_hierarchy():
    build = "read_rtlil top.il\nproc\nsynth_ice40 -dsp -top top\nwrite_json top.json\n"
    script = block_script(build)
    assert "synth_ice40 -dsp -top top -noflatten" in script.splitlines()
    assert "write_json" not in script and script.rstrip().endswith("stat")
    with pytest.raises(ToolError, match="no synth_"):
        block_script("read_rtlil top.il\nproc\n")


def test_each_block_counts_its_own_cells(tmp_path):
    family = FAMILIES["ice40"]
    try:
        env = tool_env(family)
    except ToolError as e:
        pytest.skip(str(e))
    top = Table()
    (tmp_path / "top.il").write_text(rtlil.convert(top, name="top", ports=[
        top.addr, top.data, top.tick]))
    (tmp_path / "top.ys").write_text("read_rtlil top.il\nproc\nsynth_ice40 -top top\n"
                                     "write_json top.json\n")
    rows = {r["block"]: r["cells"] for r in block_statistics(tmp_path, family, env)}
    assert set(rows) == {"top", "top.counter"}
    assert rows["top"]["EBR"] == 1 and rows["top.counter"]["EBR"] == 0
    assert rows["top.counter"]["FF"] == 8 and rows["top"]["FF"] == 0
    assert rows["top.counter"]["carry"] > 0
    assert not (tmp_path / "top.json").exists()         # the build's outputs are left alone
    table = block_table([{"block": k, "cells": v} for k, v in rows.items()], list(rows["top"]))
    assert table[-1].startswith("| total | ") and "| counter |" in "\n".join(table)
