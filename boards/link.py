"""The gateware protocol engine: frames in, accelerator runs, frames out.

:class:`LinkEngine` serves the protocol over byte streams (any transport: a UART, a USB serial
device); :class:`Link` is the engine behind a UART. The engine is made of parts that each do one
thing, joined by streams: the :class:`FrameParser` (bytes to checked requests, payloads into the
image memory), the executor (the engine itself: requests to replies and classifications), the
:class:`ResultCapture` (result beats into the reply buffer) and the :class:`FrameTransmitter`
(replies to framed bytes). See :mod:`cnnforge.boards.protocol` for the frame format, the
commands and the error rules.
"""

import operator

from amaranth import *
from amaranth.lib import crc, data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..hw.params import NetworkConfig
from .protocol import (SYNC, REPLY, LAST, OVERHEAD_BYTES, FLAG_MODEL, FLAG_WRITABLE, FLAG_TRAINABLE,
                       FLAG_STREAM, WEIGHTS_HEADER_BYTES, TRAIN_HEADER_BYTES, READ_HEADER_BYTES,
                       STREAM_HEADER_BYTES, VALUE_BYTES, MAX_READ_VALUES, MAX_ZERO_RUN, ZERO_RUN,
                       Command, Error, ReplyMode, classify_reply_bytes, image_bytes, max_payload,
                       max_weight_words, ping_payload, stream_reply_bytes, zero_run_limit)
from .uart import UARTRx, UARTTx, check_divisor


__all__ = ["CRC16", "request_layout", "reply_layout", "FrameParser", "ResultCapture",
           "FrameTransmitter", "LinkEngine", "EngineTransport", "Link"]


#: The frames' CRC: CRC-16/CCITT-FALSE (:data:`cnnforge.boards.protocol.crc16`'s), a byte a
#: cycle.
CRC16 = crc.Algorithm(crc_width=16, polynomial=0x1021, initial_crc=0xFFFF,
                      reflect_input=False, reflect_output=False, xor_output=0x0000)(data_width=8)


def request_layout(max_len):
    """A checked request, as the parser gives it to the executor: the command byte and its
    decoding (one flag per :class:`~.protocol.Command`), the error the frame has (0: none),
    whether it arrived while the engine could not take it (``busy``: answered ``BUSY``), the
    payload length and the payload's leading fields (``header``: the bytes before the staged
    ones, e.g. a ``WRITE_WEIGHTS`` frame's memory and address)."""
    return data.StructLayout({
        "command": 8,
        "kind": data.StructLayout({command.name.lower(): 1 for command in Command}),
        "error": 8,
        "busy": 1,
        "length": range(max_len + 1),
        "header": 8 * READ_HEADER_BYTES,
    })


def reply_layout(longest):
    """A reply's header, as the executor gives it to the transmitter (its payload follows on a
    stream of its own)."""
    return data.StructLayout({"command": 8, "length": range(longest + 1)})


def image_depth(config, slots):
    """Words of the image memory: two pixels (all channels) a word, ``slots`` images; a slot's
    pixels are addressed by the slot number above the pixel's word index."""
    n_pix = config.input_size * config.input_size
    pix_bits = max(1, ceil_log2(n_pix))
    return (n_pix + 1) // 2 if slots == 1 else slots << (pix_bits - 1)


def image_word(config, slots, pix, slot):
    """Image memory address of the word holding pixel ``pix`` of slot ``slot`` (the even pixel
    in its low half)."""
    pix_bits = max(1, ceil_log2(config.input_size * config.input_size))
    word = Cat(pix, C(0, pix_bits))[1:pix_bits]
    return word if slots == 1 else Cat(word, slot)


