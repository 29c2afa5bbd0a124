"""The accelerator in its own, faster clock domain behind the link.

The host link needs a few MHz (3 Mbaud); the accelerator wants the fastest clock the device
allows. On a large, full device the link's control paths cannot keep up with that clock: its
executor's ``busy`` fans out to the capture and the cycle counter, and the UART pins and LEDs
pull the link to the die's edge, far from the accelerator. :class:`ClockCrossing` lets the link
run in a slow ``sync`` domain and the accelerator in ``domain``; only FIFOs and synchronizers
join them.
"""

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import AsyncFIFO
from amaranth.lib.wiring import Out

from ..hw.params import NetworkConfig
from ..hw.slice import RegisterSlice


__all__ = ["ClockCrossing"]


class ClockCrossing(wiring.Component):
    """Presents ``accel`` (elaborated in clock domain ``domain``) to a link in ``sync``.

    Toward the link it has the members of the accelerator the link uses — ``i``, ``o`` and the
    model write port ``mw_*`` if ``accel`` has one — plus ``cycles``: the accelerator's cycle
    count of the last image, counted in its own domain. Inference only: a training build runs
    its link and trainer on one (slow) clock.

    - ``i``: an asynchronous FIFO deep enough for a whole image. An image (``input_size**2``
      beats) is released to ``accel.i`` only once all of it has crossed, so the accelerator
      takes it at its own rate, not at the link's.
    - ``o``: an asynchronous FIFO into the link's domain, holding all ``classes`` beats of an
      image.
    - Register slices between the FIFOs and the accelerator, so no FIFO flag (a gray-code
      comparison) drives logic far away.
    - ``mw_*``: each write crosses through an asynchronous FIFO as narrow beats (a header,
      then the data) and is applied in the order given. The port has no flow control: the link
      writes at most one word every ``2 * word_bytes`` of its cycles (it assembles words one
      byte per 2 cycles), the beats of a word leave before the next one comes, and with the
      accelerator's clock at least as fast as the link's the FIFO never fills.
    - ``cycles`` (``Out(32)``): the accelerator's cycles for the last image, from its first
      pixel to its last result beat, counted the way the single-clock link counts them (the
      same numbers). ``accel.o`` never waits: the result FIFO holds all beats of an image and
      the link takes them before it sends the next one. The count crosses through a toggle
      synchronizer within a few link cycles of the image's end, before the link can answer a
      ``READ_CYCLES`` (which follows the classification's reply frame).

    Parameters
    ----------
    accel : wiring.Component
        :class:`~cnnforge.hw.accel.Accelerator` (elaborated as submodule ``accel``, its
        ``sync`` renamed to ``domain``).
    config : NetworkConfig
    domain : str
        The accelerator's clock domain (defined by the design around this component).
    """

    def __init__(self, accel, config, *, domain="fast"):
        if not isinstance(config, NetworkConfig):
            raise TypeError(f"config must be a NetworkConfig, not {config!r}")
        if not isinstance(domain, str) or domain in ("sync", "comb"):
            raise ValueError(f"domain must name a clock domain other than sync, not {domain!r}")
        self._accel = accel
        self._config = config
        self._domain = domain
        accel_members = accel.signature.members
        if "step_done" in accel_members:
            raise TypeError("ClockCrossing carries inference only, not a TrainingAccelerator")
        self._writable = "mw" in accel_members
        members = {"i": accel_members["i"], "o": accel_members["o"], "cycles": Out(32)}
        if self._writable:
            self.mw_data_bits = accel.mw_data_bits
            if hasattr(accel, "memories"):
                self.memories = accel.memories      # a layer-list accelerator's model memories
            members["mw"] = accel_members["mw"]
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        config = self._config
        fast = self._domain
        n_pix = config.input_size * config.input_size
        accel = self._accel
        m.submodules.accel = DomainRenamer({"sync": fast})(accel)

        # ---- pixels: whole images, released at the accelerator's rate ---------------------
        # Register slices between the FIFOs and the accelerator: the FIFOs' flags are gray-code
        # comparisons, several LUTs deep, and must not reach across the die.
        i_bits = len(self.i.payload.as_value())
        m.submodules.i_fifo = i_fifo = AsyncFIFO(width=i_bits, depth=n_pix, w_domain="sync",
                                                 r_domain=fast)
        m.submodules.i_slice = i_slice = DomainRenamer({"sync": fast})(
            RegisterSlice(self.i.payload.shape()))
        m.d.comb += [
            i_fifo.w_data.eq(self.i.payload),
            i_fifo.w_en.eq(self.i.valid),
            self.i.ready.eq(i_fifo.w_rdy),
        ]
        # Beats of the released image not yet taken from the FIFO.
        remaining = Signal(range(n_pix + 1))
        whole_image = Signal()           # registered: keeps the level's subtraction off `remaining`
        m.d[fast] += whole_image.eq(i_fifo.r_level >= n_pix)
        release = Signal()
        m.d.comb += [
            i_slice.i.payload.eq(i_fifo.r_data),
            i_slice.i.valid.eq(i_fifo.r_rdy & (remaining != 0)),
            i_fifo.r_en.eq(i_slice.i.ready & (remaining != 0)),
        ]
        wiring.connect(m, i_slice=i_slice.o, accel=accel.i)
        with m.If((remaining == 0) & whole_image):
            m.d.comb += release.eq(1)
            m.d[fast] += remaining.eq(n_pix)
        with m.Elif(i_slice.i.valid & i_slice.i.ready):
            m.d[fast] += remaining.eq(remaining - 1)

        # ---- results ------------------------------------------------------------------------
        # The FIFO holds all beats of an image, and the link takes them before it sends the
        # next image: accel.o never waits.
        o_bits = len(self.o.payload.as_value())
        m.submodules.o_slice = o_slice = DomainRenamer({"sync": fast})(
            RegisterSlice(self.o.payload.shape()))
        m.submodules.o_fifo = o_fifo = AsyncFIFO(width=o_bits, depth=max(4, config.classes),
                                                 w_domain=fast, r_domain="sync")
        wiring.connect(m, accel=accel.o, o_slice=o_slice.i)
        m.d.comb += [
            o_fifo.w_data.eq(o_slice.o.payload),
            o_fifo.w_en.eq(o_slice.o.valid),
            o_slice.o.ready.eq(o_fifo.w_rdy),
            self.o.payload.eq(o_fifo.r_data),
            self.o.valid.eq(o_fifo.r_rdy),
            o_fifo.r_en.eq(self.o.ready),
        ]

        # ---- cycle counter (accelerator domain) ---------------------------------------------
        counting = Signal()
        count = Signal(32)
        last_count = Signal(32)
        done_toggle = Signal()
        beats = Signal(range(config.classes))
        last_beat = Signal()             # registered: the image's last beat left accel.o
        taken = accel.o.valid & accel.o.ready
        m.d[fast] += last_beat.eq(counting & taken & (beats == config.classes - 1))
        with m.If(release):
            # The input slice delays the first pixel by a cycle against the single-clock link,
            # whose count includes the cycle in which it starts: the two report the same numbers.
            m.d[fast] += [counting.eq(1), count.eq(0), beats.eq(0)]
        with m.Elif(counting):
            m.d[fast] += count.eq(count + 1)
            with m.If(taken):
                m.d[fast] += beats.eq(Mux(beats == config.classes - 1, 0, beats + 1))
            with m.If(last_beat):
                # (one cycle after the last beat: `count` has counted that cycle too)
                m.d[fast] += [counting.eq(0), last_count.eq(count),
                              done_toggle.eq(~done_toggle)]
        # The count is stable long before (and after) its toggle is seen in the link's domain.
        seen = Signal()
        seen_prev = Signal()
        m.submodules.cycles_sync = FFSynchronizer(done_toggle, seen, o_domain="sync")
        m.d.sync += seen_prev.eq(seen)
        with m.If(seen != seen_prev):
            m.d.sync += self.cycles.eq(last_count)

        # ---- model write port ---------------------------------------------------------------
        if self._writable:
            self._cross_model_writes(m, accel.mw)

        return m

    def _cross_model_writes(self, m, port):
        """``self.mw`` (link domain) -> ``port`` (the accelerator's), as narrow beats.

        A model word can be hundreds of bits wide (a layer's lanes side by side); an asynchronous
        FIFO of such words is dozens of LUT RAM slices whose read pointer reaches all of them,
        a cluster the placer spreads between the link and the memories. So each word crosses
        as beats of ``len(memory) + len(addr)`` bits: a header (memory, address), then the data,
        lowest bits first, and is assembled again in the accelerator's domain. The link writes
        one word per ``2 * word_bytes`` of its cycles, and a word is ``1 + ceil(data / beat)
        <= 1 + word_bytes`` beats, so the serializer is done before the next word comes."""
        fast = self._domain
        mw = self.mw
        beat_bits = len(Value.cast(mw.memory)) + len(mw.addr)
        data_beats = -(-len(mw.data) // beat_bits)
        m.submodules.mw_fifo = mw_fifo = AsyncFIFO(width=1 + beat_bits, depth=16,
                                                   w_domain="sync", r_domain=fast)

        # Link domain: the word held while its beats go out.
        held_data = Signal(data_beats * beat_bits)
        held_header = Signal(beat_bits)
        beats_left = Signal(range(data_beats + 2))
        header_next = Signal()
        with m.If(mw.en):
            m.d.sync += [held_header.eq(Cat(Value.cast(mw.memory), mw.addr)),
                         held_data.eq(mw.data), beats_left.eq(1 + data_beats),
                         header_next.eq(1)]
        with m.Elif((beats_left != 0) & mw_fifo.w_rdy):
            m.d.sync += [beats_left.eq(beats_left - 1), header_next.eq(0)]
            with m.If(~header_next):
                m.d.sync += held_data.eq(held_data >> beat_bits)
        m.d.comb += [
            mw_fifo.w_en.eq(beats_left != 0),
            mw_fifo.w_data.eq(Cat(header_next,
                                  Mux(header_next, held_header, held_data[:beat_bits]))),
        ]

        # Accelerator domain: every beat registered as it leaves the FIFO (the FIFO's flags and
        # pointers drive only this register), then assembled; the write is a flip-flop.
        beat_valid = Signal()
        beat = Signal(1 + beat_bits)
        m.d.comb += mw_fifo.r_en.eq(1)
        m.d[fast] += [beat_valid.eq(mw_fifo.r_rdy), beat.eq(mw_fifo.r_data)]
        is_header, beat_word = beat[0], beat[1:]
        header = Signal(beat_bits)
        data = Signal(data_beats * beat_bits)
        data_left = Signal(range(data_beats + 1))
        w_en = Signal()
        m.d[fast] += w_en.eq(0)
        with m.If(beat_valid):
            with m.If(is_header):
                m.d[fast] += [header.eq(beat_word), data_left.eq(data_beats)]
            with m.Elif(data_left != 0):
                m.d[fast] += [data.eq(Cat(data[beat_bits:], beat_word)),
                              data_left.eq(data_left - 1), w_en.eq(data_left == 1)]
        m.d.comb += [
            port.en.eq(w_en),
            Cat(Value.cast(port.memory), port.addr).eq(header),
            port.data.eq(data),
        ]
