"""Integer softmax approximation and argmax over an image's logits, with one serial multiplier."""

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .params import SoftmaxFormat, Widths, unsigned_bits
from .util import check_config, check_int


__all__ = ["Softmax", "SoftmaxResultLayout"]


def SoftmaxResultLayout(config):
    """Output payload: the Q15 probability of the beat's class and the image's class."""
    return data.StructLayout({
        "prob": unsigned(SoftmaxFormat.prob_bits),
        "cls": unsigned(Widths(config).class_index),
    })


class Softmax(wiring.Component):
    """Q15 probabilities and the argmax of every image's ``classes`` logits.

    Bit-identical to :func:`cnnforge.sim.reference.golden.softmax_int` (see its docstring for the
    arithmetic) and to ``argmax`` with the golden tie rule (the lowest index among equal
    maxima).

    The block is sequential and small: one shift-and-add multiplier (:attr:`MUL_BITS` cycles a
    product) serves every product of the algorithm, the exp2 and reciprocal-seed tables
    (64 entries each) are read-only memories (logic, or block RAM: ``tables_in_block_ram``),
    and the logits and exponentials sit in two ``classes``-word memories. Per image:

    1. *load*: the ``classes`` logits are taken, one per cycle, while the maximum and its first
       index are tracked;
    2. *exp*: per class, ``t = (max - logit) * mult`` rounded and shifted by ``shift``, clamped to
       ``t_max``; ``e = exp2_table[t mod 64] >> (t >> 6)``; ``S += e``;
    3. *normalize*: ``S`` shifted right into ``[2**15, 2**16)`` (``n - 15`` steps), the seed
       ``x0`` read, one Newton step ``x1 = x0 * (2**31 - m * x0) >> 30`` (two products);
    4. *out*: per class ``p = (e * x1 + 2**(n-1)) >> n``, offered on ``o`` with the class;
       computed as ``((e * x1 >> (n - 15)) + 2**14) >> 15`` (equal: the bits shifted out first
       lie below the rounding bit), the first shift one bit per cycle in the product register
       rather than by a barrel shifter.

    Latency and throughput
    ----------------------
    ``i.ready`` is high only in the load phase. After the last logit, the first output beat
    follows in about ``(MUL_BITS + 7) * classes + 2 * MUL_BITS + 9 + (n - 15)`` cycles, the
    others every ``MUL_BITS + 4 + (n - 15)`` cycles without backpressure (``n - 15`` is 0 to 3
    for 10 classes): about 480 to 530 cycles per image for 10 classes,
    well within the time the dense layer takes per image (the accelerator buffers two logits
    in front of this block).

    With ``pipelined_exp=True`` the *exp* step is a pipeline of its own taking one class per
    cycle: ``(max - logit) * mult`` as the sum of the shifted distances for the set bits of
    the constant ``mult`` (one adder level per stage), then the rounding shift and clamp, the
    table read and the exponent shift, each registered. The exp step then takes
    ``classes`` cycles plus the pipeline depth instead of ``(MUL_BITS + 7) * classes`` (about
    200 cycles fewer before the first probability for 10 classes: a training step's update
    starts with it), for ``popcount(mult)`` adders of about ``dense_acc + 16`` bits.

    Parameters
    ----------
    config : NetworkConfig
        ``classes`` and the logit width :attr:`~cnnforge.hw.params.Widths.dense_acc`.
    softmax_mult : int
        Logit-distance multiplier, ``1 .. 2**SoftmaxFormat.mult_bits - 1`` (model file).
    softmax_shift : int
        Right shift after the multiplication, ``1 .. dense_acc + mult_bits``.
    pipelined_exp : bool
        The exp step pipelined, one class per cycle (see above). Results do not depend on it.
    tables_in_block_ram : bool
        The exp2 and reciprocal-seed tables in block RAM rather than logic: on the iCE40
        (``synth_ice40``), 2 SB_RAM40_4K instead of about 220 LUT4. Results do not depend on it.

    Members
    -------
    i : ``In(stream.Signature(signed(dense_acc)))``
        Logits, ``classes`` per image, class 0 first.
    o : ``Out(stream.Signature(SoftmaxResultLayout(config)))``
        ``classes`` beats per image: beat ``k`` the probability of class ``k`` and the class.
    """

    MUL_BITS = SoftmaxFormat.mult_bits

    def __init__(self, config, *, softmax_mult, softmax_shift, pipelined_exp=False,
                 tables_in_block_ram=False):
        check_config(config)
        fmt = SoftmaxFormat()
        widths = Widths(config)
        mult_max, shift_max = (1 << fmt.mult_bits) - 1, widths.dense_acc + fmt.mult_bits
        softmax_mult = check_int("softmax_mult", softmax_mult, 1, mult_max,
                                 requirement=f"in 1..{mult_max}")
        softmax_shift = check_int("softmax_shift", softmax_shift, 1, shift_max,
                                  requirement=f"in 1..{shift_max}")
        if not isinstance(pipelined_exp, bool):
            raise TypeError(f"pipelined_exp must be a bool, not {pipelined_exp!r}")
        self._pipelined_exp = pipelined_exp
        if not isinstance(tables_in_block_ram, bool):
            raise TypeError(f"tables_in_block_ram must be a bool, not {tables_in_block_ram!r}")
        self._tables_in_block_ram = tables_in_block_ram
        self._config, self._widths, self._fmt = config, widths, fmt
        self._mult, self._shift = softmax_mult, softmax_shift
        super().__init__({
            "i": In(stream.Signature(signed(widths.dense_acc))),
            "o": Out(stream.Signature(SoftmaxResultLayout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        config, widths, fmt = self._config, self._widths, self._fmt
        classes = config.classes
        logit_bits = widths.dense_acc
        sum_bits = unsigned_bits(classes * fmt.one)
        # The serial multiplier: P = A * B, B taken MSB first, MUL_BITS cycles.
        # Operands: (max - logit) x mult, m x x0, (2**31 - m*x0) x x0, e x x1; x0, x1 < 2**15
        # and 2**31 - m*x0 < 2**31 for every m (checked exhaustively in the tests).
        a_bits = max(logit_bits, 31, fmt.exp_bits)
        b_bits = self.MUL_BITS
        p_bits = a_bits + b_bits

        m.submodules.logit_mem = logit_mem = Memory(shape=signed(logit_bits), depth=classes,
                                                    init=[])
        m.submodules.exp_mem = exp_mem = Memory(shape=unsigned(fmt.exp_bits), depth=classes,
                                                init=[])
        # (Yosys makes small read-only tables logic; asked, it puts them in block RAM)
        table_attrs = {"ram_style": "block"} if self._tables_in_block_ram else None
        m.submodules.exp2_rom = exp2_rom = Memory(shape=unsigned(fmt.exp_bits),
                                                  depth=1 << fmt.frac_bits,
                                                  init=[int(v) for v in fmt.exp2_table()],
                                                  attrs=table_attrs)
        m.submodules.recip_rom = recip_rom = Memory(shape=unsigned(fmt.recip_bits),
                                                    depth=1 << fmt.recip_index_bits,
                                                    init=[int(v) for v in fmt.recip_table()],
                                                    attrs=table_attrs)
        logit_wr, logit_rd = logit_mem.write_port(), logit_mem.read_port()
        exp_wr, exp_rd = exp_mem.write_port(), exp_mem.read_port()
        exp2_rd, recip_rd = exp2_rom.read_port(), recip_rom.read_port()

        k = Signal(range(max(2, classes)))       # class being loaded / computed / sent
        best = Signal(signed(logit_bits))
        best_k = Signal(range(max(2, classes)))
        total = Signal(sum_bits)
        norm = Signal(max(sum_bits, fmt.exp_bits + 1))   # S shifted into [2**15, 2**16)
        norm_shift = Signal(range(max(2, sum_bits)))     # n - 15
        shift_left = Signal.like(norm_shift)
        e_r = Signal(fmt.exp_bits)
        t = Signal(range(fmt.t_max + 1))
        x0 = Signal(fmt.recip_bits)
        x1 = Signal(b_bits)

        mul_a = Signal(a_bits)
        mul_b = Signal(b_bits)
        product = Signal(p_bits)
        mul_count = Signal(range(b_bits + 1))
        mul_then = Signal(2)           # which phase the product belongs to
        EXP, SEED, NEWTON, PROB = range(4)

        half = 1 << (self._shift - 1)
        t_full = Signal(max(1, p_bits + 1 - self._shift))    # the rounded, shifted product
        # One adder rounds both the exp step's product (+ 2**(shift-1)) and a probability's
        # (+ 2**14): they are never needed in the same cycle.
        round_sum = Signal(p_bits + 1)
        pk = Signal(range(max(2, classes)))      # pipelined exp: the class issued
        m.d.comb += [
            logit_wr.addr.eq(k), logit_wr.data.eq(self.i.payload),
            logit_rd.addr.eq(pk if self._pipelined_exp else k),
            exp_wr.addr.eq(k), exp_rd.addr.eq(k),
            exp2_rd.addr.eq(t[:fmt.frac_bits]),
            recip_rd.addr.eq(norm[15 - fmt.recip_index_bits:15]),
        ]

        def start_multiply(a, b, then):
            m.d.sync += [mul_a.eq(a), mul_b.eq(b), product.eq(0), mul_count.eq(0),
                         mul_then.eq(then)]
            m.next = "MULTIPLY"


        # The running maximum is compared a cycle after each logit is taken (registered: the
        # logits come straight from a FIFO's block RAM, too late in the cycle for a comparison
        # into the maximum's enables as well); the last comparison lands in the first cycle
        # after LOAD, before either exp step reads `best`.
        cmp_v = Signal()
        cmp_logit = Signal(signed(logit_bits), reset_less=True)
        cmp_k = Signal.like(k, reset_less=True)
        m.d.sync += cmp_v.eq(0)
        with m.If(cmp_v & ((cmp_k == 0) | (cmp_logit > best))):
            m.d.sync += [best.eq(cmp_logit), best_k.eq(cmp_k)]

        issuing = Signal()
        in_exp_pipe = Signal()
        if self._pipelined_exp:
            # The exp pipeline: issue (logit read) -> d -> adder levels -> t -> table read ->
            # e -> exp_mem write and sum, a valid bit travelling with each class. k counts the
            # classes written (exp_wr.addr), pk the classes issued.
            issue = Signal()
            m.d.comb += issue.eq(in_exp_pipe & issuing)
            with m.If(issue):
                m.d.sync += pk.eq(pk + 1)
                with m.If(pk == classes - 1):
                    m.d.sync += issuing.eq(0)
            v_read = Signal()
            m.d.sync += v_read.eq(issue)
            d = Signal(unsigned(logit_bits), reset_less=True)
            v = Signal()
            m.d.sync += [d.eq((best - logit_rd.data).as_unsigned()), v.eq(v_read)]
            # d * mult + 2**(shift-1): the shifted copies of d for the set bits of mult and
            # the rounding constant, summed pairwise, one registered adder level at a time.
            terms = [d << b for b in range(fmt.mult_bits) if (self._mult >> b) & 1]
            terms.append(Const(half, max(1, half.bit_length())))
            level = 0
            while len(terms) > 1:
                pairs = []
                for j in range(0, len(terms) - 1, 2):
                    r = Signal(p_bits + 1, name=f"exp_sum{level}_{j // 2}", reset_less=True)
                    m.d.sync += r.eq(terms[j] + terms[j + 1])
                    pairs.append(r)
                if len(terms) % 2:
                    r = Signal(p_bits + 1, name=f"exp_sum{level}_{len(terms) // 2}",
                               reset_less=True)
                    m.d.sync += r.eq(terms[-1])
                    pairs.append(r)
                v_next = Signal(name=f"exp_v{level}")
                m.d.sync += v_next.eq(v)
                terms, v, level = pairs, v_next, level + 1
            v_t = Signal()
            rounded = terms[0] >> self._shift
            m.d.sync += [t.eq(Mux(rounded >= fmt.t_max, fmt.t_max, rounded)), v_t.eq(v)]
            v_table = Signal()                  # exp2_rd addressed from t: data next cycle
            int_part = Signal(range(fmt.t_max // (1 << fmt.frac_bits) + 1))
            m.d.sync += [v_table.eq(v_t), int_part.eq(t >> fmt.frac_bits)]
            v_e = Signal()
            m.d.sync += [e_r.eq(Mux(int_part >= fmt.exp_bits, 0, exp2_rd.data >> int_part)),
                         v_e.eq(v_table)]
            with m.If(v_e):
                m.d.comb += [exp_wr.data.eq(e_r), exp_wr.en.eq(1)]
                m.d.sync += total.eq(total + e_r)
                # k stops at classes - 1, as after the serial exp step.
                with m.If(k != classes - 1):
                    m.d.sync += k.eq(k + 1)

        m.d.comb += round_sum.eq(product + Mux(mul_then == PROB, 1 << 14, half))

        with m.FSM(init="LOAD"):
            if self._pipelined_exp:
                with m.State("EXP_PIPE"):
                    m.d.comb += in_exp_pipe.eq(1)
                    with m.If(v_e & (k == classes - 1)):
                        m.next = "NORMALIZE_LOAD"

            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), logit_wr.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += [cmp_v.eq(1), cmp_logit.eq(self.i.payload), cmp_k.eq(k)]
                    with m.If(k == classes - 1):
                        m.d.sync += [k.eq(0), total.eq(0)]
                        if self._pipelined_exp:
                            m.d.sync += [pk.eq(0), issuing.eq(1)]
                            m.next = "EXP_PIPE"
                        else:
                            m.next = "EXP_READ"
                    with m.Else():
                        m.d.sync += k.eq(k + 1)

            with m.State("EXP_READ"):           # logit_rd.data valid in the next cycle
                m.next = "EXP_START"

            with m.State("EXP_START"):
                start_multiply((best - logit_rd.data).as_unsigned(), self._mult, EXP)

            with m.State("MULTIPLY"):
                m.d.sync += [
                    product.eq((product << 1) + Mux(mul_b[-1], mul_a, 0)),
                    mul_b.eq(mul_b << 1),
                    mul_count.eq(mul_count + 1),
                ]
                with m.If(mul_count == b_bits - 1):
                    m.next = "MULTIPLIED"

            with m.State("MULTIPLIED"):
                with m.Switch(mul_then):
                    with m.Case(EXP):
                        m.d.sync += t_full.eq(round_sum >> self._shift)
                        m.next = "EXP_CLAMP"
                    with m.Case(SEED):
                        start_multiply((1 << 31) - product[:32], x0, NEWTON)
                    with m.Case(NEWTON):
                        m.d.sync += [x1.eq(product >> 30), k.eq(0)]
                        m.next = "PROB_READ"
                    with m.Case(PROB):
                        m.d.sync += shift_left.eq(norm_shift)
                        m.next = "PROB_SHIFT"

            # (P + 2**(n-1)) >> n with n = norm_shift + 15 is ((P >> norm_shift) + 2**14) >> 15
            # (the bits shifted out are below the rounding bit): norm_shift single-bit shifts
            # of the product register instead of a barrel shifter.
            with m.State("PROB_SHIFT"):
                with m.If(shift_left == 0):
                    m.d.sync += [self.o.payload.prob.eq(round_sum >> 15),
                                 self.o.payload.cls.eq(best_k), self.o.valid.eq(1)]
                    m.next = "PROB_SEND"
                with m.Else():
                    m.d.sync += [product.eq(product >> 1), shift_left.eq(shift_left - 1)]

            # The rounding add, the clamp and the table read: a cycle each, short paths.
            with m.State("EXP_CLAMP"):
                m.d.sync += t.eq(Mux(t_full >= fmt.t_max, fmt.t_max, t_full))
                m.next = "EXP_ADDR"

            with m.State("EXP_ADDR"):           # the table is addressed from t
                m.next = "EXP_TABLE"

            with m.State("EXP_TABLE"):          # exp2_rd.data valid: the table entry of t
                int_part = t >> fmt.frac_bits
                m.d.sync += e_r.eq(Mux(int_part >= fmt.exp_bits, 0, exp2_rd.data >> int_part))
                m.next = "EXP_SUM"

            with m.State("EXP_SUM"):            # e stored and summed, a cycle after its read
                m.d.comb += [exp_wr.data.eq(e_r), exp_wr.en.eq(1)]
                m.d.sync += total.eq(total + e_r)
                with m.If(k == classes - 1):
                    m.next = "NORMALIZE_LOAD"
                with m.Else():
                    m.d.sync += k.eq(k + 1)
                    m.next = "EXP_READ"

            with m.State("NORMALIZE_LOAD"):
                m.d.sync += [norm.eq(total), norm_shift.eq(0)]
                m.next = "NORMALIZE"

            with m.State("NORMALIZE"):
                with m.If(norm >= 1 << 16):
                    m.d.sync += [norm.eq(norm >> 1), norm_shift.eq(norm_shift + 1)]
                with m.Else():
                    m.next = "SEED_READ"        # recip_rd.data valid in the next cycle

            with m.State("SEED_READ"):
                m.d.sync += x0.eq(recip_rd.data)
                start_multiply(norm[:16], recip_rd.data, SEED)

            with m.State("PROB_READ"):          # exp_rd.data valid in the next cycle
                m.next = "PROB_START"

            with m.State("PROB_START"):
                start_multiply(exp_rd.data, x1, PROB)

            with m.State("PROB_SEND"):
                with m.If(self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
                    with m.If(k == classes - 1):
                        m.d.sync += k.eq(0)
                        m.next = "LOAD"
                    with m.Else():
                        m.d.sync += k.eq(k + 1)
                        m.next = "PROB_READ"
        return m
