"""On-chip training: backward pass and SGD update, bit-exact with ``sim/reference/trainer.py``.

:class:`TrainingAccelerator` is the inference :class:`~cnnforge.hw.accel.Accelerator` plus a
:class:`Trainer`. The forward pass of a training image runs on the accelerator; the trainer
captures what backward needs (the image, the pooled values and argmax positions, the Q15
probabilities), then computes the gradients, updates its int16 masters and biases and writes
the new int8 weights and biases into the accelerator through its model write port. The next
image (inference or training) sees the new weights.

Arithmetic: :func:`cnnforge.sim.reference.trainer.train_step` (every width from
:class:`~cnnforge.hw.params.TrainFormat` and :class:`~cnnforge.hw.params.Widths`), including the
stochastic-rounding LFSR draws in the golden update order.

Command stream (:func:`TrainInputLayout`): every pixel beat carries ``cmd`` (``INFER``/``TRAIN``,
read from an image's first beat) and ``label`` (read from a ``TRAIN`` image's first beat);
``DUMP`` is a single beat between images. A ``TRAIN`` image is taken when no image is in flight;
its forward results go out on ``o`` like an inference's; ``step_done`` pulses when the new
weights are in the accelerator; only then is the next beat taken. ``DUMP`` streams
:func:`dump_order` (54,411 values for the reference network) on ``dump``.

Board protocol (``boards/link.py``, ``boards/protocol.py``):

* ``TRAIN`` (0x07): payload label (u8) + the image (as ``LOAD_IMAGE``); the link sends the
  pixels with ``cmd=TRAIN``, waits for ``step_done`` and replies like ``CLASSIFY`` (class,
  logits, probabilities of the forward pass before the update); frames during the step are
  NAKed ``BUSY``.
* ``READ_WEIGHTS`` (0x06): payload first (u32 LE), count (u16 LE): value indices in
  :func:`dump_order`; the link sends one ``DUMP`` beat, skips the values before ``first``,
  sends ``count`` values as i32 LE straight from ``dump`` (the LFSR state as its 32 bits) and
  drains the rest.
* The masters are not host-writable; ``WRITE_WEIGHTS`` changes only the int8 copies in the
  accelerator.
"""

from contextlib import contextmanager

import numpy as np
from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .accel import Accelerator, ModelMemory, Parallelism, ResultLayout, model_word_bits
from .conv import bias_shape, weight_words as conv_weight_words
from .dense import weight_words as dense_weight_words
from .params import SoftmaxFormat, Widths
from .util import ModelWriteSignature, check_int, pack_fields


__all__ = ["TrainCommand", "TrainInputLayout", "Trainer", "TrainingAccelerator",
           "lfsr_leap_columns", "dump_order", "parse_dump", "state_from_dump"]


class TrainCommand(enum.Enum, shape=2):
    """``cmd`` field of a :class:`TrainingAccelerator` input beat."""
    INFER = 0   # a pixel of an inference image
    TRAIN = 1   # a pixel of a training image (``label`` taken from its first beat)
    DUMP = 2    # one beat, between images: stream every master and bias out on ``dump``


def TrainInputLayout(config):
    """Input beat: command, label (training images) and one pixel (``in_channels`` bytes)."""
    return data.StructLayout({
        "pixel": data.ArrayLayout(unsigned(8), config.in_channels),
        "label": unsigned(Widths(config).class_index),
        "cmd": TrainCommand,
    })


def dump_order(config):
    """``[(name, count)]``: the sections of a dump, in stream order.

    ``dense_m`` (classes x features, raster), ``dense_b`` (classes), ``conv_m``
    (``(F, K, K, Cin)`` raster), ``conv_b`` (F), ``lfsr`` (1, the 32-bit state). Every value is
    one beat of :attr:`Trainer.DUMP_BITS` bits, two's complement (the LFSR state unsigned).
    """
    return [("dense_m", config.classes * config.features), ("dense_b", config.classes),
            ("conv_m", config.filters * config.taps), ("conv_b", config.filters), ("lfsr", 1)]


def parse_dump(config, values):
    """Split dump values (raw uint32) into ``{name: int64 array}`` per :func:`dump_order`;
    several dumps give arrays with a leading dump axis."""
    values = np.asarray(values, np.int64)
    per = sum(n for _, n in dump_order(config))
    if len(values) % per:
        raise ValueError(f"{len(values)} dump words is not a multiple of {per}")
    values = values.reshape(-1, per)
    out, at = {}, 0
    for name, n in dump_order(config):
        v = values[:, at:at + n]
        out[name] = v if name == "lfsr" else v - ((v >> 31) << 32)
        at += n
    out["dense_m"] = out["dense_m"].reshape(-1, config.classes, config.features)
    out["conv_m"] = out["conv_m"].reshape(-1, config.filters, config.taps)
    out["lfsr"] = out["lfsr"][:, 0]
    return out


def state_from_dump(state, dumps, index=-1):
    """A copy of ``state`` with the masters, biases and LFSR state of dump ``index``."""
    out = state.copy()
    cfg = state.config
    out.dense_m = np.asarray(dumps["dense_m"][index], np.int64).copy()
    out.dense_b = np.asarray(dumps["dense_b"][index], np.int64).copy()
    out.conv_m = np.asarray(dumps["conv_m"][index], np.int64).reshape(
        cfg.filters, cfg.kernel, cfg.kernel, cfg.in_channels).copy()
    out.conv_b = np.asarray(dumps["conv_b"][index], np.int64).copy()
    out.lfsr.state = int(dumps["lfsr"][index])
    return out


def _lfsr_matrix(fmt):
    """Column images (32 ints) of the GF(2) matrix of one draw (``lfsr_leap`` single steps)."""
    cols = [1 << b for b in range(fmt.lfsr_bits)]
    for _ in range(fmt.lfsr_leap):
        cols = [(c >> 1) ^ (fmt.lfsr_taps if c & 1 else 0) for c in cols]
    return cols


def _gf2_mul(a, b):
    """Column images of ``A @ B``."""
    out = []
    for c in b:
        v = 0
        for bit, col in enumerate(a):
            if (c >> bit) & 1:
                v ^= col
        out.append(v)
    return out


def lfsr_leap_columns(fmt, count):
    """``[A**1, .., A**count]`` as column images: draw ``j`` of a cycle is ``A**(j+1) s``."""
    a = _lfsr_matrix(fmt)
    powers = [a]
    for _ in range(count - 1):
        powers.append(_gf2_mul(a, powers[-1]))
    return powers


