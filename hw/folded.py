"""The folded mapping: every layer of a layer-list network time-shares one MAC array.

Where logic is scarce (the iCE40UP5K: 5,280 logic cells, eight SB_MAC16) a dataflow chain with
one engine per layer does not fit. The folded accelerator computes an image layer by layer on
one array of ``2 * lanes`` multipliers: ``lanes`` output channels times two neighbouring output
pixels, so that each weight read from SPRAM (``8 * lanes`` bits a cycle, the four SPRAMs side by
side) serves two products. Feature maps live in two ping-pong map buffers in block RAM; every
layer is a convolution (a dense layer is a convolution whose kernel covers its whole input
map, or a 1 x 1 one over a vector).

Per layer the sequencer walks the output channel groups, then the output blocks (a max-pool
window, or two neighbouring pixels without a pool), then the pixel pairs of a block, then the
taps ``(ky, kx, c)`` — one multiply-accumulate group per cycle. The accumulators of a pair are
max-pooled as accumulators (bias, rounding and clipping are monotone, so pooling before them is
exact) and the block's maxima go through one shared requantizer, a radix-4 multiplier in logic
cells (two multiplier bits a cycle), to be written into the other map buffer in the layout the
next layer reads. The last layer's sums go to the softmax instead.

Map layout: the two pixels of a pair are read in the same cycle, so each map buffer is two
banks, and a map is stored so that horizontally neighbouring pixels of the reading layer's
stride fall in different banks (stride 1: even/odd columns; stride 2: column pairs). Row,
column and channel are bit fields of the address (widths rounded up to powers of two), so no
address needs a multiplier.
"""

from dataclasses import dataclass

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .dense import SPRAMWeights
from .mac import MACArray
from .model import QuantNetwork
from .params import ConfigError, Conv2D, Dense, Flatten, MaxPool as MaxPoolLayer, Network, \
    Widths
from .util import ModelWriteSignature, check_int, pack_fields


__all__ = ["FoldedStep", "FoldedMapping", "FoldedAccelerator", "folded_memories",
           "folded_writes", "SPRAM_WORDS"]


#: Words of one SB_SPRAM256KA (16 bits each); the weight memory is ``lanes / 2`` of them side by
#: side.
SPRAM_WORDS = 16384

#: Multiplier bits the requantizer takes per cycle (radix 4).
_RADIX_BITS = 2


def _bank_cols(width, stride):
    """Columns of one bank of a ``width``-pixel row read with ``stride``."""
    return max(_col(x, stride) for x in range(width)) + 1


def _col(x, stride):
    return x >> 1 if stride == 1 else ((x >> 2) << 1) | (x & 1)


def _bank(x, stride):
    return (x >> (stride - 1)) & 1


