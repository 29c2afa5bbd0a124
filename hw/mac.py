"""A pipelined array of int8 multiply-accumulate lanes (the conv and dense engines' datapath)."""


from amaranth import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .util import REPLICA, check_choice, check_int


__all__ = ["MACArray"]


class MACArray(wiring.Component):
    """``lanes`` multiply-accumulate lanes sharing one activation vector of ``taps`` bytes.

    Every cycle with ``i_valid`` each lane ``l`` computes the dot product
    ``s_l = sum_t a[t] * b[l][t]`` (``lanes * taps`` multipliers, uint8 or int8 activations
    times int8 weights) and accumulates it:
    ``acc_l = (0 if i_first else acc_l) + s_l``. A group carrying ``i_last`` closes the
    accumulation: :attr:`LATENCY` cycles after it was presented ``o_valid`` pulses for one cycle
    and ``acc`` holds the finished sums. A group with both ``i_first`` and ``i_last`` is a
    one-group accumulation.

    Pure pipeline, no backpressure: the consumer must take ``acc`` in the ``o_valid`` cycle
    (it holds until the next group reaches the accumulator, at least one cycle).
    ``i_valid`` may drop in any cycle; the accumulation resumes with the next valid group.

    Pipeline (identical for all targets, so they are cycle-for-cycle interchangeable)::

        cycle 0: a, b, i_valid/first/last presented
        cycle 1: operand registers (the DSP's A/B input registers on iCE40 and ECP5)
        cycle 2: product registers (the SB_MAC16's 8x8 multiplier pipeline registers, the
                 MULT18X18D's output register)
        cycle 3: accumulators in the fabric (tap sum + accumulate), o_valid

    With ``sum_levels`` the tap sum is cut into pipeline stages instead, for fast clocks on
    LUT fabric: the generic target forms each product as two registered partial products
    (activation times the weight's low and high nibble: two 8x4 LUT multipliers in cycle 2;
    each lane has its own copy of the cycle-1 activation registers, so that no register drives
    every lane's multipliers across the die),
    and the balanced adder tree over the ``2 * taps`` terms (``ceil(log2(2 * taps))``
    levels) followed by the accumulate (one more level) is registered after every
    ``sum_levels`` adder levels; cycles 3 .. :attr:`latency` - 1 hold partial sums and the
    accumulators follow in cycle :attr:`latency`. The DSP targets (whole products, one level
    less) add a delay register so that all targets keep the same latency.

    Latency
    -------
    :attr:`LATENCY` = 3 cycles (``sum_levels=None``), :attr:`latency` in general
    (``3 + ceil((ceil(log2(2 * taps)) + 1) / sum_levels) - 1``), from the cycle a group is
    presented with ``i_valid`` to the ``o_valid`` of the accumulation it closes (``i_last``).

    Throughput
    ----------
    One group (``lanes * taps`` multiply-accumulates) per cycle, sustained, for any
    accumulation length >= 1 (back-to-back accumulations need no idle cycle).

    Parameters
    ----------
    lanes : int
        Number of accumulators (output channels computed in parallel), >= 1.
    taps : int
        Products summed per lane and cycle (activation bytes per group), >= 1.
    a_signed : bool
        Activations are int8 (``True``) or uint8 (``False``). Weights are always int8
        (the full range -128..127 is supported).
    acc_width : int
        Width of the signed accumulators, >= 16. The caller sizes it for its longest
        accumulation (e.g. :attr:`cnnforge.hw.params.Widths.conv_acc`); it wraps modulo
        ``2**acc_width`` if the caller under-sizes it.
    target : str
        ``"generic"``: plain ``*`` (Yosys maps each product to one SB_MAC16 16x16 with
        ``synth_ice40 -dsp``, or one MULT18X18D with ``synth_ecp5``).
        ``"ice40"``: products packed two per ``SB_MAC16`` in 8x8 mode (``ceil(lanes*taps/2)``
        DSPs); the Amaranth simulator ignores the instance, so simulate this target with
        Yosys's ``ice40/cells_sim.v``.
        ``"ecp5"``: one explicit ``MULT18X18D`` per product (input and output registers on
        ``CLK0``: the same two stages), so that these products, and only these, use DSPs while
        the rest of the design is synthesized with ``synth_ecp5 -nodsp``. See ``primitives``.
    primitives : bool or None
        ``target="ecp5"`` only. ``None`` (default): the ``MULT18X18D`` instances when elaborated
        for a platform (a board build), the behavioural ``"generic"`` products without one
        (Amaranth's simulator, which ignores instances, and ``verilog.convert`` for Verilator);
        ``True``: instances always (to simulate them with a ``MULT18X18D`` model,
        ``sim/verify/ecp5_cells.v``: Yosys ships none); ``False``: never.
    sum_levels : int or None
        ``None`` (default): the tap sum and the accumulate in one stage (cycle 3). An integer
        >= 1: split generic products and at most this many adder levels between registers
        (see the pipeline above; 2 keeps a 9-tap lane to two adders per cycle), for fast
        clocks on LUT fabric.

    Members
    -------
    i_valid : ``In(1)``
        A group is presented this cycle.
    i_first : ``In(1)``
        The group starts an accumulation (the accumulators restart from 0).
    i_last : ``In(1)``
        The group ends an accumulation.
    a : ``In(data.ArrayLayout(signed(8) or unsigned(8), taps))``
        Activations, shared by all lanes.
    b : ``In(data.ArrayLayout(data.ArrayLayout(signed(8), taps), lanes))``
        Weights, ``b[lane][tap]``.
    o_valid : ``Out(1)``
        One-cycle pulse: ``acc`` holds finished accumulations.
    acc : ``Out(data.ArrayLayout(signed(acc_width), lanes))``
        The accumulators; meaningful when ``o_valid``.

    Raises
    ------
    TypeError
        If an integer argument is not an integer, ``a_signed`` is not a bool or
        ``primitives`` is not None or a bool.
    ValueError
        If ``lanes``/``taps``/``sum_levels`` < 1, ``acc_width`` < 16, or ``target`` is unknown.
    """

    LATENCY = 3
    TARGETS = ("generic", "ice40", "ecp5")

    def __init__(self, *, lanes, taps=1, a_signed=False, acc_width, target="generic",
                 primitives=None, sum_levels=None):
        self.lanes = check_int("lanes", lanes, 1)
        self.taps = check_int("taps", taps, 1)
        self.acc_width = check_int("acc_width", acc_width, 16)
        if not isinstance(a_signed, bool):
            raise TypeError(f"a_signed must be a bool, not {a_signed!r}")
        check_choice("target", target, self.TARGETS)
        if primitives is not None and not isinstance(primitives, bool):
            raise TypeError(f"primitives must be None or a bool, not {primitives!r}")
        self.a_signed = a_signed
        self.target = target
        self._primitives = primitives
        self.sum_levels = None if sum_levels is None else check_int("sum_levels", sum_levels, 1)
        a_shape = signed(8) if a_signed else unsigned(8)
        super().__init__({
            "i_valid": In(1),
            "i_first": In(1),
            "i_last": In(1),
            "a": In(data.ArrayLayout(a_shape, self.taps)),
            "b": In(data.ArrayLayout(data.ArrayLayout(signed(8), self.taps), self.lanes)),
            "o_valid": Out(1),
            "acc": Out(data.ArrayLayout(signed(self.acc_width), self.lanes)),
        })

    @classmethod
    def latency_for(cls, *, taps=1, sum_levels=None):
        """:attr:`latency` of an array with ``taps`` and ``sum_levels`` (for sizing FIFOs
        before the array is built)."""
        if sum_levels is None:
            return cls.LATENCY
        levels = ceil_log2(2 * taps) + 1      # the tree over split products, the accumulate
        return cls.LATENCY + -(-levels // sum_levels) - 1

    @property
    def latency(self):
        """Cycles from a group presented to the ``o_valid`` of the accumulation it closes."""
        return self.latency_for(taps=self.taps, sum_levels=self.sum_levels)

    @property
    def multipliers(self):
        """Number of 8x8 products per cycle: ``lanes * taps``."""
        return self.lanes * self.taps

    @property
    def dsp_count(self):
        """DSP blocks used on the target (iCE40 ``SB_MAC16`` or ECP5 ``MULT18X18D``)."""
        if self.target == "ice40":
            return (self.multipliers + 1) // 2
        return self.multipliers

    def uses_instances(self, platform):
        """Whether :meth:`elaborate` with ``platform`` instantiates vendor primitives."""
        if self.target == "ice40":
            return True
        if self.target == "ecp5":
            return platform is not None if self._primitives is None else self._primitives
        return False

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes

        # Control pipeline: valid/first/last travel alongside the data (one stage per cycle:
        # operands, products, partial sums; the accumulate takes the last one's).
        # valid is resettable so no spurious o_valid leaves reset; the rest is reset_less.
        stages = self.latency - 1
        valid = [Signal(name=f"valid_{k}") for k in range(1, stages + 1)]
        first = [Signal(name=f"first_{k}", reset_less=True) for k in range(1, stages + 1)]
        last = [Signal(name=f"last_{k}", reset_less=True) for k in range(1, stages + 1)]
        prev = (self.i_valid, self.i_first, self.i_last)
        for k in range(stages):
            m.d.sync += [valid[k].eq(prev[0]), first[k].eq(prev[1]), last[k].eq(prev[2])]
            prev = (valid[k], first[k], last[k])
        done = Signal(name=f"valid_{stages + 1}")
        m.d.sync += done.eq(valid[-1] & last[-1])
        m.d.comb += self.o_valid.eq(done)

        # products[l][t]: signed(16) product registers (stage 2).
        if self.target == "ice40":
            products = self._ice40_products(m)
        elif self.uses_instances(platform):
            products = self._ecp5_products(m)
        else:
            products = self._generic_products(m)

        # Stages 3 ..: tap sum (registered every sum_levels levels) and accumulate.
        acc = [Signal(signed(self.acc_width), name=f"acc_{l}", reset_less=True)
               for l in range(lanes)]
        for l in range(lanes):
            s = self._tree_sum(m, products[l], self.sum_levels, self.latency - 3, f"sum{l}")
            with m.If(valid[-1]):
                m.d.sync += acc[l].eq(Mux(first[-1], 0, acc[l]) + s)
            m.d.comb += self.acc[l].eq(acc[l])
        return m

    @staticmethod
    def _tree_sum(m, terms, sum_levels, registers, name):
        """Balanced adder tree over the product terms, with a register after every
        ``sum_levels`` levels (``None``: none) and delay registers at the end up to
        ``registers`` stages in all. The accumulate that follows counts as one more level, so
        the last stage holds at most ``sum_levels`` adders, the accumulate included."""
        terms = list(terms)
        level = 0
        made = 0

        def register(terms, tag):
            regs = [Signal(t.shape(), name=f"{name}_{tag}_{k}", reset_less=True)
                    for k, t in enumerate(terms)]
            m.d.sync += [r.eq(t) for r, t in zip(regs, terms)]
            return regs

        while len(terms) > 1:
            terms = [terms[k] + terms[k + 1] if k + 1 < len(terms) else terms[k]
                     for k in range(0, len(terms), 2)]
            level += 1
            if sum_levels is not None and level % sum_levels == 0:
                terms = register(terms, f"l{level}")
                made += 1
        while made < registers:
            terms = register(terms, f"d{made}")
            made += 1
        assert made == registers
        return terms[0]

    def _generic_products(self, m):
        lanes, taps = self.lanes, self.taps
        a_shape = signed(8) if self.a_signed else unsigned(8)
        # Activation registers: one set shared by the lanes, or (split products, for fast
        # clocks) a copy per lane: one shared register would drive every lane's LUT multipliers
        # across the die; a copy per lane is placed beside its multipliers. REPLICA marks the
        # copies so that the board build keeps Yosys from merging them back.
        copies = lanes if self.sum_levels is not None and lanes > 1 else 1
        a_r = [[Signal(a_shape, name=f"a_r{l}_{t}" if copies > 1 else f"a_r{t}",
                       reset_less=True, attrs={REPLICA: 1} if copies > 1 else {})
                for t in range(taps)] for l in range(copies)]
        for copy in a_r:
            m.d.sync += [r.eq(self.a[t]) for t, r in enumerate(copy)]
        a_lane = [a_r[l % copies] for l in range(lanes)]
        b_r = [[Signal(signed(8), name=f"b_r{l}_{t}", reset_less=True) for t in range(taps)]
               for l in range(lanes)]
        for l in range(lanes):
            for t in range(taps):
                m.d.sync += b_r[l][t].eq(self.b[l][t])
        if self.sum_levels is not None:
            # Split products: a * b = a * b[0:4] (unsigned nibble) + (a * b[4:8] (signed)) << 4,
            # two registered 8x4 products per tap; the adder tree sums all 2 * taps terms.
            terms = [[] for _ in range(lanes)]
            for l in range(lanes):
                for t in range(taps):
                    lo = Signal(signed(13), name=f"p_lo{l}_{t}", reset_less=True)
                    hi = Signal(signed(16), name=f"p_hi{l}_{t}", reset_less=True)
                    m.d.sync += [lo.eq(a_lane[l][t] * b_r[l][t][0:4]),
                                 hi.eq((a_lane[l][t] * b_r[l][t][4:8].as_signed()) << 4)]
                    terms[l] += [lo, hi]
            return terms
        p_r = [[Signal(signed(16), name=f"p_r{l}_{t}", reset_less=True) for t in range(taps)]
               for l in range(lanes)]
        for l in range(lanes):
            for t in range(taps):
                m.d.sync += p_r[l][t].eq(a_lane[l][t] * b_r[l][t])
        return p_r

    def _ice40_products(self, m):
        # Products k = (lane, tap) in order, two per SB_MAC16 in 8x8 mode: A = {a_hi, a_lo},
        # B = {b_hi, b_lo}, O[31:16] = a_hi * b_hi, O[15:0] = a_lo * b_lo. A_REG/B_REG are
        # stage 1, TOP/BOT_8x8_MULT_REG stage 2 (same as the generic registers).
        # Signedness is per operand (Yosys's cells_sim.v extends each 8-bit half by A_SIGNED
        # resp. B_SIGNED): A_SIGNED must be 0 for uint8 activations (1 would read 255 as -1).
        lanes, taps = self.lanes, self.taps
        pairs = [(l, t) for l in range(lanes) for t in range(taps)]
        products = [[None] * taps for _ in range(lanes)]
        for k in range(0, len(pairs), 2):
            lo = pairs[k]
            hi = pairs[k + 1] if k + 1 < len(pairs) else None
            a_lo, b_lo = self.a[lo[1]], self.b[lo[0]][lo[1]]
            if hi is not None:
                a_hi, b_hi = self.a[hi[1]], self.b[hi[0]][hi[1]]
            else:
                a_hi, b_hi = Const(0, 8), Const(0, 8)
            o = Signal(32, name=f"dsp{k // 2}_o")
            m.submodules[f"dsp{k // 2}"] = Instance(
                "SB_MAC16",
                p_NEG_TRIGGER=Const(0, 1),
                p_C_REG=Const(0, 1), p_A_REG=Const(1, 1), p_B_REG=Const(1, 1), p_D_REG=Const(0, 1),
                p_TOP_8x8_MULT_REG=Const(1, 1), p_BOT_8x8_MULT_REG=Const(1, 1),
                p_PIPELINE_16x16_MULT_REG1=Const(0, 1), p_PIPELINE_16x16_MULT_REG2=Const(0, 1),
                p_TOPOUTPUT_SELECT=Const(0b10, 2), p_TOPADDSUB_LOWERINPUT=Const(0, 2),
                p_TOPADDSUB_UPPERINPUT=Const(0, 1), p_TOPADDSUB_CARRYSELECT=Const(0, 2),
                p_BOTOUTPUT_SELECT=Const(0b10, 2), p_BOTADDSUB_LOWERINPUT=Const(0, 2),
                p_BOTADDSUB_UPPERINPUT=Const(0, 1), p_BOTADDSUB_CARRYSELECT=Const(0, 2),
                p_MODE_8x8=Const(1, 1),
                p_A_SIGNED=Const(int(self.a_signed), 1), p_B_SIGNED=Const(1, 1),
                i_CLK=ClockSignal("sync"), i_CE=Const(1, 1),
                i_C=Const(0, 16), i_A=Cat(a_lo, a_hi), i_B=Cat(b_lo, b_hi), i_D=Const(0, 16),
                **self._SB_MAC16_TIED_LOW,
                o_O=o,
            )
            products[lo[0]][lo[1]] = o[0:16].as_signed()
            if hi is not None:
                products[hi[0]][hi[1]] = o[16:32].as_signed()
        return products

    #: SB_MAC16 control inputs the 8x8 products do not use (hold, reset, load, add/subtract,
    #: carry): tied low.
    _SB_MAC16_TIED_LOW = {f"i_{pin}": Const(0, 1) for pin in (
        "AHOLD", "BHOLD", "CHOLD", "DHOLD", "IRSTTOP", "IRSTBOT", "ORSTTOP", "ORSTBOT",
        "OLOADTOP", "OLOADBOT", "ADDSUBTOP", "ADDSUBBOT", "OHOLDTOP", "OHOLDBOT",
        "CI", "ACCUMCI", "SIGNEXTIN")}

    def _ecp5_products(self, m):
        # One MULT18X18D per product: A = activation, B = weight, both extended to 18 bits and
        # multiplied as signed (a uint8 activation zero-extended is a positive signed number),
        # P[15:0] the signed(16) product. REG_INPUTA/B (stage 1) and REG_OUTPUT (stage 2) on
        # CLK0, as nextpnr-ecp5 requires for its register timing (MULT18X18D_REGS_ALL), so
        # both the fabric -> DSP and DSP -> fabric paths start and end at registers.
        lanes, taps = self.lanes, self.taps
        products = [[None] * taps for _ in range(lanes)]
        for l in range(lanes):
            for t in range(taps):
                a = Signal(signed(18), name=f"dsp_a{l}_{t}")
                b = Signal(signed(18), name=f"dsp_b{l}_{t}")
                p = Signal(36, name=f"dsp_p{l}_{t}")
                m.d.comb += [a.eq(self.a[t]), b.eq(self.b[l][t])]
                ports = {f"i_A{k}": a[k] for k in range(18)}
                ports.update({f"i_B{k}": b[k] for k in range(18)})
                ports.update({f"o_P{k}": p[k] for k in range(36)})
                m.submodules[f"dsp{l}_{t}"] = Instance(
                    "MULT18X18D",
                    p_REG_INPUTA_CLK="CLK0", p_REG_INPUTB_CLK="CLK0",
                    p_REG_PIPELINE_CLK="NONE", p_REG_OUTPUT_CLK="CLK0",
                    p_GSR="DISABLED", p_RESETMODE="SYNC",
                    i_SIGNEDA=Const(1, 1), i_SIGNEDB=Const(1, 1),
                    i_SOURCEA=Const(0, 1), i_SOURCEB=Const(0, 1),
                    i_CLK0=ClockSignal("sync"), i_CE0=Const(1, 1), i_RST0=Const(0, 1),
                    **ports,
                )
                products[l][t] = p[0:16].as_signed()
        return products
