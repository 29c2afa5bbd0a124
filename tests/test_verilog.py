"""`make verilog`: every block elaborates and passes `verilator --lint-only -Wall` with only the
waivers documented in hw/lint.vlt."""

import shutil
import subprocess
from pathlib import Path

import pytest

import cnnforge.hw
from cnnforge import verilog as generate

LINT_WAIVERS = Path(cnnforge.hw.__file__).parent / "lint.vlt"


@pytest.fixture(scope="module")
def verilog_files(tmp_path_factory):
    return generate.write_all(tmp_path_factory.mktemp("verilog"))


def test_every_block_is_written(verilog_files):
    assert sorted(p.stem for p in verilog_files) == sorted(generate.BLOCKS)
    for path in verilog_files:
        assert f"module {path.stem}(" in path.read_text()


@pytest.mark.parametrize("block", generate.BLOCKS)
def test_lint_clean(verilog_files, block):
    if shutil.which("verilator") is None:
        pytest.skip("verilator is not on PATH")
    path = next(p for p in verilog_files if p.stem == block)
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", str(LINT_WAIVERS), str(path),
                           "--top-module", block], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