@dataclass(frozen=True)
class FoldedStep:
    """One conv or dense layer as the folded accelerator runs it: a convolution of the
    ``in_h x in_w x in_c`` input map with a ``kh x kw`` kernel (a dense layer's kernel is its
    whole input map), ``filters`` outputs, ``pool`` x ``pool`` max-pool (1: none), requantized
    with ReLU (``relu``) or the logits (the last layer)."""
    index: int
    in_h: int
    in_w: int
    in_c: int
    kh: int
    kw: int
    stride: int
    pad_top: int
    pad_left: int
    conv_h: int
    conv_w: int
    filters: int
    pool: int
    relu: bool

    @property
    def taps(self):
        return self.kh * self.kw * self.in_c

    @property
    def out_h(self):
        return self.conv_h // self.pool

    @property
    def out_w(self):
        return self.conv_w // self.pool

    # The input map's layout (bit fields of a bank address: row, bank column, channel).
    @property
    def c_bits(self):
        return ceil_log2(self.in_c)

    @property
    def col_bits(self):
        return ceil_log2(_bank_cols(self.in_w, self.stride))

    @property
    def bank_depth(self):
        return self.in_h << (self.col_bits + self.c_bits)

    def address(self, y, x, c):
        """``(bank, address)`` of input pixel ``(y, x)``, channel ``c``."""
        return (_bank(x, self.stride),
                (y << (self.col_bits + self.c_bits)) | (_col(x, self.stride) << self.c_bits) | c)

    # The walk over the outputs.
    @property
    def block(self):
        """``(height, width)`` of an output block: the pool window, or a pixel pair."""
        return (self.pool, self.pool) if self.pool > 1 else (1, 2)

    @property
    def blocks(self):
        """``(rows, columns)`` of blocks."""
        if self.pool > 1:
            return self.out_h, self.out_w
        return self.conv_h, -(-self.conv_w // 2)

    def groups(self, lanes):
        return -(-self.filters // lanes)

    def passes(self, lanes):
        bh, bw = self.block
        rows, cols = self.blocks
        return self.groups(lanes) * rows * cols * bh * (-(-bw // 2))


def folded_steps(network):
    """The :class:`FoldedStep` list of ``network``; :class:`ConfigError` naming the layer for
    what the folded accelerator does not run."""
    if not isinstance(network, Network):
        raise TypeError(f"network must be a Network, not {network!r}")
    steps = []
    layers = network.layers
    i = 0
    while i < len(layers):
        layer = layers[i]
        shape = network.input_shape(i)
        if isinstance(layer, Conv2D):
            h, w, c = shape
            top, left, _, _ = layer.pads(h, w)
            oh, ow, f = network.output_shape(i)
            pool = 1
            if i + 1 < len(layers) and isinstance(layers[i + 1], MaxPoolLayer):
                p = layers[i + 1]
                if p.stride != p.size:
                    raise ConfigError(f"network: layer {i + 1} (maxpool): the folded "
                                      f"accelerator pools windows that tile the map (stride = "
                                      f"size), not size {p.size} stride {p.stride}")
                pool = p.size
                i += 1
            steps.append(FoldedStep(i if pool == 1 else i - 1, h, w, c, layer.kernel,
                                    layer.kernel, layer.stride, top, left, oh, ow, f, pool,
                                    True))
        elif isinstance(layer, MaxPoolLayer):
            raise ConfigError(f"network: layer {i} (maxpool): the folded accelerator pools "
                              f"right after a convolution only")
        elif isinstance(layer, Dense):
            if i > 0 and isinstance(layers[i - 1], Flatten):
                shape = network.input_shape(i - 1)
            if len(shape) == 3:
                # A Dense layer after a map (a Flatten before it): its kernel is the map,
                # whose flatten order (y, x, c) is the conv tap order.
                h, w, c = shape
            else:
                h, w, c = 1, 1, shape[0]
            steps.append(FoldedStep(i, h, w, c, h, w, 1, 0, 0, 1, 1, layer.units, 1,
                                    i != len(layers) - 1))
        elif not isinstance(layer, Flatten):
            raise ConfigError(f"network: layer {i} ({layer.kind}): the folded accelerator does "
                              f"not run this layer")
        i += 1
    return steps


class FoldedMapping:
    """The folded accelerator's configuration for ``network``: ``lanes`` output channels per
    MAC group (``2 * lanes`` multipliers; ``target="ice40"``: ``lanes`` dual 8x8 SB_MAC16 and
    ``lanes / 2`` SPRAMs of weights).

    Plays the part :class:`~cnnforge.hw.network.LayerParallelism` plays for the dataflow
    chain: the model memories, the write-port words and the cycle estimate derive from it.
    """

    TARGETS = ("generic", "ice40")
    pipeline = "folded"

    def __init__(self, network, lanes=8, *, target="ice40"):
        self._steps = folded_steps(network)
        self._network = network
        check_int("lanes", lanes, 2)
        if lanes % 2:
            raise ValueError(f"lanes must be even (two int8 weights per 16-bit SPRAM word), "
                             f"not {lanes}")
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {', '.join(map(repr, self.TARGETS))}, "
                             f"not {target!r}")
        self.lanes, self.target = lanes, target
        words = sum(s.groups(lanes) * s.taps for s in self._steps)
        if target == "ice40" and words > SPRAM_WORDS:
            raise ConfigError(f"network: its weights need {words:,} words of {8 * lanes} bits, "
                              f"more than the SPRAM's {SPRAM_WORDS:,}")
        self.weight_words = words

    @property
    def network(self):
        return self._network

    @property
    def steps(self):
        return list(self._steps)

    @property
    def stages(self):
        """The steps (one per conv or dense layer, a conv's max-pool with it)."""
        return list(self._steps)

    @property
    def multipliers(self):
        return 2 * self.lanes

    # The base of each step's words in the shared memories.
    def weight_base(self, k):
        return sum(s.groups(self.lanes) * s.taps for s in self._steps[:k])

    def bias_base(self, k):
        return sum(s.filters for s in self._steps[:k])

    def mult_base(self, k):
        return sum(s.filters for s in self._steps[:k] if s.relu)

    @property
    def bias_bits(self):
        return max(self._network.layer_widths(s.index).bias for s in self._steps)

    @property
    def acc_bits(self):
        return max(self._network.layer_widths(s.index).acc for s in self._steps)

    def buffer_depth(self, buffer):
        """Words of each bank of map buffer ``buffer`` (step ``k`` reads buffer ``k % 2``)."""
        return max([s.bank_depth for k, s in enumerate(self._steps) if k % 2 == buffer] + [1])

    # Cycles: the scheduling rules of the RTL, replayed pass by pass (exact for the no-stall
    # case; ``tests/test_folded.py`` holds them against the simulation).
    #: From a pass's last group issued to its accumulators valid (stage A1, stage B, the MAC).
    PASS_LATENCY = 2 + MACArray.LATENCY
    #: Requantizer cycles per value (two multiplier bits a cycle).
    REQUANT_CYCLES = Widths.requant_mult // _RADIX_BITS

    def _requant_busy(self, final):
        """Cycles from the requantizer's start to its first idle cycle."""
        n, period = self.lanes, self.REQUANT_CYCLES
        # A lane every `period` cycles; the last lane's sum leaves a cycle after its issue
        # ends (the last layer), or its product is rounded and written 7 cycles after.
        return n * period + (1 if final else 7)

    def step_cycles(self, k):
        """Cycles of step ``k``: from its first group issued to the next step's (or the next
        image's load)."""
        s, n = self._steps[k], self.lanes
        bh, bw = s.block
        rows, cols = s.blocks
        pairs = [(dy, dx) for dy in range(bh) for dx in range(0, bw, 2)]
        busy = self._requant_busy(not s.relu)
        t, rq_idle, last_issue = 0, 0, 0
        for _ in range(s.groups(n)):
            for by in range(rows):
                for bx in range(cols):
                    for i, (dy, dx) in enumerate(pairs):
                        ox = bx * bw + dx
                        p1 = dx + 1 < bw and ox + 1 < s.conv_w
                        last_issue = t + s.taps - 1
                        ready = last_issue + self.PASS_LATENCY + 1
                        to_q = s.pool == 1 or i == len(pairs) - 1
                        # A sweep of `n` lanes from `start`; the requantizer starts as it
                        # ends (a block's last sweep waits for it to be idle).
                        start = max(ready, rq_idle) if to_q else ready
                        if to_q:
                            rq_idle = start + n + 2 + busy
                        t = start + n + 3
                        if s.pool == 1 and p1:
                            start = max(t, rq_idle)
                            rq_idle = start + n + 2 + busy
                            t = start + n + 3
        # The step ends when its last sweep and the requantizer are done.
        return max(t, rq_idle) + 1

    def image_cycles(self):
        """Cycles per image, images back to back: the load, then the steps."""
        return self.load_cycles + 1 + sum(self.step_cycles(k) for k in range(len(self._steps)))

    @property
    def load_cycles(self):
        h, w, c = self._network.input
        return h * w * c

    @property
    def cycles_per_image(self):
        return self.image_cycles()

    def stage_cycles(self):
        return {s.index: self.step_cycles(k) for k, s in enumerate(self._steps)}

    def to_dict(self):
        return {"mapping": "folded", "lanes": self.lanes, "target": self.target}


def folded_memories(mapping):
    """The model memories of a folded accelerator, in write-port order: per conv/dense layer
    its weights (a region of the SPRAM on iCE40), biases and requantization multipliers."""
    from .network import WeightMemory
    mems = []
    storage = "SPRAM" if mapping.target == "ice40" else "block RAM"
    for s in mapping.steps:
        layer = mapping.network.layers[s.index]
        kind = "conv" if isinstance(layer, Conv2D) else "dense"
        mems.append(WeightMemory(s.index, f"{kind}_w", s.groups(mapping.lanes) * s.taps,
                                 8 * mapping.lanes, storage))
        mems.append(WeightMemory(s.index, f"{kind}_b", s.filters, mapping.bias_bits))
        if s.relu:
            mems.append(WeightMemory(s.index, "requant_mult", s.filters, Widths.requant_mult))
    return mems


def _weight_words(step, lanes, w):
    """Weight words of ``step``: for each group and tap ``(ky, kx, c)`` the ``lanes`` weights of
    the group's output channels (0 past the last)."""
    flat = np.asarray(w, np.int64).reshape(step.filters, -1)
    groups = step.groups(lanes)
    padded = np.zeros((groups * lanes, step.taps), np.int64)
    padded[:step.filters] = flat
    return padded.reshape(groups, lanes, step.taps).transpose(0, 2, 1).reshape(-1, lanes)


def folded_writes(qnet, mapping):
    """``[(memory index, address, word)]``: every model word of ``qnet`` for the write port of
    a folded accelerator (raw bits, in :func:`folded_memories` order)."""
    writes = []
    steps = {s.index: s for s in mapping.steps}
    for index, mem in enumerate(folded_memories(mapping)):
        p = qnet.layers[mem.layer]
        if mem.kind.endswith("_w"):
            words = [pack_fields(w, 8) for w in _weight_words(steps[mem.layer], mapping.lanes,
                                                                p.w)]
        elif mem.kind.endswith("_b"):
            mask = (1 << mem.bits) - 1
            words = [int(b) & mask for b in np.asarray(p.b)]
        else:
            words = [int(v) for v in np.asarray(p.mult)]
        writes += [(index, a, w) for a, w in enumerate(words)]
    return writes


class FoldedAccelerator(wiring.Component):
    """Raw pixels in, logits / probabilities / class out, for a layer-list network on one
    shared MAC array (see the module documentation). The same ports as
    :class:`~cnnforge.hw.network.NetworkAccelerator`, so the board core, the link and the
    test harnesses take either.

    An image is taken (one input byte a cycle) while the accelerator is idle, then computed
    layer by layer; the next image is taken once the last layer's sums have left.

    Parameters
    ----------
    qnet : :class:`~cnnforge.hw.model.QuantNetwork`
        The integer network; its tensors initialize the block RAM model memories (the
        ``ice40`` target's SPRAM starts empty: write the weights through ``mw`` first).
    mapping : :class:`FoldedMapping`
        For ``qnet.network``.

    Members
    -------
    i : ``In(stream.Signature(data.ArrayLayout(unsigned(8), channels)))``
        Pixels of consecutive images in raster order.
    o : ``Out(stream.Signature(NetworkResultLayout(network)))``
        ``classes`` beats per image: logit ``k``, probability ``k`` (Q15) and the class.
    mw : ``In(ModelWriteSignature(range(len(memories)), mw_data_bits))``
        Model write port, a word of :func:`folded_writes` per cycle with ``mw.en``; write while
        no image is in flight (an SPRAM write takes the port from the reads).
    """

    def __init__(self, qnet, mapping):
        if not isinstance(qnet, QuantNetwork):
            raise TypeError(f"qnet must be a QuantNetwork, not {qnet!r}")
        if not isinstance(mapping, FoldedMapping):
            raise TypeError(f"mapping must be a FoldedMapping, not {mapping!r}")
        if mapping.network != qnet.network:
            raise ValueError("mapping was made for another network")
        from .network import NetworkResultLayout
        self._qnet, self._map = qnet, mapping
        self.memories = folded_memories(mapping)
        self.mw_data_bits = max(m.bits for m in self.memories)
        network = qnet.network
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(8), network.input[2]))),
            "o": Out(stream.Signature(NetworkResultLayout(network))),
            "mw": In(ModelWriteSignature(range(max(2, len(self.memories))), self.mw_data_bits)),
        })

    @property
    def network(self):
        return self._qnet.network

    @property
    def parallelism(self):
        return self._map

    @property
    def stage_cycles(self):
        return self._map.stage_cycles()

    @property
    def cycles_per_image(self):
        return self._map.cycles_per_image

    def elaborate(self, platform):
        from .network import result_path
        m = Module()
        qnet, mp = self._qnet, self._map
        steps, lanes = mp.steps, mp.lanes
        nsteps = len(steps)
        network = qnet.network
        acc_bits, bias_bits = mp.acc_bits, mp.bias_bits
        mult_bits = Widths.requant_mult

        def per_step(name, values, shape, step_sig):
            """A signal holding ``values[step_sig]`` (elaboration constants per step). Of the
            sequencer's ``step``, a flip-flop loaded from the step about to begin: the
            constants reach the sequencer's compares without the step's decoder before them
            (the longest paths of the iCE40 build)."""
            if step_sig is step:
                sig = Signal(shape, name=name, init=values[0])
                with m.Switch(step_next):
                    for k, v in enumerate(values):
                        with m.Case(k):
                            m.d.sync += sig.eq(v)
                return sig
            sig = Signal(shape, name=name)
            with m.Switch(step_sig):
                for k, v in enumerate(values):
                    with m.Case(k):
                        m.d.comb += sig.eq(v)
            return sig

        # -- Memories ---------------------------------------------------------------------------
        init_w, init_b, init_m = [], [], []
        for k, s in enumerate(steps):
            p = qnet.layers[s.index]
            init_w += [pack_fields(w, 8) for w in _weight_words(s, lanes, p.w)]
            init_b += [int(b) for b in np.asarray(p.b)]
            if s.relu:
                init_m += [int(v) for v in np.asarray(p.mult)]
        w_depth = max(2, len(init_w))
        if mp.target == "ice40":
            m.submodules.weight_mem = weights = SPRAMWeights(8 * lanes, w_depth)
            w_rd_addr, w_rd_data = weights.r_addr, weights.r_data
            w_wr_en, w_wr_addr, w_wr_data = weights.w_en, weights.w_addr, weights.w_data
        else:
            m.submodules.weight_mem = wmem = Memory(shape=8 * lanes, depth=w_depth,
                                                     init=init_w)
            rd, wr = wmem.read_port(), wmem.write_port()
            w_rd_addr, w_rd_data = rd.addr, rd.data
            w_wr_en, w_wr_addr, w_wr_data = wr.en, wr.addr, wr.data
        m.submodules.bias_mem = bmem = Memory(shape=signed(bias_bits),
                                              depth=max(2, len(init_b)), init=init_b)
        b_rd, b_wr = bmem.read_port(), bmem.write_port()
        m.submodules.mult_mem = mmem = Memory(shape=unsigned(mult_bits),
                                              depth=max(2, len(init_m)), init=init_m)
        m_rd, m_wr = mmem.read_port(), mmem.write_port()
        # Map buffers: buffer k % 2 holds step k's input, two banks each.
        banks = {}
        for buf in (0, 1):
            for bank in (0, 1):
                mem = Memory(shape=8, depth=max(2, mp.buffer_depth(buf)), init=[])
                m.submodules[f"map{buf}_bank{bank}"] = mem
                banks[(buf, bank)] = (mem.read_port(), mem.write_port())

        # -- Model write port -------------------------------------------------------------------
        phys = {"w": [], "b": [], "m": []}
        for index, mem in enumerate(self.memories):
            k = next(j for j, s in enumerate(steps) if s.index == mem.layer)
            if mem.kind.endswith("_w"):
                phys["w"].append((index, mp.weight_base(k)))
            elif mem.kind.endswith("_b"):
                phys["b"].append((index, mp.bias_base(k)))
            else:
                phys["m"].append((index, mp.mult_base(k)))
        for key, (en, addr, word) in {"w": (w_wr_en, w_wr_addr, w_wr_data),
                                      "b": (b_wr.en, b_wr.addr, b_wr.data),
                                      "m": (m_wr.en, m_wr.addr, m_wr.data)}.items():
            base = Signal(16, name=f"mw_{key}_base")
            hit = Signal(name=f"mw_{key}_hit")
            with m.Switch(self.mw.memory):
                for index, b in phys[key]:
                    with m.Case(index):
                        m.d.comb += [base.eq(b), hit.eq(1)]
            m.d.comb += [en.eq(self.mw.en & hit), addr.eq(base + self.mw.addr),
                         word.eq(self.mw.data)]

        # -- MAC arrays: pixel a and pixel b of a pair ---------------------------------------------
        mac_target = "ice40" if mp.target == "ice40" else "generic"
        macs = []
        for name in ("a", "b"):
            mac = MACArray(lanes=lanes, taps=1, a_signed=False, acc_width=acc_bits,
                           target=mac_target)
            m.submodules[f"mac_{name}"] = mac
            macs.append(mac)

        # -- Sequencer ----------------------------------------------------------------------------
        span = max(max(2 * s.in_h, 2 * s.in_w) + max(s.kh, s.kw) for s in steps)
        coord = signed(ceil_log2(span) + 2)
        out_span = max(max(s.conv_h, s.conv_w) for s in steps) + 2
        channels = max(s.groups(lanes) * lanes for s in steps)
        step = Signal(range(max(2, nsteps)))
        step_next = Signal.like(step)   # what `step` becomes at the clock edge
        in_flight = Signal()        # a pass's last group issued, its sweep(s) not finished
        rq_busy = Signal()
        queue_empty = Signal()
        running = Signal()
        loading = Signal(init=1)
        g = Signal(range(max(2, max(s.groups(lanes) for s in steps))))
        by = Signal(range(max(s.blocks[0] for s in steps) + 1))
        bx = Signal(range(max(s.blocks[1] for s in steps) + 1))
        dy = Signal(range(max(s.block[0] for s in steps) + 2))
        dx = Signal(range(max(s.block[1] for s in steps) + 3))
        oy_base, ox_base = Signal(range(out_span)), Signal(range(out_span + 2))
        ky, kx = Signal(range(max(s.kh for s in steps) + 1)), \
            Signal(range(max(s.kw for s in steps) + 1))
        c = Signal(range(max(s.in_c for s in steps) + 1))
        w_addr, w_group = Signal(range(w_depth + 1)), Signal(range(w_depth + 1))

        kh1 = per_step("kh_last", [s.kh - 1 for s in steps], ky.shape(), step)
        kw1 = per_step("kw_last", [s.kw - 1 for s in steps], kx.shape(), step)
        c1 = per_step("c_last", [s.in_c - 1 for s in steps], c.shape(), step)
        s2 = per_step("stride2", [s.stride == 2 for s in steps], 1, step)
        pad_top = per_step("pad_top", [s.pad_top for s in steps],
                           range(max(s.pad_top for s in steps) + 1), step)
        pad_left = per_step("pad_left", [s.pad_left for s in steps],
                            range(max(s.pad_left for s in steps) + 1), step)
        bh1 = per_step("bh_last", [s.block[0] - 1 for s in steps], dy.shape(), step)
        bw = per_step("bw", [s.block[1] for s in steps], dx.shape(), step)
        step_bw = per_step("step_bw", [s.block[1] for s in steps], dx.shape(), step)
        step_bh = per_step("step_bh", [s.block[0] for s in steps], dy.shape(), step)
        rows1 = per_step("rows_last", [s.blocks[0] - 1 for s in steps], by.shape(), step)
        cols1 = per_step("cols_last", [s.blocks[1] - 1 for s in steps], bx.shape(), step)
        g1 = per_step("g_last", [s.groups(lanes) - 1 for s in steps], g.shape(), step)
        conv_w = per_step("conv_w", [s.conv_w for s in steps], range(out_span + 2), step)
        next_final = per_step("next_final",
                              [k + 1 < nsteps and not steps[k + 1].relu for k in range(nsteps)],
                              1, step)
        last_step = per_step("last_step", [k == nsteps - 1 for k in range(nsteps)], 1, step)

        tap_first = (ky == 0) & (kx == 0) & (c == 0)
        tap_last = (ky == kh1) & (kx == kw1) & (c == c1)
        issue = Signal()
        m.d.comb += issue.eq(running & ~((tap_first | tap_last) & in_flight))

        oy = oy_base + dy
        ox = ox_base + dx
        # Stage A1: input coordinates of pixel a's tap, registered.
        a1_valid, a1_first, a1_last, a1_p1 = Signal(), Signal(), Signal(), Signal()
        a1_iy, a1_ix = Signal(coord), Signal(coord)
        a1_c = Signal.like(c)
        a1_w = Signal.like(w_addr)
        m.d.sync += [
            a1_valid.eq(issue), a1_first.eq(tap_first), a1_last.eq(tap_last),
            a1_p1.eq((dx + 1 < bw) & (ox + 1 < conv_w)),
            a1_iy.eq(Mux(s2, oy << 1, oy) - pad_top + ky),
            a1_ix.eq(Mux(s2, ox << 1, ox) - pad_left + kx),
            a1_c.eq(c), a1_w.eq(w_addr),
        ]
        # Stage A1 (comb): validity, banks and addresses; the memories read at its end.
        in_h = per_step("in_h", [s.in_h for s in steps], coord, step)
        in_w = per_step("in_w", [s.in_w for s in steps], coord, step)
        a1_ixb = Signal(coord)
        m.d.comb += a1_ixb.eq(a1_ix + Mux(s2, 2, 1))
        row_ok = (a1_iy >= 0) & (a1_iy < in_h)
        ok_a = row_ok & (a1_ix >= 0) & (a1_ix < in_w)
        ok_b = row_ok & a1_p1 & (a1_ixb >= 0) & (a1_ixb < in_w)
        read_bits = max(ceil_log2(max(2, mp.buffer_depth(b))) for b in (0, 1))

        def bank_of(ix):
            return Mux(s2, ix[1], ix[0])

        def address(ix, iy, ch, sig_step, layouts, name):
            """Bank address of pixel ``(iy, ix)``, channel ``ch`` in the layout of ``layouts``
            (the reading step's), selected by ``sig_step``."""
            addr = Signal(read_bits, name=name)
            with m.Switch(sig_step):
                for k, s in enumerate(layouts):
                    if s is None:
                        continue
                    with m.Case(k):
                        col = ix[1:] if s.stride == 1 else Cat(ix[0], ix[2:])
                        m.d.comb += addr.eq(Cat(ch[:s.c_bits], col[:s.col_bits],
                                                iy[:read_bits]))
            return addr

        addr_a = address(a1_ix, a1_iy, a1_c, step, steps, "addr_a")
        addr_b = address(a1_ixb, a1_iy, a1_c, step, steps, "addr_b")
        swap = bank_of(a1_ix)            # pixel a in bank 1
        rbuf = per_step("read_buffer", [k % 2 for k in range(nsteps)], 1, step)
        for buf in (0, 1):
            for bank in (0, 1):
                rd, _ = banks[(buf, bank)]
                mine = addr_a if bank == 0 else addr_b
                other = addr_b if bank == 0 else addr_a
                m.d.comb += rd.addr.eq(Mux(swap, other, mine))
        m.d.comb += w_rd_addr.eq(a1_w)
        # Stage B: data; the MAC arrays register it.
        b_valid, b_first, b_last, b_ok_a, b_ok_b, b_swap, b_buf = (Signal() for _ in range(7))
        m.d.sync += [b_valid.eq(a1_valid), b_first.eq(a1_first), b_last.eq(a1_last),
                     b_ok_a.eq(ok_a), b_ok_b.eq(ok_b), b_swap.eq(swap), b_buf.eq(rbuf)]
        d0 = Mux(b_buf, banks[(1, 0)][0].data, banks[(0, 0)][0].data)
        d1 = Mux(b_buf, banks[(1, 1)][0].data, banks[(0, 1)][0].data)
        px_a = Mux(b_swap, d1, d0)
        px_b = Mux(b_swap, d0, d1)
        for mac, px, ok in ((macs[0], px_a, b_ok_a), (macs[1], px_b, b_ok_b)):
            m.d.comb += [
                mac.i_valid.eq(b_valid), mac.i_first.eq(b_first), mac.i_last.eq(b_last),
                mac.a[0].eq(Mux(ok, px, 0)),
            ]
            for lane in range(lanes):
                m.d.comb += mac.b[lane][0].eq(w_rd_data[8 * lane:8 * lane + 8])

        # Pass information for the sweep, taken when the pass's last group issues.
        p_step = Signal.like(step)
        p_g = Signal.like(g)
        p_by, p_bx = Signal.like(by), Signal.like(bx)
        p_p1, p_first, p_last, p_pool = Signal(), Signal(), Signal(), Signal()
        pooled = per_step("pooled", [s.pool > 1 for s in steps], 1, step)
        with m.If(issue & tap_last):
            m.d.sync += [
                in_flight.eq(1), p_step.eq(step), p_g.eq(g), p_by.eq(by), p_bx.eq(bx),
                p_p1.eq((dx + 1 < bw) & (ox + 1 < conv_w)),
                p_first.eq((dy == 0) & (dx == 0)),
                p_last.eq((dy == bh1) & (dx + 2 >= bw)),
                p_pool.eq(pooled),
            ]

        # Advance.
        step_done = Signal()
        with m.If(issue):
            with m.If(~tap_last):
                m.d.sync += w_addr.eq(w_addr + 1)
                with m.If(c != c1):
                    m.d.sync += c.eq(c + 1)
                with m.Else():
                    m.d.sync += c.eq(0)
                    with m.If(kx != kw1):
                        m.d.sync += kx.eq(kx + 1)
                    with m.Else():
                        m.d.sync += [kx.eq(0), ky.eq(ky + 1)]
            with m.Else():
                m.d.sync += [c.eq(0), kx.eq(0), ky.eq(0), w_addr.eq(w_group)]
                with m.If(dx + 2 < bw):
                    m.d.sync += dx.eq(dx + 2)
                with m.Else():
                    m.d.sync += dx.eq(0)
                    with m.If(dy != bh1):
                        m.d.sync += dy.eq(dy + 1)
                    with m.Else():
                        m.d.sync += dy.eq(0)
                        with m.If(bx != cols1):
                            m.d.sync += [bx.eq(bx + 1), ox_base.eq(ox_base + step_bw)]
                        with m.Else():
                            m.d.sync += [bx.eq(0), ox_base.eq(0)]
                            with m.If(by != rows1):
                                m.d.sync += [by.eq(by + 1), oy_base.eq(oy_base + step_bh)]
                            with m.Else():
                                m.d.sync += [by.eq(0), oy_base.eq(0),
                                             w_addr.eq(w_addr + 1), w_group.eq(w_addr + 1)]
                                with m.If(g != g1):
                                    m.d.sync += g.eq(g + 1)
                                with m.Else():
                                    m.d.sync += [g.eq(0), running.eq(0)]
                                    m.d.comb += step_done.eq(1)
        waiting = Signal()          # a step's passes issued: wait for its writes
        with m.If(step_done):
            m.d.sync += waiting.eq(1)
        pipe_busy = Signal()
        m.d.comb += pipe_busy.eq(a1_valid | b_valid)
        with m.If(waiting & ~in_flight & ~rq_busy & ~pipe_busy &
                  (~next_final | queue_empty)):
            m.d.sync += waiting.eq(0)
            with m.If(last_step):
                m.d.comb += step_next.eq(0)
                m.d.sync += [loading.eq(1), w_addr.eq(0), w_group.eq(0)]
            with m.Else():
                m.d.comb += step_next.eq(step + 1)
                m.d.sync += running.eq(1)
        with m.Else():
            m.d.comb += step_next.eq(step)
        m.d.sync += step.eq(step_next)

        # -- Loader: the image into buffer 0, in step 0's layout --------------------------------
        first = steps[0]
        ly, lx = Signal(range(first.in_h + 1)), Signal(range(first.in_w + 1))
        lc = Signal(range(first.in_c + 1))
        l_bank = Signal()
        m.d.comb += l_bank.eq(lx[0] if first.stride == 1 else lx[1])
        l_col = lx[1:] if first.stride == 1 else Cat(lx[0], lx[2:])
        l_addr = Cat(lc[:first.c_bits], l_col[:first.col_bits], ly)
        l_en = Signal()
        m.d.comb += [
            l_en.eq(loading & self.i.valid),
            self.i.ready.eq(loading & (lc == first.in_c - 1)),
        ]
        with m.If(l_en):
            with m.If(lc != first.in_c - 1):
                m.d.sync += lc.eq(lc + 1)
            with m.Else():
                m.d.sync += lc.eq(0)
                with m.If(lx != first.in_w - 1):
                    m.d.sync += lx.eq(lx + 1)
                with m.Else():
                    m.d.sync += lx.eq(0)
                    with m.If(ly != first.in_h - 1):
                        m.d.sync += ly.eq(ly + 1)
                    with m.Else():
                        m.d.sync += [ly.eq(0), loading.eq(0), running.eq(1)]
        pixel = Signal(8)
        with m.Switch(lc):
            for ch in range(first.in_c):
                with m.Case(ch):
                    m.d.comb += pixel.eq(self.i.payload[ch])

        # -- Sweep: the pass's accumulators (held in the MAC arrays: the next pass's first group
        # is issued only after the sweep) max-pooled into `run`, or at a block's end into
        # `qbank` for the requantizer; one lane a cycle, both maxima in block RAM ----------------
        acc = signed(acc_bits)
        m.submodules.run_mem = run_mem = Memory(shape=acc, depth=lanes, init=[])
        m.submodules.qbank_mem = qbank_mem = Memory(shape=acc, depth=lanes, init=[])
        run_rd, run_wr = run_mem.read_port(), run_mem.write_port()
        qbank_rd, qbank_wr = qbank_mem.read_port(), qbank_mem.write_port()
        sw_pending = Signal()       # accumulators ready, sweep not started
        sw_active = Signal()
        sw_lane = Signal(range(lanes))
        sw_second = Signal()        # the second sweep of an unpooled pass (pixel b)
        with m.If(macs[0].o_valid):
            m.d.sync += [sw_pending.eq(1), sw_second.eq(0)]
        sel_a = Signal()
        sel_b = Signal()
        to_q = Signal()             # this sweep ends a block
        m.d.comb += [
            sel_a.eq(~p_pool & ~sw_second | p_pool),
            sel_b.eq(Mux(p_pool, p_p1, sw_second)),
            to_q.eq(Mux(p_pool, p_last, 1)),
        ]
        start_sweep = Signal()
        m.d.comb += start_sweep.eq(sw_pending & ~sw_active & ~(to_q & rq_busy))
        with m.If(start_sweep):
            m.d.sync += [sw_pending.eq(0), sw_active.eq(1), sw_lane.eq(0)]
        # Pipelined: cycle 1 the lane's two accumulators registered; cycle 2 the pair's
        # maximum registered, `run` read; cycle 3 the maximum with `run`, written.
        sw1, sw1_end, sw2, sw2_end = Signal(), Signal(), Signal(), Signal()
        sw1_lane, sw2_lane = Signal.like(sw_lane), Signal.like(sw_lane)
        head_a, head_b = Signal(acc), Signal(acc)
        m.d.sync += [sw1.eq(sw_active), sw1_lane.eq(sw_lane),
                     sw1_end.eq(sw_active & (sw_lane == lanes - 1)),
                     head_a.eq(macs[0].acc[sw_lane]), head_b.eq(macs[1].acc[sw_lane]),
                     sw2.eq(sw1), sw2_lane.eq(sw1_lane), sw2_end.eq(sw1_end)]
        with m.If(sw_active):
            m.d.sync += sw_lane.eq(sw_lane + 1)
            with m.If(sw_lane == lanes - 1):
                m.d.sync += sw_active.eq(0)
        cand = Signal(acc)
        best = Signal(acc)
        m.d.sync += cand.eq(Mux(sel_a & (~sel_b | (head_a >= head_b)), head_a, head_b))
        m.d.comb += [
            run_rd.addr.eq(sw1_lane),
            best.eq(Mux(p_pool & ~p_first & (run_rd.data > cand), run_rd.data, cand)),
            run_wr.en.eq(sw2 & ~to_q), run_wr.addr.eq(sw2_lane), run_wr.data.eq(best),
            qbank_wr.en.eq(sw2 & to_q), qbank_wr.addr.eq(sw2_lane), qbank_wr.data.eq(best),
        ]
        rq_start = Signal()
        with m.If(sw2_end):
            m.d.comb += rq_start.eq(to_q)
            with m.If(~p_pool & ~sw_second & p_p1):
                m.d.sync += [sw_pending.eq(1), sw_second.eq(1)]
            with m.Else():
                m.d.sync += in_flight.eq(0)

        # -- Requantizer: the block's maxima + bias, times the multiplier, rounded, shifted,
        # clipped, written into the next map buffer (the last step: its sums to the softmax) ---
        q_step = Signal.like(step)
        q_g = Signal.like(g)
        q_y, q_x = Signal(range(out_span)), Signal(range(2 * out_span))
        with m.If(rq_start):
            m.d.sync += [q_step.eq(p_step), q_g.eq(p_g), q_y.eq(p_by),
                         q_x.eq(Mux(p_pool, p_bx, Cat(sw_second, p_bx)))]
        q_final = per_step("q_final", [not s.relu for s in steps], 1, q_step)
        ch_shape = range(channels + 1)
        q_filters = per_step("q_filters", [s.filters for s in steps], ch_shape, q_step)
        q_bbase = per_step("q_bias_base", [mp.bias_base(k) for k in range(nsteps)],
                           range(mp.bias_base(nsteps) + 1), q_step)
        q_mbase = per_step("q_mult_base", [mp.mult_base(k) for k in range(nsteps)],
                           range(mp.mult_base(nsteps) + 1), q_step)
        period = mp.REQUANT_CYCLES
        rq_issuing = Signal()
        rq_lane = Signal(range(lanes + 1))
        rq_tick = Signal(range(period))
        ch0 = Signal(ch_shape)
        m.d.comb += ch0.eq(q_g * lanes)
        r0 = Signal()
        with m.If(rq_start):
            m.d.sync += [rq_issuing.eq(1), rq_lane.eq(0), rq_tick.eq(0)]
        with m.Elif(rq_issuing):
            m.d.sync += rq_tick.eq(Mux(rq_tick == period - 1, 0, rq_tick + 1))
            with m.If(rq_tick == period - 1):
                m.d.sync += rq_lane.eq(rq_lane + 1)
                with m.If(rq_lane == lanes - 1):
                    m.d.sync += rq_issuing.eq(0)
        m.d.comb += r0.eq(rq_issuing & (rq_tick == 0))
        ch = Signal(ch_shape)
        m.d.comb += [
            ch.eq(ch0 + rq_lane),
            qbank_rd.addr.eq(rq_lane),
            b_rd.addr.eq(q_bbase + ch),
            m_rd.addr.eq(q_mbase + ch),
        ]
        # R1: bias and multiplier read; the sum.
        r1, r1_ok = Signal(), Signal()
        r1_ch = Signal(ch_shape)
        m.d.sync += [r1.eq(r0), r1_ok.eq(ch < q_filters), r1_ch.eq(ch)]
        total = Signal(signed(acc_bits + 1))
        m.d.comb += total.eq(qbank_rd.data + b_rd.data)
        r2, r2_ok = Signal(), Signal()
        r2_ch = Signal(ch_shape)
        r2_sum = Signal.like(total)
        r2_mult = Signal(mult_bits)
        m.d.sync += [r2.eq(r1), r2_ok.eq(r1_ok), r2_ch.eq(r1_ch), r2_sum.eq(total),
                     r2_mult.eq(m_rd.data)]
        # The last layer: its sums (logits) straight to the softmax and the logits FIFO beside
        # it; the layer starts only when both are empty (queue_empty), so they always take them.
        logit_bits = network.layer_widths(steps[-1].index).acc
        logit_src = stream.Signature(signed(logit_bits)).create()
        m.d.comb += [logit_src.payload.eq(r2_sum), logit_src.valid.eq(r2 & r2_ok & q_final)]
        # R2: operands of the radix-4 multiplier (ReLU before the product: exact, the
        # multiplier is not negative).
        relu = Signal(unsigned(acc_bits))
        m.d.comb += relu.eq(Mux(r2_sum[-1], 0, r2_sum))
        mul_a = Signal(unsigned(acc_bits))
        mul_a3 = Signal(unsigned(acc_bits + 2))
        mul_m = Signal(mult_bits)
        mul_ok = Signal()
        mul_ch = Signal(ch_shape)
        mul_phase = Signal(range(period + 1))
        mul_active = Signal()
        prod = Signal(unsigned(acc_bits + mult_bits))
        mul_done = Signal()
        with m.If(r2 & ~q_final):
            m.d.sync += [mul_a.eq(relu), mul_a3.eq(relu + (relu << 1)), mul_m.eq(r2_mult),
                         mul_ok.eq(r2_ok), mul_ch.eq(r2_ch), mul_phase.eq(0),
                         mul_active.eq(1)]
        digit = mul_m[-_RADIX_BITS:]
        term = Signal(unsigned(acc_bits + 2))
        with m.Switch(digit):
            with m.Case(0):
                m.d.comb += term.eq(0)
            with m.Case(1):
                m.d.comb += term.eq(mul_a)
            with m.Case(2):
                m.d.comb += term.eq(mul_a << 1)
            with m.Case(3):
                m.d.comb += term.eq(mul_a3)
        with m.If(mul_active & ~(r2 & ~q_final)):
            m.d.sync += [mul_m.eq(mul_m << _RADIX_BITS), mul_phase.eq(mul_phase + 1)]
        with m.If(mul_active):
            m.d.sync += prod.eq(Mux(mul_phase == 0, 0, prod << _RADIX_BITS) + term)
            with m.If(mul_phase == period - 1):
                m.d.comb += mul_done.eq(1)
                with m.If(~(r2 & ~q_final)):
                    m.d.sync += mul_active.eq(0)
        # R11: the rounding constant added; R12: shifted and clipped (each layer's shift is an
        # elaboration constant); R13: written.
        shifts = [int(qnet.layers[s.index].shift) if s.relu else 1 for s in steps]
        res = Signal()
        res_ok = Signal()
        res_ch = Signal(ch_shape)
        m.d.sync += [res.eq(mul_done), res_ok.eq(mul_ok), res_ch.eq(mul_ch)]
        # `prod` holds the finished product in the cycle after mul_done.
        round_c = per_step("round", [1 << (sh - 1) for sh in shifts], unsigned(len(prod)),
                           q_step)
        rounded = Signal(len(prod) + 1)
        res2, res2_ok = Signal(), Signal()
        res2_ch = Signal(ch_shape)
        m.d.sync += [rounded.eq(prod + round_c), res2.eq(res), res2_ok.eq(res_ok),
                     res2_ch.eq(res_ch)]
        val = Signal(8)
        with m.Switch(q_step):
            for k, s in enumerate(steps):
                if s.relu:
                    with m.Case(k):
                        shifted = rounded >> shifts[k]
                        m.d.comb += val.eq(Mux(shifted > Widths.act_max, Widths.act_max,
                                               shifted))
        res_val = Signal(8)
        wr, wr_ok = Signal(), Signal()
        wr_ch = Signal(ch_shape)
        m.d.sync += [wr.eq(res2), wr_ok.eq(res2_ok), wr_ch.eq(res2_ch), res_val.eq(val)]
        # R12: the write, in the next step's layout.
        wbuf = per_step("write_buffer", [(k + 1) % 2 for k in range(nsteps)], 1, q_step)
        w_bank = Signal()
        w_addr_out = Signal(read_bits)
        with m.Switch(q_step):
            for k, s in enumerate(steps[:-1]):
                nxt = steps[k + 1]
                with m.Case(k):
                    col = q_x[1:] if nxt.stride == 1 else Cat(q_x[0], q_x[2:])
                    m.d.comb += [
                        w_bank.eq(q_x[0] if nxt.stride == 1 else q_x[1]),
                        w_addr_out.eq(Cat(wr_ch[:nxt.c_bits], col[:nxt.col_bits], q_y)),
                    ]
        for buf in (0, 1):
            for bank in (0, 1):
                _, wp = banks[(buf, bank)]
                m.d.comb += [
                    wp.en.eq(Mux(loading, l_en & (buf == 0) & (l_bank == bank),
                                 wr & wr_ok & (wbuf == buf) & (w_bank == bank))),
                    wp.addr.eq(Mux(loading, l_addr, w_addr_out)),
                    wp.data.eq(Mux(loading, pixel, res_val)),
                ]
        m.d.comb += rq_busy.eq(rq_issuing | r1 | r2 | mul_active | res | res2 | wr)

        softmax, logits = result_path(m, logit_src, qnet, deep=False, o=self.o)
        m.d.comb += queue_empty.eq(softmax.i.ready & (logits.level == 0))
        return m