def _gf2_apply(m, cols, state, bits=32, name="draw"):
    """A Signal holding the low ``bits`` of ``A s``: one XOR reduction per output bit."""
    out = Signal(bits, name=name)
    for i in range(bits):
        mask = sum(1 << b for b, col in enumerate(cols) if (col >> i) & 1)
        m.d.comb += out[i].eq((state & mask).xor())
    return out


def _clip(x, lo, hi):
    return Mux(x < lo, lo, Mux(x > hi, hi, x))


def _round_shift(g, s, rnd=None):
    """``(g + r) >> s`` with ``r = 2**(s-1)`` (nearest, half up) or ``rnd`` (stochastic)."""
    if s == 0:
        return g
    r = Const(1 << (s - 1), s) if rnd is None else rnd[:s]
    return (g + r) >> s


@contextmanager
def _carry(m, digit, modulus):
    """Count the register ``digit`` modulo ``modulus`` (``m.d.sync``); the statements of the
    ``with`` block are added where it wraps (on every count when ``modulus`` is 1): the count
    of the next digit, for a counter of several digits."""
    if modulus > 1:
        with m.If(digit == modulus - 1):
            m.d.sync += digit.eq(0)
            yield
        with m.Else():
            m.d.sync += digit.eq(digit + 1)
    else:
        yield