class FrameParser(wiring.Component):
    """Bytes from the host into checked requests; payloads into the image memory.

    Skips bytes outside frames until a SYNC, then takes the command, the length, the payload
    and the CRC pair, giving up ``timeout`` cycles after the last byte (``TIMEOUT``). The first
    payload bytes of some commands are fields, kept for the request (``header``); the others
    are image bytes (or a model upload's staged words) and go into the image memory as they
    arrive (into ``slot`` for a ``CLASSIFY_IMAGE``, else slot 0), a ``CLASSIFY_IMAGE``'s
    zero-run code decoded on the way: a run's zeros are written a word (two pixels, all
    channels) a cycle while ``i`` waits (a byte a cycle where the run starts or ends inside a
    word). Nothing is written where the engine cannot take the frame (``busy``, ``staged``,
    ``copying``, ``stream_busy`` when its length arrives); the request then says ``busy``.

    Every frame becomes one request on ``request``, with the first error it has (or 0) by the
    protocol's rules; then the parser waits for the executor to take it. The request's payload
    settles a cycle before ``valid`` rises (the executor registers decisions about it then),
    and its ``kind``, ``length`` and ``header`` hold after it is taken until the next frame's
    length bytes (the executor reads them a cycle later).

    Parameters
    ----------
    config : NetworkConfig
    timeout : int
        Cycles without a byte inside a frame before it is dropped.
    max_run : int
        The longest zero run taken (longer ones: ``BAD_ARGUMENT``).
    slots : int
        Image slots for streamed images.
    word_bytes : int
        Bytes of a model word (0: no model write port; ``WRITE_WEIGHTS`` is ``UNSUPPORTED``).
    trainable : bool
        ``TRAIN`` and ``READ_WEIGHTS`` are served (else ``UNSUPPORTED``).

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes from the host, at least :attr:`LinkEngine.BYTE_CYCLES` cycles apart.
    request : ``Out(stream.Signature(request_layout(...)))``
        The checked requests.
    image : ``Out(WritePort.Signature(...))``
        The image memory's write port (byte lanes).
    busy, staged, copying, stream_busy : ``In(1)``
        When a frame's length arrives: a classification is in flight; streamed images occupy
        the image memory; a model upload's staged words are being copied out of it; the next
        streaming slot cannot be taken now.
    slot : ``In(range(slots))``
        The next streaming slot.
    image_stale : ``Out(1)``
        A frame starts overwriting the loaded image (pulse).
    """

    def __init__(self, *, config, timeout, max_run, slots, word_bytes, trainable):
        self._config = config
        self._timeout = timeout
        self._max_run = max_run
        self._slots = slots
        self._word_bytes = word_bytes
        self._trainable = trainable
        chans = config.in_channels
        super().__init__({
            "i": In(stream.Signature(8)),
            "request": Out(stream.Signature(request_layout(max_payload(config)))),
            "image": Out(WritePort.Signature(addr_width=ceil_log2(image_depth(config, slots)),
                                             shape=16 * chans, granularity=8)),
            "busy": In(1), "staged": In(1), "copying": In(1), "stream_busy": In(1),
            "slot": In(range(slots)),
            "image_stale": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        config = self._config
        n_pix = config.input_size * config.input_size
        chans = config.in_channels
        img_len = image_bytes(config)
        max_len = max_payload(config)
        slots = self._slots
        rx = self.i
        busy = self.busy
        copying = self.copying
        stream_block = self.stream_busy
        legacy_block = busy | self.staged | copying
        writable = self._word_bytes > 0
        trainable = self._trainable

        byte = rx.payload
        got = Signal()
        p_cmd = Signal(8)
        # (a copy blocks only the frames that stage in the image memory: a PING is answered)
        stages = ((p_cmd == Command.LOAD_IMAGE) | (p_cmd == Command.WRITE_WEIGHTS)
                  | (p_cmd == Command.TRAIN))
        # Lengths above max_len are refused at the header: the registers need no more bits.
        p_len = Signal(range(max_len + 1))
        p_count = Signal(range(max_len + 1))
        # The next payload byte is the last, registered (timing): fresh one cycle after p_count
        # or p_len change, so bytes must come at least 2 cycles apart (BYTE_CYCLES).
        p_at_end = Signal()
        m.d.sync += p_at_end.eq(p_count + 1 == p_len)
        m.submodules.crc = p_crc = CRC16.create()
        m.d.comb += p_crc.data.eq(byte)
        p_code = Signal(8)           # error found by the parser (0: none)
        p_is = {command: Signal(name=f"p_is_{command.name.lower()}")    # p_cmd, decoded
                for command in Command}
        p_busy = Signal()            # the frame started during a classification
        p_load = Signal()            # payload goes into the image memory
        p_stream = Signal()          # a CLASSIFY_IMAGE frame
        w_slot = Signal(range(slots))
        # The first payload bytes of some commands are fields (p_hdr_len of them, kept in
        # `hdr`): WRITE_WEIGHTS memory (LAST in bit 7) and first address, TRAIN label,
        # READ_WEIGHTS first value and count. Only the bytes after them are staged.
        # (Without a trainer only WRITE_WEIGHTS has fields: fewer cells on a full iCE40.)
        hdr_bytes = READ_HEADER_BYTES if trainable else WEIGHTS_HEADER_BYTES
        p_hdr_len = Signal(range(hdr_bytes + 1))
        hdr = Signal(8 * READ_HEADER_BYTES)
        word_bytes = max(1, self._word_bytes)
        w_byte = Signal(range(word_bytes))      # staged bytes modulo the word size
        max_words = max_weight_words(config, word_bytes)
        wt_min = WEIGHTS_HEADER_BYTES + word_bytes
        wt_max = WEIGHTS_HEADER_BYTES + max_words * word_bytes
        w_pix = Signal(range(n_pix))
        w_lane = Signal(range(chans))
        w_full = Signal()            # the image's last byte is written
        w_over = Signal()            # bytes beyond it (not written)
        # Zero-run decoding: the previous byte was a 0 (a run's count follows), the zeros of
        # the run still to write (`i` waits meanwhile), a count out of range.
        z_run = Signal()
        z_left = Signal(range(self._max_run + 1))
        z_bad = Signal()
        s_mode_in = hdr[8:16]        # CLASSIFY_IMAGE: sequence number hdr[:8], mode hdr[8:16]
        coded = s_mode_in[ZERO_RUN.bit_length() - 1]
        mode_bad = (s_mode_in[3:] != 0) | (s_mode_in[:2] == 3)
        idle = Signal(range(self._timeout))
        m.d.comb += got.eq(rx.valid & rx.ready)

        req = self.request.payload
        m.d.comb += [req.command.eq(p_cmd), req.error.eq(p_code), req.busy.eq(p_busy),
                     req.length.eq(p_len), req.header.eq(hdr)]
        m.d.comb += [getattr(req.kind, command.name.lower()).eq(flag)
                     for command, flag in p_is.items()]

        known = Signal()
        len_ok = Signal()
        with m.Switch(p_cmd):
            with m.Case(Command.LOAD_IMAGE):
                m.d.comb += [known.eq(1), len_ok.eq(p_len == img_len)]
            with m.Case(Command.PING, Command.CLASSIFY, Command.READ_CYCLES):
                m.d.comb += [known.eq(1), len_ok.eq(p_len == 0)]
            with m.Case(Command.WRITE_WEIGHTS):
                m.d.comb += [known.eq(1), len_ok.eq((p_len >= wt_min) & (p_len <= wt_max)
                                                    & (w_byte == 0))]
            with m.Case(Command.READ_WEIGHTS):
                m.d.comb += [known.eq(1),
                             len_ok.eq((p_len == READ_HEADER_BYTES) | (not trainable))]
            with m.Case(Command.CLASSIFY_IMAGE):
                # (raw: p_len == 2 + img_len; coded: decoded to exactly img_len bytes)
                m.d.comb += [known.eq(1), len_ok.eq((p_len > STREAM_HEADER_BYTES) & w_full
                                                    & ~w_over & ~z_run)]
            with m.Case(Command.TRAIN):
                m.d.comb += [known.eq(1), len_ok.eq((p_len == TRAIN_HEADER_BYTES + img_len)
                                                    | (not trainable))]
        # (in DECIDE; every way there but the CRC pair's sets p_code first)
        frame_code = Signal(8)
        with m.If(p_code != 0):
            m.d.comb += frame_code.eq(p_code)
        with m.Elif(~p_crc.match_detected):
            m.d.comb += frame_code.eq(Error.BAD_CRC)
        with m.Elif(~known):
            m.d.comb += frame_code.eq(Error.UNKNOWN_COMMAND)
        with m.Elif((p_cmd == Command.CLASSIFY_IMAGE) & (p_len >= STREAM_HEADER_BYTES)
                    & (mode_bad | z_bad)):
            m.d.comb += frame_code.eq(Error.BAD_ARGUMENT)
        with m.Elif(~len_ok):
            m.d.comb += frame_code.eq(Error.BAD_LENGTH)
        with m.Elif(((p_cmd == Command.READ_WEIGHTS) | (p_cmd == Command.TRAIN))
                    & (not trainable)):
            m.d.comb += frame_code.eq(Error.UNSUPPORTED)
        with m.Elif((p_cmd == Command.WRITE_WEIGHTS) & (not writable)):
            m.d.comb += frame_code.eq(Error.UNSUPPORTED)

        write_byte = Signal()        # the payload byte taken is an image (or staged) byte

        def frame_byte():
            # Inside a frame: take bytes (not while a zero run is written), add them to the
            # CRC, and give up after `timeout` idle cycles.
            m.d.comb += [rx.ready.eq(z_left == 0), p_crc.valid.eq(got)]
            with m.If(got):
                m.d.sync += idle.eq(0)
            with m.Elif(idle == self._timeout - 1):
                m.d.sync += [idle.eq(0), p_code.eq(Error.TIMEOUT)]
                m.next = "DECIDE"
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        with m.FSM(name="parser"):
            with m.State("HUNT"):
                m.d.comb += rx.ready.eq(1)
                with m.If(got & (byte == SYNC)):
                    m.d.comb += p_crc.start.eq(1)
                    m.d.sync += [p_cmd.eq(0), p_code.eq(0), p_load.eq(0), p_hdr_len.eq(0),
                                 idle.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                frame_byte()
                with m.If(got):
                    m.d.sync += p_cmd.eq(byte)
                    m.next = "LEN_LO"
            with m.State("LEN_LO"):
                frame_byte()
                with m.If(got):
                    m.d.sync += p_len[:8].eq(byte)
                    m.next = "LEN_HI"
            with m.State("LEN_HI"):
                frame_byte()
                length = Cat(p_len[:8], byte)
                with m.If(got):
                    m.d.sync += [p_len[8:].eq(byte), p_count.eq(0),
                                 p_busy.eq(Mux(p_cmd == Command.CLASSIFY_IMAGE, stream_block,
                                               busy | self.staged | (copying & stages))),
                                 p_stream.eq(p_cmd == Command.CLASSIFY_IMAGE),
                                 w_slot.eq(Mux(p_cmd == Command.CLASSIFY_IMAGE, self.slot, 0)),
                                 w_pix.eq(0), w_lane.eq(0), w_byte.eq(0), w_full.eq(0),
                                 w_over.eq(0), z_run.eq(0), z_bad.eq(0)]
                    with m.Switch(p_cmd):
                        with m.Case(Command.WRITE_WEIGHTS):
                            m.d.sync += p_hdr_len.eq(WEIGHTS_HEADER_BYTES)
                        with m.Case(Command.CLASSIFY_IMAGE):
                            m.d.sync += p_hdr_len.eq(STREAM_HEADER_BYTES)
                        if trainable:
                            with m.Case(Command.TRAIN):
                                m.d.sync += p_hdr_len.eq(TRAIN_HEADER_BYTES)
                            with m.Case(Command.READ_WEIGHTS):
                                m.d.sync += p_hdr_len.eq(READ_HEADER_BYTES)
                    # A LOAD_IMAGE (or TRAIN) of any length discards the loaded image, so
                    # that one which fails (its length, its CRC, a timeout) leaves NO_IMAGE,
                    # never the previous image. (While busy it is NAKed and touches nothing.)
                    stages_image = (p_cmd == Command.LOAD_IMAGE)
                    if trainable:
                        stages_image = stages_image | (p_cmd == Command.TRAIN)
                    with m.If(stages_image & ~legacy_block):
                        m.d.comb += self.image_stale.eq(1)
                    # (the streaming slots share the memory with the loaded image)
                    with m.If((p_cmd == Command.CLASSIFY_IMAGE) & ~stream_block):
                        m.d.comb += self.image_stale.eq(1)
                    with m.If(length > max_len):
                        m.d.sync += p_code.eq(Error.BAD_LENGTH)
                        m.next = "DECIDE"
                    with m.Else():
                        with m.If((p_cmd == Command.LOAD_IMAGE) & (length == img_len)
                                  & ~legacy_block):
                            m.d.sync += p_load.eq(1)
                        with m.If((p_cmd == Command.CLASSIFY_IMAGE) & ~stream_block):
                            m.d.sync += p_load.eq(1)
                        if trainable:
                            with m.If((p_cmd == Command.TRAIN)
                                      & (length == TRAIN_HEADER_BYTES + img_len)
                                      & ~legacy_block):
                                m.d.sync += p_load.eq(1)
                        if writable:
                            # The words are staged where the image was: it is gone.
                            with m.If((p_cmd == Command.WRITE_WEIGHTS) & (length <= wt_max)
                                      & ~legacy_block):
                                m.d.comb += self.image_stale.eq(1)
                                m.d.sync += p_load.eq(1)
                        with m.If(length == 0):
                            m.next = "CRC_HI"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                frame_byte()
                header = p_count < p_hdr_len
                with m.If(got & header):
                    with m.Switch(p_count[:3]):
                        for j in range(hdr_bytes):
                            with m.Case(j):
                                m.d.sync += hdr.word_select(j, 8).eq(byte)
                with m.If(got):
                    m.d.sync += p_count.eq(p_count + 1)
                with m.If(got & ~header):
                    with m.If(p_stream & coded & z_run):
                        # A run's count: its zeros are written from the next cycle on.
                        m.d.sync += z_run.eq(0)
                        with m.If((byte == 0) | (byte > self._max_run)):
                            m.d.sync += z_bad.eq(1)
                        with m.Else():
                            m.d.sync += z_left.eq(byte)
                    with m.Elif(p_stream & coded & (byte == 0)):
                        m.d.sync += z_run.eq(1)
                    with m.Else():
                        m.d.comb += write_byte.eq(1)
                with m.If(got & p_at_end):
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                frame_byte()
                with m.If(got):
                    m.next = "CRC_LO"
            with m.State("CRC_LO"):
                frame_byte()
                with m.If(got):
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                # One cycle to register the frame's verdict and its command, decoded (keeps
                # the checks off the executor's paths).
                # (a streamed image was judged at its header: busy is no reason to refuse it)
                m.d.sync += [p_code.eq(frame_code), p_busy.eq(p_busy | (busy & ~p_stream))]
                m.d.sync += [flag.eq(p_cmd == command) for command, flag in p_is.items()]
                m.next = "SETTLE"
            with m.State("SETTLE"):
                # And one for the executor's registered decisions to see them.
                m.next = "REQUEST"
            with m.State("REQUEST"):
                m.d.comb += self.request.valid.eq(1)
                with m.If(self.request.ready):
                    m.next = "HUNT"

        # Payload bytes (and a run's zeros) into the image memory: one byte a cycle, or the
        # zeros of a whole word (two pixels) when the run covers it.
        img_wr = self.image
        zeros = Signal()
        pair = Signal()
        m.d.comb += [zeros.eq(z_left != 0),
                     pair.eq(zeros & (w_lane == 0) & ~w_pix[0] & (z_left >= 2 * chans))]
        w_index = w_pix[0] if chans == 1 else Mux(w_pix[0], w_lane + chans, w_lane)
        last_pair = (n_pix - 1) & ~1         # the last word's first pixel
        with m.If(write_byte | zeros):
            m.d.comb += [
                img_wr.addr.eq(image_word(config, slots, w_pix, w_slot)),
                img_wr.data.eq(Mux(zeros, 0, byte).replicate(2 * chans)),
                img_wr.en.eq(Mux(p_load & ~w_full,
                                 Mux(pair, (1 << 2 * chans) - 1, 1 << w_index), 0)),
            ]
            with m.If(zeros):
                m.d.sync += z_left.eq(z_left - Mux(pair, 2 * chans, 1))
            with m.If(w_byte == word_bytes - 1):
                m.d.sync += w_byte.eq(0)
            with m.Else():
                m.d.sync += w_byte.eq(w_byte + 1)
            with m.If(pair):
                m.d.sync += w_pix.eq(w_pix + 2)
            with m.Elif(w_lane == chans - 1):
                m.d.sync += [w_lane.eq(0), w_pix.eq(w_pix + 1)]
            with m.Else():
                m.d.sync += w_lane.eq(w_lane + 1)
            with m.If(w_full):
                m.d.sync += w_over.eq(1)
            with m.If(pair & (w_pix == last_pair)):
                # (an odd pixel count: the word's second pixel is one beyond the image)
                m.d.sync += [w_full.eq(1), w_over.eq(w_full | (n_pix % 2 == 1))]
            with m.If(~pair & (w_pix == n_pix - 1) & (w_lane == chans - 1)):
                m.d.sync += w_full.eq(1)
        return m


class ResultCapture(wiring.Component):
    """A classification's result beats into the reply buffer, and its cycle count.

    After ``start``, the next ``classes`` beats on ``beats`` are the classification's: each is
    held there (not taken) while its 7 bytes are written, one a cycle, straight from its
    fields — class at byte 0, logit ``k`` (4 bytes, little-endian) at ``1 + 4k``, probability
    ``k`` (2 bytes) at ``1 + 4 classes + 2k`` — then taken. ``result`` rises after the last
    (for a ``train`` step, once ``step_done`` has come too) and holds until ``taken``. Outside
    a classification (``busy`` low) stray beats are taken and dropped.

    ``cycles``: from ``start`` until the last beat (a training step: until ``step_done``), not
    counting the cycles in which a beat waits for the capture.

    Parameters
    ----------
    config : NetworkConfig
    beats : stream.Signature
        The accelerator's result stream (fields ``logit``, ``prob``, ``cls``).

    Members
    -------
    beats : ``In(beats)``
    buffer : ``Out(WritePort.Signature(...))``
        The reply buffer's write port.
    start, busy, train, step_done : ``In(1)``
    result : ``Out(1)``
    taken : ``In(1)``
    cycles : ``Out(32)``
    cls : ``Out(8)``
        Class of the last classification.
    cls_valid : ``Out(1)``
        ``cls`` holds a result.
    """

    def __init__(self, *, config, beats):
        self._config = config
        super().__init__({
            "beats": In(beats),
            "buffer": Out(WritePort.Signature(
                addr_width=ceil_log2(classify_reply_bytes(config)), shape=8)),
            "start": In(1), "busy": In(1), "train": In(1), "step_done": In(1),
            "result": Out(1), "taken": In(1),
            "cycles": Out(32), "cls": Out(8), "cls_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        classes = self._config.classes
        res_len = classify_reply_bytes(self._config)
        beats = self.beats
        res_wr = self.buffer

        counting = Signal()
        count = Signal(32)
        # The beat being captured stays on `beats` (not taken until its last byte is written):
        # its fields are read there, not copied into registers.
        c_logit = Signal(32)
        c_prob = Signal(16)
        c_cls = Signal(8)
        m.d.comb += [c_logit.eq(beats.payload.logit.as_signed()),
                     c_prob.eq(beats.payload.prob), c_cls.eq(beats.payload.cls)]
        c_beat = Signal(range(classes))
        c_byte = Signal(range(7))
        c_lbase = Signal(range(res_len))
        c_pbase = Signal(range(res_len))
        # A training step's result waits for the update (step_done); its cycle count includes it.
        step_pending = Signal()
        captured = Signal()
        m.d.comb += self.result.eq(captured & ~step_pending)
        with m.If(self.taken):
            m.d.sync += captured.eq(0)
        with m.If(self.start):
            m.d.sync += [counting.eq(1), count.eq(0), step_pending.eq(self.train)]
        with m.Elif(counting & ~(beats.valid & ~beats.ready)):
            m.d.sync += count.eq(count + 1)
        with m.If(step_pending & self.step_done):
            m.d.sync += [step_pending.eq(0), self.cycles.eq(count + 1), counting.eq(0)]

        with m.FSM(name="capture"):
            with m.State("TAKE"):
                # Outside a classification, stray beats are drained and dropped.
                m.d.comb += beats.ready.eq(~self.busy)
                with m.If(self.start):
                    m.d.sync += [c_beat.eq(0), c_lbase.eq(1), c_pbase.eq(1 + 4 * classes)]
                with m.If(beats.valid & self.busy):
                    m.d.sync += c_byte.eq(0)
                    with m.If((c_beat == classes - 1) & ~self.train):
                        m.d.sync += [self.cycles.eq(count + 1), counting.eq(0)]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += res_wr.en.eq(1)
                with m.Switch(c_byte):
                    for j in range(4):
                        with m.Case(j):
                            m.d.comb += [res_wr.addr.eq(c_lbase + j),
                                         res_wr.data.eq(c_logit.word_select(j, 8))]
                    for j in range(2):
                        with m.Case(4 + j):
                            m.d.comb += [res_wr.addr.eq(c_pbase + j),
                                         res_wr.data.eq(c_prob.word_select(j, 8))]
                    with m.Case(6):
                        m.d.comb += [res_wr.addr.eq(0), res_wr.data.eq(c_cls)]
                m.d.sync += c_byte.eq(c_byte + 1)
                with m.If(c_byte == 6):
                    m.d.comb += beats.ready.eq(1)
                    m.d.sync += [c_lbase.eq(c_lbase + 4), c_pbase.eq(c_pbase + 2),
                                 c_beat.eq(c_beat + 1)]
                    with m.If(c_beat == classes - 1):
                        m.d.sync += [captured.eq(1), self.cls.eq(c_cls), self.cls_valid.eq(1)]
                    m.next = "TAKE"
        return m


class FrameTransmitter(wiring.Component):
    """Replies into framed bytes: SYNC, the command, the length (little-endian), the payload
    (``length`` bytes taken from ``payload``), the CRC-16 of command, length and payload
    (high byte first). A reply is taken once its last byte is on ``o``.

    A byte takes three cycles (where it lies in the frame and the payload byte registered,
    then sent: keeps the CRC register's enable off the executor's paths); a payload source
    may take a cycle after a byte is taken to offer the next.

    Parameters
    ----------
    longest : int
        The longest reply payload.

    Members
    -------
    reply : ``In(stream.Signature(reply_layout(longest)))``
    payload : ``In(stream.Signature(8))``
    o : ``Out(stream.Signature(8))``
    """

    def __init__(self, *, longest):
        self._longest = longest
        super().__init__({
            "reply": In(stream.Signature(reply_layout(longest))),
            "payload": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        r_cmd = self.reply.payload.command
        r_len = self.reply.payload.length
        # Byte of the reply frame.
        t_idx = Signal(range(self._longest + OVERHEAD_BYTES + 1))
        p = Signal(len(t_idx))
        # (for t_idx < 4, p wraps to at least longest + 3: p < r_len only for payload bytes)
        m.d.comb += p.eq(t_idx - 4)
        m.submodules.crc = t_crc = CRC16.create()
        tx_reg = Signal(8)
        tx_in_crc = Signal()
        tx_first = Signal()
        tx_last = Signal()
        # Where byte t_idx lies (payload, CRC high byte, last), registered in LOAD (timing).
        t_payload = Signal()
        t_crc_hi = Signal()
        t_last = Signal()
        tx_byte = Signal(8)
        with m.If(t_idx == 0):
            m.d.comb += tx_byte.eq(SYNC)
        with m.Elif(t_idx == 1):
            m.d.comb += tx_byte.eq(r_cmd)
        with m.Elif(t_idx == 2):
            m.d.comb += tx_byte.eq(r_len[:8])
        with m.Elif(t_idx == 3):
            m.d.comb += tx_byte.eq(r_len[8:])
        with m.Elif(t_payload):
            m.d.comb += tx_byte.eq(self.payload.payload)
        with m.Elif(t_crc_hi):
            m.d.comb += tx_byte.eq(t_crc.crc[8:])
        with m.Else():
            m.d.comb += tx_byte.eq(t_crc.crc[:8])

        with m.FSM(name="transmitter"):
            with m.State("LOAD"):
                # One cycle to place byte t_idx (and for its payload byte to be offered) ...
                m.d.sync += [t_payload.eq(p < r_len), t_crc_hi.eq(p == r_len),
                             t_last.eq(p == r_len + 1)]
                with m.If(self.reply.valid & ((p >= r_len) | self.payload.valid)):
                    m.next = "LATCH"
            with m.State("LATCH"):
                # ... and one to register it and its place (off the CRC's path).
                m.d.comb += self.payload.ready.eq(t_payload)
                m.d.sync += [tx_reg.eq(tx_byte), tx_first.eq(t_idx == 1),
                             tx_in_crc.eq((t_idx != 0) & ((t_idx < 4) | t_payload)),
                             tx_last.eq(t_last)]
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(tx_reg),
                             t_crc.data.eq(tx_reg), t_crc.start.eq(tx_first)]
                with m.If(self.o.ready):
                    m.d.comb += t_crc.valid.eq(tx_in_crc)
                    m.d.sync += t_idx.eq(t_idx + 1)
                    m.next = "LOAD"
                    with m.If(tx_last):
                        m.d.comb += self.reply.ready.eq(1)
                        m.d.sync += t_idx.eq(0)
        return m


class LinkEngine(wiring.Component):
    """Serves the framed protocol with an accelerator, over byte streams.

    The :class:`FrameParser` (submodule ``parser``) parses frames as bytes arrive (skipping
    bytes outside frames until a SYNC, checking the CRC, the length and an inter-byte timeout)
    and writes a ``LOAD_IMAGE`` payload straight into the image memory. A checked request goes
    to the executor (this module), which answers it or starts a classification: the image
    memory streams into ``accel.i`` and the :class:`ResultCapture` (``capture``) captures the
    ``classes`` result beats from ``accel.o`` into the reply buffer, one byte per cycle,
    straight from the held payload (``accel.o`` sees ``ready`` in the 7th cycle of each beat, so
    the cycle count, which leaves out output stalls, pauses meanwhile). Frames that arrive
    meanwhile are answered ``BUSY``; the classification's reply follows when it completes. A
    reply is a header for the :class:`FrameTransmitter` (``transmitter``) and its payload
    bytes, offered from their source (the reply buffer, the cycle count, a NAK's fields, PING's
    table, the trainer's dump).

    ``CLASSIFY_IMAGE`` (streaming): the image memory holds ``slots`` images. A streamed
    image's bytes go into the next free slot as they arrive, a zero-run code decoded on the way
    (a run's zeros written two pixels a cycle while ``i`` waits); once the CRC
    checks, the slot is queued with its sequence number and reply mode. The executor starts the
    oldest queued slot whenever no classification runs, so the next image arrives while one
    is computed; a slot is free again once its last pixel has been read into the accelerator.
    ``LOAD_IMAGE``, ``TRAIN`` and ``WRITE_WEIGHTS`` stage in slot 0.

    Replies go into a transmit buffer (``TX_BUFFER`` bytes) that the transport drains,
    so the executor takes the next request as soon as a reply is queued: requests sent without
    waiting for the replies are served in order (a reply waits for room in the buffer; the
    receiver holds the next request meanwhile).

    ``WRITE_WEIGHTS`` (when the accelerator has the model write port ``mw``,
    :class:`~cnnforge.hw.util.ModelWriteSignature`): the payload's words
    are staged in the image memory as they arrive; once the frame's CRC checks, the executor
    assembles them (one byte per 2 cycles) and writes one word per ``word_bytes`` bytes through
    the port, at consecutive addresses. Without the port it is NAKed ``UNSUPPORTED``.

    ``TRAIN`` and ``READ_WEIGHTS`` (when ``accel`` is a
    :class:`~cnnforge.hw.train.TrainingAccelerator`: its input beats carry ``cmd`` and ``label``,
    and it has ``step_done`` and the ``dump`` stream): a ``TRAIN`` payload's label goes into a
    register and its image into the image memory; the pixels stream with ``cmd=TRAIN`` and the
    reply waits for ``step_done``. ``READ_WEIGHTS`` sends one ``DUMP`` beat and takes the whole
    dump stream: the values before ``first`` are skipped, the requested ones are the reply's
    payload, sent straight from ``dump`` (no buffer), the rest are drained. Without a trainer
    both are NAKed ``UNSUPPORTED``.

    Parameters
    ----------
    accel : wiring.Component
        The accelerator (elaborated as submodule ``accel``): ``i`` takes pixels
        (``ArrayLayout(unsigned(8), in_channels)``), ``o`` gives ``classes`` beats per image
        with fields ``logit`` (signed, at most 32 bits), ``prob`` (16 bits) and ``cls``.
    config : NetworkConfig
        The network (image size, channels, classes).
    timeout : int
        Inter-byte timeout inside a frame, in clock cycles.
    model_loaded : bool
        Whether the accelerator starts with a complete model (its memories initialized by the
        bitstream); ``False`` for the iCE40 target, whose dense weights live in SPRAM:
        ``CLASSIFY`` is then NAKed ``NO_MODEL`` until a model upload completes.
    slots : int
        Image buffers for streamed classification (1, 2 or 4): a power of two, so that a
        slot's pixels are addressed by the slot number above the pixel index.
    max_run : int
        The longest zero run the decoder takes (1..255, reported by PING). A run's zeros are
        written a word (two pixels, all channels) a cycle while ``i`` waits (a byte a cycle
        where the run starts or ends inside a word): a transport that cannot wait (a UART holds
        one byte) bounds it (:func:`~.protocol.zero_run_limit`).

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes from the host, at most one per :attr:`BYTE_CYCLES` cycles.
    o : ``Out(stream.Signature(8))``
        Bytes to the host.
    busy : ``Out(1)``
        A classification is in flight.
    cls : ``Out(8)``
        Class of the last classification.
    cls_valid : ``Out(1)``
        ``cls`` holds a result.

    Cycle counter (``READ_CYCLES``): cycles from the first pixel offered to ``accel.i`` until the
    last result beat, not counting the cycles in which ``accel.o`` waits for the capture. If
    ``accel`` has a ``cycles`` output (a :class:`~cnnforge.boards.crossing.ClockCrossing`: the
    accelerator in its own clock domain), that count is reported instead.
    """

    #: The fewest cycles from one byte taken on ``i`` to the next that the parser is built
    #: for (a UART's bytes come 10 bit times apart, at least 40 cycles).
    BYTE_CYCLES = 2

    #: Bytes of replies queued for the transport: two classification replies (on the ECP5 small
    #: enough for LUT RAM; one iCE40 block RAM).
    TX_BUFFER = 128

    def __init__(self, *, accel, config, timeout, max_run, model_loaded=True, slots=2):
        if not isinstance(config, NetworkConfig):
            raise TypeError(f"config must be a NetworkConfig, not {config!r}")
        if config.classes > 255 or config.input_size > 255 or config.in_channels > 255:
            raise ValueError(f"config must have at most 255 classes, channels and rows, "
                             f"not {config!r}")
        timeout = operator.index(timeout)
        if timeout < 1:
            raise ValueError(f"timeout must be a positive number of cycles, not {timeout!r}")
        self._accel = accel
        self._config = config
        self._timeout = timeout
        if not isinstance(model_loaded, bool):
            raise TypeError(f"model_loaded must be a bool, not {model_loaded!r}")
        self._model_loaded = model_loaded
        if slots not in (1, 2, 4):
            raise ValueError(f"slots must be 1, 2 or 4, not {slots!r}")
        self.slots = slots
        members = getattr(getattr(accel, "signature", None), "members", {})
        self._writable = "mw" in members
        self._trainable = "step_done" in members and "dump" in members
        if self._trainable:
            from ..hw.train import dump_order
            self.dump_words = sum(n for _, n in dump_order(config))
        else:
            self.dump_words = 0
        # An accelerator behind a ClockCrossing counts its own cycles (in its clock domain).
        self._counted = "cycles" in members
        self.word_bytes = (accel.mw_data_bits + 7) // 8 if self._writable else 0
        if self.word_bytes > 255:
            raise ValueError(f"model words must be at most 255 bytes, not {self.word_bytes!r}")
        max_run = operator.index(max_run)
        if not 1 <= max_run <= MAX_ZERO_RUN:
            raise ValueError(f"max_run must be 1..{MAX_ZERO_RUN}, not {max_run!r}")
        #: The longest zero run the decoder takes (PING).
        self.max_run = max_run
        super().__init__({**self._transport_members(), **self.STATUS})

    #: The status members.
    STATUS = {"busy": Out(1), "cls": Out(8), "cls_valid": Out(1)}

    def _transport_members(self):
        """The members the bytes come and go by (a subclass's transport: its pins)."""
        return {"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))}

    def _byte_streams(self, m):
        """``(bytes from the host, bytes to the host)``: the streams the engine serves, from
        the members of :meth:`_transport_members` (a subclass adds its transport to ``m``)."""
        return self.i, self.o

    def elaborate(self, platform):
        m = Module()
        config = self._config
        n_pix = config.input_size * config.input_size
        chans = config.in_channels
        res_len = classify_reply_bytes(config)
        classes = config.classes
        slots = self.slots

        m.submodules.accel = accel = self._accel
        rx, tx = self._byte_streams(m)

        # ---- the parts and the memories between them ---------------------------------------
        m.submodules.parser = parser = FrameParser(
            config=config, timeout=self._timeout, max_run=self.max_run, slots=slots,
            word_bytes=self.word_bytes, trainable=self._trainable)
        m.d.comb += [parser.i.valid.eq(rx.valid), parser.i.payload.eq(rx.payload),
                     rx.ready.eq(parser.i.ready)]
        m.submodules.capture = capture = ResultCapture(
            config=config, beats=accel.signature.members["o"].signature)
        wiring.connect(m, accel.o, capture.beats)
        m.d.comb += [self.cls.eq(capture.cls), self.cls_valid.eq(capture.cls_valid)]
        # Without a trainer the longest reply is a classification's (READ_WEIGHTS: 8 kB).
        longest = 0xFFFF if self._trainable else max(res_len + 1, 8)
        m.submodules.transmitter = transmitter = FrameTransmitter(longest=longest)
        # Replies queue here and leave at the transport's rate: the executor is free for the
        # next request as soon as a reply is queued, so requests sent without waiting are all
        # served.
        m.submodules.tx_fifo = tx_fifo = SyncFIFOBuffered(width=8, depth=self.TX_BUFFER)
        m.d.comb += [tx_fifo.w_en.eq(transmitter.o.valid),
                     tx_fifo.w_data.eq(transmitter.o.payload),
                     transmitter.o.ready.eq(tx_fifo.w_rdy),
                     tx.valid.eq(tx_fifo.r_rdy), tx.payload.eq(tx_fifo.r_data),
                     tx_fifo.r_en.eq(tx.ready)]

        # Two pixels a word, the even one in the low half (a zero run's zeros are written two
        # pixels a cycle).
        m.submodules.image = image = Memory(shape=16 * chans, depth=image_depth(config, slots),
                                            init=[])
        img_wr = image.write_port(granularity=8)
        m.d.comb += [img_wr.addr.eq(parser.image.addr), img_wr.data.eq(parser.image.data),
                     img_wr.en.eq(parser.image.en)]
        img_rd = image.read_port()
        # The pixel read: `rd_pix` of slot `rd_slot` addressed, its half of the word selected
        # a cycle later (the read port's latency).
        rd_pix = Signal(range(n_pix + 1))
        rd_slot = Signal(range(slots))
        rd_half = Signal()
        with m.If(img_rd.en):
            m.d.sync += rd_half.eq(rd_pix[0])
        rd_data = img_rd.data.word_select(rd_half, 8 * chans)
        m.submodules.result = result = Memory(shape=8, depth=res_len, init=[])
        res_wr = result.write_port()
        m.d.comb += [res_wr.addr.eq(capture.buffer.addr), res_wr.data.eq(capture.buffer.data),
                     res_wr.en.eq(capture.buffer.en)]
        res_rd = result.read_port()

        # ---- the executor's state ----------------------------------------------------------
        busy = Signal()              # classification in flight (until its reply starts)
        image_valid = Signal()
        m.d.comb += self.busy.eq(busy)
        # Streaming slots: occupied (filled, queued or being read), queued (waiting to start),
        # the next to fill and the next to start (both rings), each one's sequence number and
        # mode. `s_stream` is the running classification's kind (a streamed image's, or a
        # LOAD_IMAGE/TRAIN one in slot 0); `copying` a model upload's staged words being copied.
        s_full = Signal(slots)
        s_queued = Signal(slots)
        rx_slot = Signal(range(slots))
        ex_slot = Signal(range(slots))
        s_seq = Array(Signal(8, name=f"s_seq{j}") for j in range(slots))
        s_mode = Array(Signal(3, name=f"s_mode{j}") for j in range(slots))
        s_stream = Signal()
        copying = Signal()
        m.d.comb += [parser.busy.eq(busy), parser.staged.eq(s_full != 0),
                     parser.copying.eq(copying), parser.slot.eq(rx_slot),
                     parser.stream_busy.eq((busy & ~s_stream) | s_full.bit_select(rx_slot, 1)
                                           | copying)]
        with m.If(parser.image_stale):
            m.d.sync += image_valid.eq(0)

        req = parser.request.payload
        p_is = {command: getattr(req.kind, command.name.lower()) for command in Command}
        hdr = req.header
        w_mem = hdr[:8]
        w_addr = hdr[8:24]
        t_label = hdr[:8]
        rw_first = hdr[:32]
        rw_count = hdr[32:48]
        model_ok = Signal(init=self._model_loaded)
        if self._writable and hasattr(self._accel, "memories"):
            n_memories = len(self._accel.memories)      # a layer-list accelerator's list
        elif self._writable:
            from ..hw.accel import ModelMemory
            n_memories = len(ModelMemory)
        else:
            n_memories = 0

        # ---- classification: image memory -> accel.i, accel.o -> reply buffer ------------
        start_req = Signal()
        start = Signal()             # registered: keeps the executor's decision off the counters
        m.d.sync += start.eq(start_req)
        f_active = Signal()
        f_addr = Signal(range(n_pix + 1))
        f_valid = Signal()
        s_train = Signal()           # the running image is a TRAIN step
        s_label = Signal(8)
        dump_req = Signal()          # READ_WEIGHTS: the DUMP beat is offered
        # READ_WEIGHTS: dump values taken, the byte of the current value, the range sent.
        d_idx = Signal(range(max(2, self.dump_words + 1)))
        d_byte = Signal(range(VALUE_BYTES))
        d_first = Signal(32)
        d_count = Signal(16)
        dump_ready = Signal()
        if self._trainable:
            m.d.comb += accel.dump.ready.eq(dump_ready)
        f_slot = Signal(range(slots))
        m.d.comb += [
            rd_pix.eq(f_addr), rd_slot.eq(f_slot),
            img_rd.addr.eq(image_word(config, slots, rd_pix, rd_slot)),
            img_rd.en.eq(~f_valid | accel.i.ready),
        ]
        if self._trainable:
            from ..hw.train import TrainCommand
            m.d.comb += [
                accel.i.valid.eq(f_valid | dump_req),
                accel.i.payload.pixel.eq(rd_data),
                accel.i.payload.label.eq(s_label),
                accel.i.payload.cmd.eq(Mux(dump_req, TrainCommand.DUMP,
                                           Mux(s_train, TrainCommand.TRAIN, TrainCommand.INFER))),
            ]
        else:
            m.d.comb += [
                accel.i.valid.eq(f_valid),
                accel.i.payload.eq(rd_data),
            ]
        # (a start leaves a pixel still offered on accel.i in place: with an accelerator that
        # answers only after taking its image there is none, but the stream rule holds for any)
        with m.If(start):
            m.d.sync += [f_active.eq(1), f_addr.eq(0)]
        with m.Elif(f_active & img_rd.en):
            m.d.sync += f_valid.eq(f_addr < n_pix)
            with m.If(f_addr < n_pix):
                m.d.sync += f_addr.eq(f_addr + 1)
            with m.Else():
                m.d.sync += f_active.eq(0)
                # Every pixel is read (the last one waits in the read port): the slot is free.
                with m.If(s_stream):
                    m.d.sync += s_full.bit_select(f_slot, 1).eq(0)

        m.d.comb += [capture.start.eq(start), capture.busy.eq(busy), capture.train.eq(s_train),
                     capture.step_done.eq(accel.step_done if self._trainable else 0)]

        # ---- replies: their headers to the transmitter, their payloads from a source ------
        SRC_NONE, SRC_PING, SRC_NAK, SRC_CYCLES, SRC_RESULT, SRC_DUMP = range(6)
        r_cmd = Signal(8)
        r_len = Signal(range(longest + 1))
        r_src = Signal(range(6))
        r_code = Signal(8)
        r_nak_cmd = Signal(8)
        r_nak_seq = Signal(8)
        r_stream = Signal()          # a CLASSIFY_IMAGE reply: its sequence number first
        c_seq = Signal(8)            # the running streamed image's sequence number and mode
        c_mode = Signal(3)
        m.d.comb += [transmitter.reply.payload.command.eq(r_cmd),
                     transmitter.reply.payload.length.eq(r_len)]
        # The payload byte offered (and, for the reply buffer, read: a cycle after it is taken
        # the read port still shows the previous byte, so nothing is offered then).
        s_idx = Signal(range(longest + 1))
        s_settled = Signal()
        s_more = Signal()            # the reply's payload has bytes left
        source = transmitter.payload
        taken = source.valid & source.ready
        m.d.comb += s_more.eq(s_idx < r_len)
        m.d.sync += s_settled.eq(~taken)
        with m.If(taken):
            m.d.sync += s_idx.eq(s_idx + 1)

        def reply(command, length, src, stream=0):
            m.d.sync += [r_cmd.eq(command), r_len.eq(length), r_src.eq(src), s_idx.eq(0),
                         r_stream.eq(stream), s_settled.eq(0)]
            m.next = "REPLY"

        # The request's error code, registered (timing: it is decided from the frame's fields,
        # stable from a cycle before the request is offered, and from busy / model_ok /
        # image_valid, which the executor changes only when it starts a reply or a copy, or
        # starts a classification, after which no request can be pending in the next cycle).
        code = Signal(8)
        code_r = Signal(8)
        m.d.sync += code_r.eq(code)
        with m.If(req.error != 0):
            m.d.comb += code.eq(req.error)
        with m.Elif(req.busy | (busy & ~p_is[Command.CLASSIFY_IMAGE])):
            m.d.comb += code.eq(Error.BUSY)
        with m.Elif((p_is[Command.CLASSIFY] | p_is[Command.TRAIN] | p_is[Command.CLASSIFY_IMAGE])
                    & ~model_ok):
            m.d.comb += code.eq(Error.NO_MODEL)
        if self._trainable:
            with m.Elif(p_is[Command.TRAIN] & (t_label >= classes)):
                m.d.comb += code.eq(Error.BAD_ARGUMENT)
            with m.Elif(p_is[Command.READ_WEIGHTS]
                        & ((rw_count == 0) | (rw_count > MAX_READ_VALUES)
                           | (rw_first + rw_count > self.dump_words))):
                m.d.comb += code.eq(Error.BAD_ARGUMENT)
        with m.Elif(p_is[Command.CLASSIFY] & ~image_valid):
            m.d.comb += code.eq(Error.NO_IMAGE)
        with m.Elif(p_is[Command.WRITE_WEIGHTS] & ((w_mem & ~LAST) >= n_memories)):
            m.d.comb += code.eq(Error.BAD_MEMORY)

        ping_bytes = ping_payload(config, (FLAG_WRITABLE if self._writable else 0)
                                  | (FLAG_TRAINABLE if self._trainable else 0) | FLAG_STREAM,
                                  self.word_bytes, slots, self.max_run)
        ping = Array([*(C(b, 8) for b in ping_bytes[:4]),
                      C(ping_bytes[4], 8) | Mux(model_ok, FLAG_MODEL, 0),
                      *(C(b, 8) for b in ping_bytes[5:])])
        m.d.comb += res_rd.addr.eq(Mux(r_stream, s_idx - 1, s_idx))
        with m.Switch(r_src):
            with m.Case(SRC_PING):
                m.d.comb += [source.valid.eq(s_more),
                             source.payload.eq(ping[s_idx[:3]])]  # (8 bytes)
            with m.Case(SRC_NAK):
                m.d.comb += [source.valid.eq(s_more), source.payload.eq(
                    Mux(s_idx[1], r_nak_seq, Mux(s_idx[0], r_nak_cmd, r_code)))]
            with m.Case(SRC_CYCLES):
                reported = accel.cycles if self._counted else capture.cycles
                m.d.comb += [source.valid.eq(s_more),
                             source.payload.eq(reported.word_select(s_idx[:2], 8))]
            with m.Case(SRC_RESULT):
                m.d.comb += [source.valid.eq(s_more & s_settled), source.payload.eq(
                    Mux(r_stream & (s_idx == 0), c_seq, res_rd.data))]
            if self._trainable:
                # The requested values straight from `dump`, each held there until its 4th
                # byte is taken.
                with m.Case(SRC_DUMP):
                    m.d.comb += [source.valid.eq(s_more & accel.dump.valid),
                                 source.payload.eq(accel.dump.payload.word_select(d_byte, 8))]
                    with m.If(taken):
                        m.d.sync += d_byte.eq(d_byte + 1)
                        with m.If(d_byte == VALUE_BYTES - 1):
                            m.d.comb += dump_ready.eq(1)
                            m.d.sync += d_idx.eq(d_idx + 1)

        # WRITE_WEIGHTS: staged bytes -> words -> the accelerator's model write port.
        word_bytes = max(1, self.word_bytes)
        max_len = max_payload(config)
        k_pix = Signal(range(n_pix))
        k_lane = Signal(range(chans))
        k_left = Signal(range(max_len + 1))      # staged bytes still to copy
        k_byte = Signal(range(word_bytes))
        k_word = Signal(8 * word_bytes)          # shift register, the first byte ends lowest
        k_en = Signal()
        k_addr = Signal(16)
        # The memory select, copied from the header when the copy starts: the header register
        # has many loads, and this one feeds every memory's write decode (iCE40 timing).
        k_mem = Signal(8)
        if self._writable:
            m.d.comb += [
                accel.mw.en.eq(k_en),
                Value.cast(accel.mw.memory).eq(k_mem),
                accel.mw.addr.eq(k_addr),
                accel.mw.data.eq(k_word),
            ]
        m.d.sync += k_en.eq(0)
        with m.If(k_en):
            m.d.sync += k_addr.eq(k_addr + 1)

        with m.FSM(name="executor"):
            with m.State("IDLE"):
                with m.If(capture.result):
                    m.d.comb += capture.taken.eq(1)
                    m.d.sync += busy.eq(0)
                    with m.If(s_stream):
                        mode = c_mode[:2]
                        reply(Command.CLASSIFY_IMAGE.value | REPLY,
                              Mux(mode == ReplyMode.CLASS, stream_reply_bytes(config, ReplyMode.CLASS),
                                  Mux(mode == ReplyMode.LOGITS,
                                      stream_reply_bytes(config, ReplyMode.LOGITS),
                                      stream_reply_bytes(config, ReplyMode.ALL))),
                              SRC_RESULT, stream=1)
                    with m.Else():
                        reply(Mux(s_train, Command.TRAIN.value | REPLY,
                                  Command.CLASSIFY.value | REPLY),
                              res_len, SRC_RESULT)
                with m.Elif(~busy & s_queued.bit_select(ex_slot, 1)):
                    # The oldest streamed image: start it (its slot stays occupied until read).
                    m.d.comb += start_req.eq(1)
                    m.d.sync += [busy.eq(1), s_train.eq(0), s_stream.eq(1), f_slot.eq(ex_slot),
                                 c_seq.eq(s_seq[ex_slot]), c_mode.eq(s_mode[ex_slot]),
                                 s_queued.bit_select(ex_slot, 1).eq(0),
                                 ex_slot.eq(ex_slot + 1)]
                with m.Elif(parser.request.valid):
                    # The request is taken and judged here; what it does, in DISPATCH (its
                    # fields hold: the parser's next frame is at most at its SYNC byte).
                    m.d.comb += parser.request.ready.eq(1)
                    m.d.sync += [r_code.eq(code_r), r_nak_cmd.eq(req.command),
                                 r_nak_seq.eq(hdr[:8])]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.next = "IDLE"
                with m.If(r_code != 0):
                    reply(Command.NAK.value, Mux(p_is[Command.CLASSIFY_IMAGE], 3, 2), SRC_NAK)
                with m.Elif(p_is[Command.PING]):
                    reply(Command.PING.value | REPLY, len(ping), SRC_PING)
                with m.Elif(p_is[Command.LOAD_IMAGE]):
                    m.d.sync += image_valid.eq(1)
                    reply(Command.LOAD_IMAGE.value | REPLY, 0, SRC_NONE)
                with m.Elif(p_is[Command.READ_CYCLES]):
                    reply(Command.READ_CYCLES.value | REPLY, 4, SRC_CYCLES)
                with m.Elif(p_is[Command.CLASSIFY]):
                    m.d.comb += start_req.eq(1)
                    m.d.sync += [busy.eq(1), s_train.eq(0), s_stream.eq(0), f_slot.eq(0)]
                with m.Elif(p_is[Command.CLASSIFY_IMAGE]):
                    # Queued; the executor starts it when no classification runs.
                    m.d.sync += [s_full.bit_select(rx_slot, 1).eq(1),
                                 s_queued.bit_select(rx_slot, 1).eq(1),
                                 s_seq[rx_slot].eq(hdr[:8]), s_mode[rx_slot].eq(hdr[8:11]),
                                 rx_slot.eq(rx_slot + 1)]
                if self._trainable:
                    with m.Elif(p_is[Command.TRAIN]):
                        m.d.comb += start_req.eq(1)
                        m.d.sync += [busy.eq(1), s_train.eq(1), s_label.eq(t_label),
                                     image_valid.eq(1), s_stream.eq(0), f_slot.eq(0)]
                    with m.Elif(p_is[Command.READ_WEIGHTS]):
                        m.d.sync += [busy.eq(1), d_idx.eq(0), d_byte.eq(0),
                                     d_first.eq(rw_first), d_count.eq(rw_count)]
                        m.next = "DUMP_REQ"
                if self._writable:
                    with m.Elif(p_is[Command.WRITE_WEIGHTS]):
                        m.d.sync += [model_ok.eq(w_mem[7]), k_pix.eq(0), k_lane.eq(0), copying.eq(1),
                                     k_byte.eq(0), k_addr.eq(w_addr), k_mem.eq(w_mem),
                                     k_left.eq(req.length - WEIGHTS_HEADER_BYTES)]
                        m.next = "COPY_ADDR"
            with m.State("COPY_ADDR"):
                # (overrides the feeder's address: no classification runs now)
                m.d.comb += [rd_pix.eq(k_pix), rd_slot.eq(0)]
                m.next = "COPY_DATA"
            with m.State("COPY_DATA"):
                m.d.sync += [k_word.eq(Cat(k_word[8:], rd_data.word_select(k_lane, 8))),
                             k_left.eq(k_left - 1)]
                with m.If(k_lane == chans - 1):
                    m.d.sync += [k_lane.eq(0), k_pix.eq(k_pix + 1)]
                with m.Else():
                    m.d.sync += k_lane.eq(k_lane + 1)
                with m.If(k_byte == word_bytes - 1):
                    m.d.sync += [k_byte.eq(0), k_en.eq(1)]
                with m.Else():
                    m.d.sync += k_byte.eq(k_byte + 1)
                with m.If(k_left == 1):
                    m.d.sync += copying.eq(0)
                    reply(Command.WRITE_WEIGHTS.value | REPLY, 0, SRC_NONE)
                with m.Else():
                    m.next = "COPY_ADDR"
            if self._trainable:
                # The trainer streams the whole dump: the values before `d_first` are skipped,
                # the requested ones are the reply's payload, the rest are drained.
                with m.State("DUMP_REQ"):
                    m.d.comb += dump_req.eq(1)
                    with m.If(accel.i.ready):
                        m.next = "DUMP_SKIP"
                with m.State("DUMP_SKIP"):
                    with m.If(d_idx == d_first):
                        reply(Command.READ_WEIGHTS.value | REPLY, d_count * VALUE_BYTES,
                              SRC_DUMP)
                    with m.Else():
                        m.d.comb += dump_ready.eq(1)
                        with m.If(accel.dump.valid):
                            m.d.sync += d_idx.eq(d_idx + 1)
                with m.State("DUMP_DRAIN"):
                    # (not busy: the host's next request waits in the parser until IDLE)
                    with m.If(d_idx == self.dump_words):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += dump_ready.eq(1)
                        with m.If(accel.dump.valid):
                            m.d.sync += d_idx.eq(d_idx + 1)
            with m.State("REPLY"):
                # The transmitter takes the reply once its last byte is queued.
                m.d.comb += transmitter.reply.valid.eq(1)
                with m.If(transmitter.reply.ready):
                    m.next = "IDLE"
                    if self._trainable:
                        with m.If(r_src == SRC_DUMP):
                            m.d.sync += busy.eq(0)
                            m.next = "DUMP_DRAIN"
        return m


class EngineTransport(wiring.Component):
    """What a transport around a :class:`LinkEngine` (``self.engine``) shows of it: the
    engine's figures, and its status members, which :meth:`_engine` drives."""

    max_run = property(lambda self: self.engine.max_run)
    slots = property(lambda self: self.engine.slots)
    word_bytes = property(lambda self: self.engine.word_bytes)
    dump_words = property(lambda self: self.engine.dump_words)

    #: The status members (``busy``, ``cls``, ``cls_valid``), as the engine's.
    STATUS = LinkEngine.STATUS

    def _engine(self, m):
        """Add the engine to ``m`` and drive the status members from it; the engine."""
        m.submodules.engine = engine = self.engine
        m.d.comb += [self.busy.eq(engine.busy), self.cls.eq(engine.cls),
                     self.cls_valid.eq(engine.cls_valid)]
        return engine


class Link(LinkEngine):
    """A :class:`LinkEngine` behind a UART (8N1 at ``divisor`` clock cycles per bit).

    The UART receiver holds one byte while the engine writes a zero run's zeros, so the longest
    run it takes is :func:`~.protocol.zero_run_limit` ``(divisor)``. The other parameters and the
    status members are the engine's.

    The UART is part of the engine's own module, not a module around it: the iCEBreaker build
    fills 99.4 % of the UP5K, and the extra level of hierarchy alone made Yosys's result 85 logic
    cells larger (5,331: it no longer fit).

    Members
    -------
    rx : ``In(1, init=1)``
        UART line from the host.
    tx : ``Out(1, init=1)``
        UART line to the host.
    busy, cls, cls_valid : ``Out``
        The engine's.
    """

    def __init__(self, *, accel, config, divisor, timeout, model_loaded=True, slots=2):
        self._divisor = check_divisor(divisor)
        super().__init__(accel=accel, config=config, timeout=timeout,
                         max_run=zero_run_limit(self._divisor), model_loaded=model_loaded,
                         slots=slots)

    def _transport_members(self):
        return {"rx": In(1, init=1), "tx": Out(1, init=1)}

    def _byte_streams(self, m):
        m.submodules.uart_rx = uart_rx = UARTRx(divisor=self._divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(divisor=self._divisor)
        m.d.comb += [uart_rx.rx.eq(self.rx), self.tx.eq(uart_tx.tx)]
        return uart_rx.o, uart_tx.i