class Trainer(wiring.Component):
    """Backward pass and SGD update of the reference CNN, bit-exact with ``sim/reference/trainer.py``.

    Holds the int16 masters and the biases (initial contents from a
    :class:`~cnnforge.hw.model.TrainState`), and buffers filled while the accelerator runs the
    forward pass of a training image: the image (``K x K`` banks by ``(y mod K, x mod K)`` so a
    window is one read, replicated per gradient lane), the pooled values and argmax positions,
    the probabilities. After ``start`` it runs these phases, each a short pipeline, with a few
    idle cycles between them:

    1. *dense* (``classes * features / mults`` cycles): class-major, ``mults`` masters per cycle:
       the int8 forward weight ``w`` is read from the master, ``e_acc += delta[k] * w`` into
       the error accumulators, ``M <- sat(M - R(delta[k] * pooled, dense_w_shift))``, and the new
       int8 word goes out on the model write port (``DENSE_W``);
    2. *dense biases* (``classes`` cycles, ``DENSE_B`` words);
    3. *conv gradients* (``features / grad_lanes`` cycles, started two cycles into the last
       class of phase 1, whose writes finalize the error accumulators one word per cycle, and
       running alongside it and phase 2): per pooled feature the error
       ``e = sat(round(e_acc >> err_shift))``, masked by ``0 < pooled < 255``, times the
       ``taps`` pixels of the winning window (all taps in one cycle, ``grad_lanes`` features
       per cycle) accumulated per channel, and ``e`` into the bias gradient;
    4. *conv update* (``filters * taps`` cycles, one master a cycle), the ``CONV_W`` words
       (``filters / conv_lanes * taps`` cycles), the conv biases (``filters``) and the
       ``CONV_B`` words.

    Stochastic rounding draws ``mults`` LFSR states per cycle in phase 1 (a fixed XOR network
    per draw) and one per update otherwise: the golden update order.

    Masters, biases and the LFSR state survive a reset (memories and reset-less registers);
    they start from ``state`` at configuration.

    Latency
    -------
    :meth:`cycles_per_update`: ``(classes - 1) * features / mults + max(features / mults +
    classes, features / grad_lanes) + filters * (taps + 1) + filters / conv_lanes * (taps +
    chunks)`` plus ``8 * DRAIN`` (32) cycles of pipeline drains, from ``start`` to ``done`` (within a few cycles, and
    when the probabilities come at least as fast as the dense phase takes classes).
    Reference network: 13,986 cycles at the UP5K preset (4 dense multipliers, 4 gradient
    lanes), 7,822 at the ECP5-25F preset (8 and 4), 2,245 at the ECP5-85F preset (32 dense
    multipliers, 16 gradient lanes; 2,583 with 8). A training step adds the forward latency of one image on the accelerator up to its
    first probability.

    Throughput
    ----------
    One training step at a time (batch 1): the next image is taken after ``done``.

    Resources
    ---------
    ``2 * mults`` multipliers (16 x 8) in the dense phase, ``grad_lanes * taps`` (16 x 8) in the
    conv-gradient phase, 1 (32 x 8 .. 16) in the conv update; masters
    ``(classes * features + filters * taps) x master_bits`` bits; the image buffer
    ``grad_lanes`` copies of ``input_size**2`` bytes; the pooled values and argmax positions of
    one image; the error accumulators ``features x err_acc_bits``; the conv gradients
    ``filters x (taps + 1) x conv_grad_bits``. The pooled-value and error-accumulator
    memories have two read ports (the conv-gradient phase overlaps the dense phase).

    Parameters
    ----------
    state : :class:`~cnnforge.hw.model.TrainState`
        Initial masters, biases, LFSR state and the :class:`~cnnforge.hw.params.TrainFormat`.
    parallelism : :class:`~cnnforge.hw.accel.Parallelism`
        ``conv_lanes`` (pool beat width, conv word layout) and ``dense_mults`` (dense word
        layout, masters updated per cycle).
    grad_lanes : int, optional
        Pooled features per cycle in the conv-gradient phase (``grad_lanes * (taps + 1)``
        multipliers); must divide ``dense_mults``, ``conv_lanes`` and ``filters // 2``.
        Default: ``parallelism.grad_lanes``.

    Members
    -------
    px_en : ``In(1)``, px_data : ``In(data.ArrayLayout(unsigned(8), in_channels))``
        Pixels of the training image in raster order, one per cycle with ``px_en``.
    pool_en, pool_value, pool_argmax : ``In``
        Pooled beats of the training image (the accelerator's pool tap).
    prob_en : ``In(1)``, prob_k : ``In(range(classes))``, prob : ``In(16)``
        Probabilities of the training image.
    start : ``In(1)``, label : ``In(range(classes))``
        Pulse with (or after) the first probability: run backward and update; class ``k``'s
        dense updates start once probability ``k`` is in (``prob_en`` with ``prob_k = k``;
        the probabilities come in class order).
    busy : ``Out(1)``, done : ``Out(1)``
        ``done`` pulses when the last model word is written.
    mw : ``Out(ModelWriteSignature(ModelMemory, mw_data_bits))``
        Model writes for the accelerator's port (formats of
        :func:`~cnnforge.hw.accel.model_writes`).
    dump_start : ``In(1)``; dump : ``Out(stream.Signature(unsigned(DUMP_BITS)))``
        Stream every master, bias and the LFSR state out, see :func:`dump_order`. Only while
        not ``busy``.

    Raises
    ------
    TypeError, ValueError
        For a lane count that is not an integer or does not fit the network.
    """

    DUMP_BITS = 32
    #: Idle cycles between phases (the deepest phase pipeline drains).
    DRAIN = 4

    def __init__(self, state, parallelism, *, grad_lanes=None):
        if not isinstance(parallelism, Parallelism):
            raise TypeError(f"parallelism must be a Parallelism, not {parallelism!r}")
        config, fmt = state.config, state.fmt
        if grad_lanes is None:
            grad_lanes = parallelism.grad_lanes
        grad_lanes = check_int("grad_lanes", grad_lanes, 1)
        # The conditions on the counts are Parallelism.check's (training=True): one place.
        Parallelism(**{**parallelism.to_dict(), "grad_lanes": grad_lanes}).check(config,
                                                                             training=True)
        lanes = parallelism.conv_lanes
        if fmt.lfsr_bits != self.DUMP_BITS:
            raise ValueError(f"the LFSR must have {self.DUMP_BITS} bits, not {fmt.lfsr_bits!r}")
        self._state, self._par, self._g = state, parallelism, grad_lanes
        self._config, self._fmt, self._widths = config, fmt, Widths(config)
        widths = self._widths
        # The words go into the accelerator's model write port: its width.
        self.mw_data_bits = model_word_bits(config, parallelism)
        super().__init__({
            "px_en": In(1),
            "px_data": In(data.ArrayLayout(unsigned(8), config.in_channels)),
            "pool_en": In(1),
            "pool_value": In(data.ArrayLayout(unsigned(8), lanes)),
            "pool_argmax": In(data.ArrayLayout(unsigned(widths.pool_index), lanes)),
            "prob_en": In(1),
            "prob_k": In(range(config.classes)),
            "prob": In(SoftmaxFormat.prob_bits),
            "start": In(1),
            "label": In(range(config.classes)),
            "busy": Out(1),
            "done": Out(1),
            "mw": Out(ModelWriteSignature(ModelMemory, self.mw_data_bits)),
            "dump_start": In(1),
            "dump": Out(stream.Signature(unsigned(self.DUMP_BITS))),
        })

    @property
    def dump_words(self):
        return sum(n for _, n in dump_order(self._config))

    def cycles_per_update(self):
        """Cycles from ``start`` to ``done`` (exact up to the drain gaps)."""
        cfg, par = self._config, self._par
        chunks = bias_shape(par.conv_lanes, cfg.taps)[0]
        steps = cfg.features // par.dense_mults
        return ((cfg.classes - 1) * steps + max(steps + cfg.classes, cfg.features // self._g)
                + cfg.filters * (cfg.taps + 1)
                + cfg.filters // par.conv_lanes * (cfg.taps + chunks) + 8 * self.DRAIN)

    def elaborate(self, platform):
        m = Module()
        cfg, fmt, widths, state = self._config, self._fmt, self._widths, self._state
        lanes, mults, G = self._par.conv_lanes, self._par.dense_mults, self._g
        K, cin, taps, F = cfg.kernel, cfg.in_channels, cfg.taps, cfg.filters
        classes, features, P, pool = cfg.classes, cfg.features, cfg.pool_size, cfg.pool
        steps = features // mults
        beats = features // lanes
        MB, frac = fmt.master_bits, fmt.master_frac
        stochastic = fmt.rounding == "stochastic"
        s_dw, s_db, s_cw, s_cb = fmt.dense_w_shift, fmt.dense_b_shift, fmt.conv_w_shift, fmt.conv_b_shift
        ea_bits = fmt.err_acc_bits(cfg)
        cg_bits = max(fmt.conv_grad_bits(cfg), fmt.conv_bias_grad_bits(cfg))
        m_lo, m_hi = fmt.master_min, fmt.master_max

        def read8(master):
            """The int8 forward weight of a master (round half up)."""
            return (master + (1 << frac >> 1)) >> frac

        # --- LFSR ---------------------------------------------------------------------------
        # Reset-less, like the masters in memory: a reset keeps the training state coherent.
        lfsr = Signal(32, init=int(state.lfsr.state), reset_less=True)
        powers = lfsr_leap_columns(fmt, max(mults, 1))
        # Draw j of a cycle is A**(j+1) s; only the first (one step) and the last (the next
        # state after `mults` draws) need all 32 bits, the others only the rounding bits.
        low = max(1, s_dw, s_db, s_cw, s_cb)
        draws = [_gf2_apply(m, powers[j], lfsr, 32 if j in (0, mults - 1) else min(32, low),
                               name=f"draw{j}")
                 for j in range(mults)]
        adv_mults = Signal()
        adv_one = Signal()
        with m.If(adv_mults):
            m.d.sync += lfsr.eq(draws[mults - 1])
        with m.Elif(adv_one):
            m.d.sync += lfsr.eq(draws[0])

        def rnd(j):
            return draws[j] if stochastic else None

        # --- Capture: image, pooled beats, probabilities ------------------------------------
        Hb = -(-cfg.input_size // K)
        img_depth = Hb * Hb
        img_banks = []      # [lane][by][bx] -> (read port, write port)
        for l in range(G):
            lane = []
            for by in range(K):
                row = []
                for bx in range(K):
                    mem = Memory(shape=data.ArrayLayout(unsigned(8), cin), depth=img_depth, init=[])
                    m.submodules[f"img_{l}_{by}_{bx}"] = mem
                    row.append((mem.read_port(), mem.write_port()))
                lane.append(row)
            img_banks.append(lane)
        qy, ry, qx, rx = (Signal(range(max(2, Hb))), Signal(range(K)),
                          Signal(range(max(2, Hb))), Signal(range(K)))
        px_addr = Signal(range(img_depth))
        m.d.comb += px_addr.eq(qy * Hb + qx)
        for l in range(G):
            for by in range(K):
                for bx in range(K):
                    _, wr = img_banks[l][by][bx]
                    m.d.comb += [wr.addr.eq(px_addr), wr.data.eq(self.px_data),
                                 wr.en.eq(self.px_en & (ry == by) & (rx == bx))]
        with m.If(self.px_en):
            with m.If((qx * K + rx) == cfg.input_size - 1):
                m.d.sync += [qx.eq(0), rx.eq(0)]
                with m.If((qy * K + ry) == cfg.input_size - 1):
                    m.d.sync += [qy.eq(0), ry.eq(0)]
                with m.Else():
                    with _carry(m, ry, K):
                        m.d.sync += qy.eq(qy + 1)
            with m.Else():
                with _carry(m, rx, K):
                    m.d.sync += qx.eq(qx + 1)

        # Pooled values: `banks` memories of `lanes` bytes (the DenseEngine scheme): beat b in
        # bank b % banks, word b // banks; argmax positions: one memory, word b.
        banks = max(1, mults // lanes)
        chunks = max(1, lanes // mults)
        pv_rd, pv_rd2, pv_wr = [], [], []
        for n in range(banks):
            mem = Memory(shape=data.ArrayLayout(unsigned(8), lanes), depth=beats // banks, init=[])
            m.submodules[f"pooled{n}"] = mem
            pv_rd.append(mem.read_port())
            pv_rd2.append(mem.read_port())      # the conv-gradient phase (overlaps dense)
            pv_wr.append(mem.write_port())
        m.submodules.argmax = am_mem = Memory(
            shape=data.ArrayLayout(unsigned(widths.pool_index), lanes), depth=beats, init=[])
        am_rd, am_wr = am_mem.read_port(), am_mem.write_port()
        pb = Signal(range(beats))
        pbank = Signal(range(max(2, banks)))
        pword = Signal(range(max(2, beats // banks)))
        for n in range(banks):
            m.d.comb += [pv_wr[n].addr.eq(pword), pv_wr[n].data.eq(self.pool_value),
                         pv_wr[n].en.eq(self.pool_en & (pbank == n))]
        m.d.comb += [am_wr.addr.eq(pb), am_wr.data.eq(self.pool_argmax), am_wr.en.eq(self.pool_en)]
        with m.If(self.pool_en):
            with m.If(pb == beats - 1):
                m.d.sync += [pb.eq(0), pbank.eq(0), pword.eq(0)]
            with m.Else():
                m.d.sync += pb.eq(pb + 1)
                with _carry(m, pbank, banks):
                    m.d.sync += pword.eq(pword + 1)

        probs = Array(Signal(SoftmaxFormat.prob_bits, name=f"prob{k}") for k in range(classes))
        # Probabilities taken in this step: class k's dense updates wait for probability k, so
        # the step can start with the first one (the softmax sends the rest while the dense
        # phase works through class 0).
        probs_in = Signal(range(classes + 1))
        with m.If(self.prob_en):
            m.d.sync += [probs[self.prob_k].eq(self.prob), probs_in.eq(probs_in + 1)]
        with m.If(self.done):
            m.d.sync += probs_in.eq(0)
        label = Signal(range(classes))
        deltas = []
        for k in range(classes):
            d = Signal(signed(fmt.delta_bits), name=f"delta{k}")
            diff = probs[k].as_signed() - Mux(label == k, SoftmaxFormat.one, 0)
            m.d.comb += d.eq(_clip(diff, fmt.delta_min, fmt.delta_max))
            deltas.append(d)
        deltas = Array(deltas)

        # --- Masters and biases --------------------------------------------------------------
        dm_init = dense_weight_words(cfg, mults, state.dense_m)
        m.submodules.dense_m = dm_mem = Memory(shape=data.ArrayLayout(signed(MB), mults),
                                               depth=classes * steps, init=dm_init)
        dm_rd, dm_wr = dm_mem.read_port(), dm_mem.write_port()
        cm_words = F // lanes * taps
        cm_init = [pack_fields(w, MB) for w in conv_weight_words(cfg, lanes, state.conv_m)]
        m.submodules.conv_m = cm_mem = Memory(shape=unsigned(MB * lanes), depth=cm_words,
                                              init=cm_init)
        cm_rd, cm_wr = cm_mem.read_port(), cm_mem.write_port(granularity=MB)
        cm_rdata = data.ArrayLayout(signed(MB), lanes)(cm_rd.data)
        dense_b = Array(Signal(signed(widths.dense_bias), init=int(b), name=f"dense_b{k}",
                               reset_less=True)
                        for k, b in enumerate(state.dense_b))
        conv_b = Array(Signal(signed(widths.conv_bias), init=int(b), name=f"conv_b{c}",
                              reset_less=True)
                       for c, b in enumerate(state.conv_b))

        # Error accumulators (dense phase) and conv gradients (per grad lane: channel c in lane
        # c % G at word c // G, taps accumulators and the bias gradient).
        m.submodules.e_acc = ea_mem = Memory(shape=data.ArrayLayout(signed(ea_bits), mults),
                                             depth=steps, init=[])
        ea_rd, ea_rd2, ea_wr = ea_mem.read_port(), ea_mem.read_port(), ea_mem.write_port()
        gc_rd, gc_wr = [], []
        for l in range(G):
            mem = Memory(shape=data.ArrayLayout(signed(cg_bits), taps + 1), depth=F // G, init=[])
            m.submodules[f"g_conv{l}"] = mem
            gc_rd.append(mem.read_port())
            gc_wr.append(mem.write_port())

        # --- Model write port (driven by one phase at a time) --------------------------------
        mw_en, mw_mem, mw_addr, mw_data = (Signal(), Signal(ModelMemory), Signal(16),
                                           Signal(self.mw_data_bits))
        m.d.comb += [self.mw.en.eq(mw_en), self.mw.memory.eq(mw_mem), self.mw.addr.eq(mw_addr),
                     self.mw.data.eq(mw_data)]

        # --- Phase control -------------------------------------------------------------------
        drain = Signal(range(self.DRAIN + 1))
        with m.If(drain != 0):
            m.d.sync += drain.eq(drain - 1)
        go = drain == 0

        # Dense phase counters (stage 0) and stage 1.
        k0 = Signal(range(classes))
        s0 = Signal(range(steps))
        a0 = Signal(range(classes * steps))
        v1 = Signal()
        k1 = Signal.like(k0)
        s1 = Signal.like(s0)
        a1 = Signal.like(a0)
        ch0 = Signal(range(max(2, chunks)))
        ch1 = Signal.like(ch0)
        sw0 = Signal(range(max(2, steps // chunks)))   # pooled word of step s

        # Conv-gradient phase: n-th group of G features.
        n_groups = features // G
        cn = Signal(range(n_groups))
        cg = Signal(range(F // G))                     # channel group: channels cg*G + l
        cpx = Signal(range(P))
        cpy = Signal(range(P))
        ew = Signal(range(steps))                      # e_acc word of the group
        ech = Signal(range(max(2, mults // G)))        # ... and chunk
        gb = Signal(range(beats))                      # pooled beat
        gbank = Signal(range(max(2, banks)))
        gword = Signal(range(max(2, beats // banks)))
        gch = Signal(range(max(2, lanes // G)))
        c_v1, c_v2, c_v3 = Signal(), Signal(), Signal()
        cg_run = Signal()

        # Conv update: channel c (group cgr, lane cj), tap ct; grad lane c % G, word c // G.
        uc = Signal(range(F))
        ut = Signal(range(taps))
        ua = Signal(range(cm_words))                   # g * taps + t
        uj = Signal(range(lanes))
        ul = Signal(range(G))
        uw = Signal(range(F // G))
        u_v1 = Signal()
        ut1, uj1, ul1, ua1, uc1 = (Signal.like(ut), Signal.like(uj), Signal.like(ul),
                                   Signal.like(ua), Signal.like(uc))
        b_words = F // lanes * bias_shape(lanes, taps)[0]
        bw = Signal(range(b_words))

        # Issue (stage 0) strobes of the phases.
        d_issue, c_issue, u_issue, o_issue, b_issue, bo_issue = (Signal(name=n) for n in (
            "d_issue", "c_issue", "u_issue", "o_issue", "b_issue", "bo_issue"))
        # Dump: stage 0 issue with room in the output FIFO, stage 1 into the FIFO.
        m.submodules.dump_fifo = dfifo = SyncFIFOBuffered(width=self.DUMP_BITS, depth=4)
        dv1 = Signal()
        room = Signal()
        m.d.comb += room.eq(dfifo.level + dv1 < 3)
        dj = Signal(range(mults))
        dsrc = Signal(range(5))
        dsrc1 = Signal.like(dsrc)
        dj1, dk1, duj1, duc1 = Signal.like(dj), Signal.like(k0), Signal.like(uj), Signal.like(uc)
        m.d.sync += [dv1.eq(0), dsrc1.eq(dsrc), dj1.eq(dj), dk1.eq(k0), duj1.eq(uj),
                     duc1.eq(uc)]

        @contextmanager
        def next_conv_master():
            """Step ``(uc, ut)`` through the conv masters in (channel, tap) raster, with ``ua``
            the word of channel ``uc = g * lanes + uj``, tap ``ut`` (``g * taps + ut``); the
            statements of the ``with`` block are added at a channel's last tap."""
            with m.If(ut == taps - 1):
                m.d.sync += [ut.eq(0), uc.eq(uc + 1)]
                with m.If(uj == lanes - 1):
                    m.d.sync += [uj.eq(0), ua.eq(ua + 1)]
                with m.Else():
                    m.d.sync += [uj.eq(uj + 1), ua.eq(ua - (taps - 1))]
                yield
            with m.Else():
                m.d.sync += [ut.eq(ut + 1), ua.eq(ua + 1)]

        @contextmanager
        def issue_words(issue, index, count):
            """A phase that issues ``count`` words, one a cycle after the drain (``issue``,
            ``index`` counting up); the statements of the ``with`` block are added at the
            last."""
            with m.If(go):
                m.d.comb += issue.eq(1)
                m.d.sync += index.eq(index + 1)
                with m.If(index == count - 1):
                    yield

        @contextmanager
        def dump_value(source):
            """A dump state: with room in the output FIFO, the value of ``source`` (``dsrc``)
            goes in; the statements of the ``with`` block are added then."""
            with m.If(room):
                m.d.comb += dsrc.eq(source)
                m.d.sync += dv1.eq(1)
                yield

        with m.FSM(name="phase") as phase:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [label.eq(self.label), drain.eq(self.DRAIN), k0.eq(0), s0.eq(0),
                                 a0.eq(0), ch0.eq(0), sw0.eq(0)]
                    m.next = "DENSE"
                with m.Elif(self.dump_start):
                    m.d.sync += [a0.eq(0), dj.eq(0)]
                    m.next = "D_DENSE"
            with m.State("DENSE"):
                with m.If(go & (k0 < probs_in)):
                    m.d.comb += d_issue.eq(1)
                    # The last class finalizes the error accumulators one word per cycle: the
                    # conv-gradient phase runs behind it (one cycle later than the write of
                    # each word at the earliest, at most one word per cycle).
                    with m.If((k0 == classes - 1) & (s0 == 1)):
                        m.d.sync += [cg_run.eq(1), cn.eq(0), cg.eq(0), cpx.eq(0), cpy.eq(0),
                                     ew.eq(0), ech.eq(0), gb.eq(0), gbank.eq(0), gword.eq(0),
                                     gch.eq(0)]
                    with m.If(s0 == steps - 1):
                        m.d.sync += [s0.eq(0), ch0.eq(0), sw0.eq(0), k0.eq(k0 + 1)]
                        with m.If(k0 == classes - 1):
                            m.d.sync += [drain.eq(self.DRAIN), k0.eq(0)]
                            m.next = "DENSE_B"
                    with m.Else():
                        m.d.sync += s0.eq(s0 + 1)
                        with _carry(m, ch0, chunks):
                            m.d.sync += sw0.eq(sw0 + 1)
                    m.d.sync += a0.eq(a0 + 1)
            with m.State("DENSE_B"):
                with m.If(go):
                    d = _round_shift(deltas[k0], s_db, rnd(0))
                    new = _clip(dense_b[k0] - d, -widths.dense_bias_max, widths.dense_bias_max)
                    m.d.sync += dense_b[k0].eq(new)
                    m.d.comb += [mw_en.eq(1), mw_mem.eq(ModelMemory.DENSE_B), mw_addr.eq(k0),
                                 mw_data.eq(new.as_signed()[:widths.dense_bias])]
                    if stochastic and s_db > 0:
                        m.d.comb += adv_one.eq(1)
                    m.d.sync += k0.eq(k0 + 1)
                    with m.If(k0 == classes - 1):
                        m.next = "CONV_G"
            with m.State("CONV_G"):
                with m.If(~cg_run & ~c_v1 & ~c_v2 & ~c_v3):
                    m.d.sync += [drain.eq(self.DRAIN), uc.eq(0), ut.eq(0), ua.eq(0),
                                 uj.eq(0), ul.eq(0), uw.eq(0)]
                    m.next = "CONV_W"
            with m.State("CONV_W"):
                with m.If(go):
                    m.d.comb += u_issue.eq(1)
                    with next_conv_master():
                        with _carry(m, ul, G):
                            m.d.sync += uw.eq(uw + 1)
                        with m.If(uc == F - 1):
                            m.d.sync += [drain.eq(self.DRAIN), ua.eq(0)]
                            m.next = "CONV_WOUT"
            with m.State("CONV_WOUT"):
                with issue_words(o_issue, ua, cm_words):
                    m.d.sync += [drain.eq(self.DRAIN), uc.eq(0), ul.eq(0), uw.eq(0)]
                    m.next = "CONV_B"
            with m.State("CONV_B"):
                with m.If(go):
                    m.d.comb += b_issue.eq(1)
                    m.d.sync += uc.eq(uc + 1)
                    with _carry(m, ul, G):
                        m.d.sync += uw.eq(uw + 1)
                    with m.If(uc == F - 1):
                        m.d.sync += [drain.eq(self.DRAIN), bw.eq(0)]
                        m.next = "CONV_BOUT"
            with m.State("CONV_BOUT"):
                with issue_words(bo_issue, bw, b_words):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
            # Dump: dense masters (word a0, element dj), dense biases (k0), conv masters (the
            # CONV_W counters), conv biases (uc), the LFSR state.
            with m.State("D_DENSE"):
                with dump_value(0):
                    with _carry(m, dj, mults):
                        m.d.sync += a0.eq(a0 + 1)
                        with m.If(a0 == classes * steps - 1):
                            m.d.sync += [a0.eq(0), k0.eq(0)]
                            m.next = "D_DB"
            with m.State("D_DB"):
                with dump_value(1):
                    m.d.sync += k0.eq(k0 + 1)
                    with m.If(k0 == classes - 1):
                        m.d.sync += [k0.eq(0), uc.eq(0), ut.eq(0), ua.eq(0), uj.eq(0)]
                        m.next = "D_CONV"
            with m.State("D_CONV"):
                with dump_value(2):
                    with next_conv_master():
                        with m.If(uc == F - 1):
                            m.d.sync += [uc.eq(0), ua.eq(0), uj.eq(0)]
                            m.next = "D_CB"
            with m.State("D_CB"):
                with dump_value(3):
                    m.d.sync += uc.eq(uc + 1)
                    with m.If(uc == F - 1):
                        m.d.sync += uc.eq(0)
                        m.next = "D_LFSR"
            with m.State("D_LFSR"):
                with dump_value(4):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~phase.ongoing("IDLE"))

        # Conv-gradient issue: runs while cg_run, alongside the last dense class and the biases.
        with m.If(cg_run):
            m.d.comb += c_issue.eq(1)
            m.d.sync += cn.eq(cn + 1)
            # channel group / position
            with _carry(m, cg, F // G):
                with _carry(m, cpx, P):
                    m.d.sync += cpy.eq(cpy + 1)
            # e_acc word/chunk
            with _carry(m, ech, mults // G):
                m.d.sync += ew.eq(ew + 1)
            # pooled beat (bank, word) / chunk
            with _carry(m, gch, lanes // G):
                m.d.sync += gb.eq(gb + 1)
                with _carry(m, gbank, banks):
                    m.d.sync += gword.eq(gword + 1)
            with m.If(cn == n_groups - 1):
                m.d.sync += cg_run.eq(0)

        # --- Memory read addresses (one phase at a time) -------------------------------------
        m.d.comb += [
            dm_rd.addr.eq(a0),
            ea_rd.addr.eq(s0),
            ea_rd2.addr.eq(ew),
            am_rd.addr.eq(gb),
            cm_rd.addr.eq(ua),
        ]
        for n in range(banks):
            m.d.comb += [pv_rd[n].addr.eq(sw0), pv_rd2[n].addr.eq(gword)]

        # --- Dense phase, stage 1 ------------------------------------------------------------
        m.d.sync += [v1.eq(d_issue), k1.eq(k0), s1.eq(s0), a1.eq(a0), ch1.eq(ch0)]
        if banks > 1:
            pooled_raw = Cat(*(pv_rd[n].data.as_value() for n in range(banks)))
        elif chunks > 1:
            pooled_raw = pv_rd[0].data.as_value().word_select(ch1, 8 * mults)
        else:
            pooled_raw = pv_rd[0].data.as_value()
        pooled1 = data.ArrayLayout(unsigned(8), mults)(pooled_raw)
        delta1 = Signal(signed(fmt.delta_bits))
        m.d.comb += delta1.eq(deltas[k1])
        new_m, new_e, new_w = [], [], []
        for j in range(mults):
            mj = dm_rd.data[j]
            e = Signal(signed(ea_bits), name=f"e_acc_new{j}")
            nm = Signal(signed(MB), name=f"dense_m_new{j}")
            m.d.comb += [
                e.eq(Mux(k1 == 0, 0, ea_rd.data[j]) + delta1 * read8(mj)),
                nm.eq(_clip(mj - _round_shift(delta1 * pooled1[j], s_dw, rnd(j)), m_lo, m_hi)),
            ]
            new_m.append(nm)
            new_e.append(e)
            new_w.append(read8(nm)[:8])
        m.d.comb += [
            dm_wr.addr.eq(a1), dm_wr.data.eq(Cat(*new_m)), dm_wr.en.eq(v1),
            ea_wr.addr.eq(s1), ea_wr.data.eq(Cat(*new_e)), ea_wr.en.eq(v1),
        ]
        if stochastic and s_dw > 0:
            m.d.comb += adv_mults.eq(v1)
        with m.If(v1):
            m.d.comb += [mw_en.eq(1), mw_mem.eq(ModelMemory.DENSE_W), mw_addr.eq(a1),
                         mw_data.eq(Cat(*new_w))]

        # --- Conv-gradient phase: stages 1-3 -------------------------------------------------
        ech1, gbank1, gch1 = Signal.like(ech), Signal.like(gbank), Signal.like(gch)
        cg1, cpx1, cpy1, first1 = Signal.like(cg), Signal.like(cpx), Signal.like(cpy), Signal()
        m.d.sync += [c_v1.eq(c_issue), ech1.eq(ech), gbank1.eq(gbank), gch1.eq(gch),
                     cg1.eq(cg), cpx1.eq(cpx), cpy1.eq(cpy), first1.eq((cpx == 0) & (cpy == 0))]
        # Stage 1: errors and window addresses of the G features.
        ea_chunk = data.ArrayLayout(signed(ea_bits), G)(
            ea_rd2.data.as_value().word_select(ech1, G * ea_bits) if mults > G
            else ea_rd2.data.as_value())
        pv_word = (Array(pv_rd2[n].data.as_value() for n in range(banks))[gbank1] if banks > 1
                   else pv_rd2[0].data.as_value())
        pv_chunk = data.ArrayLayout(unsigned(8), G)(
            pv_word.word_select(gch1, 8 * G) if lanes > G else pv_word)
        pi = widths.pool_index
        am_chunk = data.ArrayLayout(unsigned(pi), G)(
            am_rd.data.as_value().word_select(gch1, pi * G) if lanes > G
            else am_rd.data.as_value())
        n_conv = cfg.conv_size
        q_tab = Array(Const(y // K, range(Hb + 1)) for y in range(n_conv))
        r_tab = Array(Const(y % K, range(K)) for y in range(n_conv))
        dy_tab = Array(Const(a // pool, range(pool)) for a in range(pool * pool))
        dx_tab = Array(Const(a % pool, range(pool)) for a in range(pool * pool))
        e2 = [Signal(signed(fmt.err_bits), name=f"e2_{l}") for l in range(G)]
        ry2 = [Signal(range(K), name=f"ry2_{l}") for l in range(G)]
        rx2 = [Signal(range(K), name=f"rx2_{l}") for l in range(G)]
        for l in range(G):
            err = _clip(_round_shift(ea_chunk[l], fmt.err_shift), fmt.err_min, fmt.err_max)
            mask = (pv_chunk[l] > 0) & (pv_chunk[l] < widths.act_max)
            y0 = Signal(range(n_conv), name=f"y0_{l}")
            x0 = Signal(range(n_conv), name=f"x0_{l}")
            m.d.comb += [y0.eq(cpy1 * pool + dy_tab[am_chunk[l]]),
                         x0.eq(cpx1 * pool + dx_tab[am_chunk[l]])]
            qy1, ry1, qx1, rx1 = q_tab[y0], r_tab[y0], q_tab[x0], r_tab[x0]
            for by in range(K):
                for bx in range(K):
                    rd, _ = img_banks[l][by][bx]
                    m.d.comb += rd.addr.eq((qy1 + (by < ry1)) * Hb + qx1 + (bx < rx1))
            m.d.sync += [e2[l].eq(Mux(mask, err, 0)), ry2[l].eq(ry1), rx2[l].eq(rx1)]
        cg2, first2 = Signal.like(cg), Signal()
        m.d.sync += [c_v2.eq(c_v1), cg2.eq(cg1), first2.eq(first1)]
        # Stage 2: the window's pixels in tap order; products.
        p3 = [[Signal(signed(cg_bits), name=f"p3_{l}_{t}") for t in range(taps + 1)]
              for l in range(G)]
        for l in range(G):
            bank_data = [[img_banks[l][by][bx][0].data.as_value() for bx in range(K)]
                         for by in range(K)]
            for ky in range(K):
                for kx in range(K):
                    word = Array(Array(bank_data[(r + ky) % K][(c + kx) % K] for c in range(K))
                                 for r in range(K))[ry2[l]][rx2[l]]
                    for ch in range(cin):
                        t = (ky * K + kx) * cin + ch
                        m.d.sync += p3[l][t].eq(e2[l] * word[8 * ch:8 * ch + 8])
            m.d.sync += p3[l][taps].eq(e2[l])
        cg3, first3 = Signal.like(cg), Signal()
        m.d.sync += [c_v3.eq(c_v2), cg3.eq(cg2), first3.eq(first2)]
        # Stage 3: accumulate (read issued in stage 2).
        for l in range(G):
            acc = [Mux(first3, 0, gc_rd[l].data[t]) + p3[l][t] for t in range(taps + 1)]
            accs = [Signal(signed(cg_bits), name=f"gacc_{l}_{t}") for t in range(taps + 1)]
            m.d.comb += [a.eq(v) for a, v in zip(accs, acc)]
            m.d.comb += [
                gc_rd[l].addr.eq(Mux(c_v2, cg2, uw)),
                gc_wr[l].addr.eq(cg3), gc_wr[l].data.eq(Cat(*accs)), gc_wr[l].en.eq(c_v3),
            ]

        # --- Conv update (one master a cycle), CONV_W words, conv biases, CONV_B words -------
        u_v1, o_v1, b_v1 = Signal(), Signal(), Signal()
        m.d.sync += [u_v1.eq(u_issue), o_v1.eq(o_issue), b_v1.eq(b_issue), ut1.eq(ut),
                     uj1.eq(uj), ul1.eq(ul), ua1.eq(ua), uc1.eq(uc)]
        gc_lane = Array(gc_rd[l].data.as_value() for l in range(G))[ul1] if G > 1 else \
            gc_rd[0].data.as_value()
        g_w = gc_lane.word_select(ut1, cg_bits).as_signed()
        g_b = gc_lane[taps * cg_bits:(taps + 1) * cg_bits].as_signed()
        mc = cm_rd.data.word_select(uj1, MB).as_signed()
        nmc = Signal(signed(MB))
        m.d.comb += [
            nmc.eq(_clip(mc - _round_shift(g_w, s_cw, rnd(0)), m_lo, m_hi)),
            cm_wr.addr.eq(ua1), cm_wr.data.eq(Cat(*([nmc] * lanes))),
            cm_wr.en.eq(Mux(u_v1, Const(1, lanes) << uj1, 0)),
        ]
        if stochastic and s_cw > 0:
            with m.If(u_v1):
                m.d.comb += adv_one.eq(1)
        with m.If(o_v1):
            m.d.comb += [mw_en.eq(1), mw_mem.eq(ModelMemory.CONV_W), mw_addr.eq(ua1),
                         mw_data.eq(Cat(*(read8(cm_rdata[j])[:8] for j in range(lanes))))]
        with m.If(b_v1):
            nb = _clip(conv_b[uc1] - _round_shift(g_b, s_cb, rnd(0)),
                       -widths.conv_bias_max, widths.conv_bias_max)
            m.d.sync += conv_b[uc1].eq(nb)
            if stochastic and s_cb > 0:
                m.d.comb += adv_one.eq(1)
        b_chunks, b_per = bias_shape(lanes, taps)
        cb_words = []
        for g in range(F // lanes):
            for j in range(b_chunks):
                fields = [conv_b[g * lanes + j * b_per + k][:widths.conv_bias]
                          if j * b_per + k < lanes else Const(0, widths.conv_bias)
                          for k in range(b_per)]
                cb_words.append(Cat(*fields))
        with m.If(bo_issue):
            m.d.comb += [mw_en.eq(1), mw_mem.eq(ModelMemory.CONV_B), mw_addr.eq(bw),
                         mw_data.eq(Array(cb_words)[bw])]

        # --- Dump, stage 1 --------------------------------------------------------------------
        value = Signal(signed(self.DUMP_BITS))
        with m.Switch(dsrc1):
            with m.Case(0):
                m.d.comb += value.eq(dm_rd.data.as_value().word_select(dj1, MB).as_signed())
            with m.Case(1):
                m.d.comb += value.eq(dense_b[dk1])
            with m.Case(2):
                m.d.comb += value.eq(cm_rd.data.word_select(duj1, MB).as_signed())
            with m.Case(3):
                m.d.comb += value.eq(conv_b[duc1])
            with m.Default():
                m.d.comb += value.eq(lfsr)
        m.d.comb += [
            dfifo.w_data.eq(value), dfifo.w_en.eq(dv1),
            self.dump.payload.eq(dfifo.r_data), self.dump.valid.eq(dfifo.r_rdy),
            dfifo.r_en.eq(self.dump.ready),
        ]
        return m


class TrainingAccelerator(wiring.Component):
    """The inference :class:`~cnnforge.hw.accel.Accelerator` with on-chip training.

    One input stream carries commands and pixels (:func:`TrainInputLayout`): an image is
    ``input_size**2`` beats of ``cmd`` ``INFER`` or ``TRAIN`` (the command and, for training,
    the ``label`` of an image are those of its first beat); ``DUMP`` is one beat between images.

    * ``INFER`` images stream back to back exactly as on the Accelerator (results on ``o``).
    * A ``TRAIN`` image waits until no image is in flight, runs the forward pass (its results
      also go out on ``o``: the prediction before the update), then the :class:`Trainer`
      backward pass and update; ``step_done`` pulses when the new weights are in the
      accelerator, and the next beat is taken only then.
    * ``DUMP`` (taken when no step runs) streams every master, bias and the LFSR state on
      ``dump``, in the order of :func:`dump_order`.

    Latency
    -------
    A training step: the forward latency of one image (not the pipelined throughput) plus
    :meth:`Trainer.cycles_per_update`.

    Parameters
    ----------
    state : :class:`~cnnforge.hw.model.TrainState`
        Initial masters (the accelerator is built with ``state.model()``).
    parallelism : :class:`~cnnforge.hw.accel.Parallelism`
    grad_lanes : int, optional
        See :class:`Trainer`.

    Members
    -------
    i : ``In(stream.Signature(TrainInputLayout(config)))``
    o : ``Out(stream.Signature(ResultLayout(config)))``
    dump : ``Out(stream.Signature(unsigned(32)))``
    mw : ``In(ModelWriteSignature(ModelMemory, mw_data_bits))``
        The accelerator's model write port for the host (the trainer's writes take
        precedence; host writes change the int8 weights only, not the masters).
    busy : ``Out(1)``
        A training step or dump runs.
    step_done : ``Out(1)``
        Pulses when a training step has finished.
    """

    def __init__(self, state, parallelism, *, grad_lanes=None):
        self._trainer = Trainer(state, parallelism, grad_lanes=grad_lanes)
        self._accel = Accelerator(state.model(), parallelism)
        self._config = state.config
        config = state.config
        super().__init__({
            "i": In(stream.Signature(TrainInputLayout(config))),
            "o": Out(stream.Signature(ResultLayout(config))),
            "dump": Out(stream.Signature(unsigned(Trainer.DUMP_BITS))),
            "mw": In(ModelWriteSignature(ModelMemory, self._accel.mw_data_bits)),
            "busy": Out(1),
            "step_done": Out(1),
        })

    @property
    def trainer(self):
        return self._trainer

    @property
    def mw_data_bits(self):
        """Width of a model word on the write port (the accelerator's)."""
        return self._accel.mw_data_bits

    @property
    def cycles_per_image(self):
        """Sustained cycles per inference image (the accelerator's)."""
        return self._accel.cycles_per_image

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.accel = accel = self._accel
        m.submodules.trainer = trainer = self._trainer
        pixels = cfg.input_size ** 2

        pix = Signal(range(pixels))
        in_flight = Signal(4)        # images fully taken whose results are not all out
        res_k = Signal(range(cfg.classes))
        training = Signal()          # from the first beat of a TRAIN image to step_done
        label = Signal(range(cfg.classes))
        p = self.i.payload
        boundary = pix == 0
        is_dump = boundary & (p.cmd == TrainCommand.DUMP)
        is_train = boundary & (p.cmd == TrainCommand.TRAIN)
        block = Signal()
        m.d.comb += block.eq(boundary & (training | trainer.busy |
                                         ((p.cmd != TrainCommand.INFER) & (in_flight != 0))))
        px_take = Signal()
        m.d.comb += [
            accel.i.payload.eq(p.pixel),
            accel.i.valid.eq(self.i.valid & ~block & ~is_dump),
            self.i.ready.eq(~block & (is_dump | accel.i.ready)),
            px_take.eq(accel.i.valid & accel.i.ready),
            trainer.dump_start.eq(self.i.valid & ~block & is_dump),
            trainer.px_en.eq(px_take & Mux(boundary, is_train, training)),
            trainer.px_data.eq(p.pixel),
        ]
        with m.If(px_take):
            m.d.sync += pix.eq(Mux(pix == pixels - 1, 0, pix + 1))
            with m.If(is_train):
                m.d.sync += [training.eq(1), label.eq(p.label)]

        wiring.connect(m, wiring.flipped(self.o), accel=accel.o)
        wiring.connect(m, wiring.flipped(self.dump), trainer=trainer.dump)
        res = accel.o.valid & accel.o.ready
        last_res = res & (res_k == cfg.classes - 1)
        with m.If(res):
            m.d.sync += res_k.eq(Mux(res_k == cfg.classes - 1, 0, res_k + 1))
        m.d.sync += in_flight.eq(in_flight + (px_take & (pix == pixels - 1)) - last_res)
        m.d.comb += [
            trainer.pool_en.eq(accel.pool_valid & training),
            trainer.pool_value.eq(accel.pool_value),
            trainer.pool_argmax.eq(accel.pool_argmax),
            trainer.prob_en.eq(res & training),
            trainer.prob_k.eq(res_k),
            trainer.prob.eq(accel.o.payload.prob),
            trainer.start.eq(res & (res_k == 0) & training),
            trainer.label.eq(label),
            self.step_done.eq(trainer.done),
            self.busy.eq(training | trainer.busy),
        ]
        with m.If(trainer.done):
            m.d.sync += training.eq(0)
        # The trainer's writes take the port; the host's wait (the link writes between steps).
        with m.If(trainer.mw.en):
            wiring.connect(m, trainer.mw, accel.mw)
        with m.Else():
            wiring.connect(m, wiring.flipped(self.mw), accel.mw)
        return m
