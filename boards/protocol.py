"""The framed UART protocol between a host and the board: shared by host code and gateware.

Frame (both directions)::

    SYNC (0xA5) | command (u8) | length (u16 LE) | payload (length bytes) | CRC-16 (u16 BE)

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final
XOR) over command, length and payload. It is sent most significant byte first, the natural order
of a non-reflected CRC: the CRC over command..CRC is then 0, which is what the gateware checks.

Requests and their replies (reply command = request command | ``REPLY``):

==================  =======================================  ====================================
request             request payload                          reply payload
==================  =======================================  ====================================
``PING``            none                                     version, input size, channels,
                                                             classes, flags, word bytes, slots,
                                                             max run (8 x u8)
``LOAD_IMAGE``      the image, ``input_size**2 * channels``  none
                    bytes, raster order, channels innermost
``CLASSIFY``        none (classifies the loaded image)       class (u8), ``classes`` logits
                                                             (i32 LE), ``classes`` probabilities
                                                             (u16 LE, Q15)
``READ_CYCLES``     none                                     cycles of the last classify (u32 LE)
``WRITE_WEIGHTS``   memory (u8), address (u16 LE), then      none
                    N >= 1 model words of ``word bytes``
                    bytes each (LE), consecutive addresses
``READ_WEIGHTS``    first (u32 LE), count (u16 LE): values   ``count`` values (i32 LE)
                    of the training dump
``TRAIN``           label (u8), then the image (as           as ``CLASSIFY``: the forward pass
                    ``LOAD_IMAGE``)                          before the update
``CLASSIFY_IMAGE``  sequence number (u8), mode (u8), then    sequence number (u8), then as
                    the image, raw or zero-run coded         ``CLASSIFY``, cut to the mode's
                                                             fields (see below)
==================  =======================================  ====================================

Streaming classification (``CLASSIFY_IMAGE``, PING flag ``FLAG_STREAM``). The device has
``slots`` image buffers (PING); each ``CLASSIFY_IMAGE`` fills the next one as its bytes arrive
(the zero-run code decoded on the way), and once its CRC checks the image is queued and
classified when the accelerator is free, while the next image arrives in the other buffer. The
host keeps at most ``slots`` of them unanswered (credits: a buffer is free again when its image
has been read into the accelerator, before that image's reply is sent); one arriving with no
free buffer is NAKed ``BUSY`` and touches nothing. Their replies come in the order of the
requests and carry the request's sequence number; replies to other requests (and NAKs, which
carry a ``CLASSIFY_IMAGE``'s sequence number, its first payload byte, as a third byte) are sent
at once, so they may overtake a pending classification's reply. Mode byte: bits 0-1 the reply
(:class:`ReplyMode`: ``ALL`` class, logits and probabilities as ``CLASSIFY``; ``LOGITS`` class
and logits; ``CLASS`` the class only), bit 2 (``ZERO_RUN``) the image is coded: a byte ``b != 0``
is one image byte ``b``; a byte 0 followed by ``n`` (1 <= ``n`` <= the device's ``max run``,
PING) is ``n`` zero bytes (:func:`zero_run_encode`; MNIST test images average 204 bytes
instead of 784 with runs of up to 160, 209 with runs of up to 64). Other mode bits, reply
mode 3, a run of 0 or above the device's limit are NAKed ``BAD_ARGUMENT``; an image that
does not decode to exactly ``input_size**2 * channels`` bytes ``BAD_LENGTH``. A
``CLASSIFY_IMAGE`` discards the image loaded by ``LOAD_IMAGE`` (they share the buffers); it is
NAKed ``BUSY`` while a ``LOAD_IMAGE`` classification, a training step or a model upload's copy
runs, and those are NAKed ``BUSY`` while streamed images are pending. The run limit keeps the
decoder (two zero pixels per clock cycle) ahead of the UART, which holds one byte while the
next arrives: a run's zeros must be written before the two bytes after its count have arrived
(20 bit times), so :func:`zero_run_limit` is 32 times the UART's divisor, its cycles per bit (at
least 128: the divisor is at least 4; at most 255, a byte).

PING reply: protocol version, input size, channels, classes, flags, word bytes, slots, max
run (8 x u8).
Flags: bit 0 (``FLAG_MODEL``) the device holds a complete model, bit 1 (``FLAG_WRITABLE``)
it takes ``WRITE_WEIGHTS``, bit 2 (``FLAG_TRAINABLE``) it trains on chip (``TRAIN``,
``READ_WEIGHTS``), bit 3 (``FLAG_STREAM``) it takes ``CLASSIFY_IMAGE``; ``word bytes`` is the
size of one model word (the accelerator's ``mw_data_bits`` rounded up to bytes; 0 without a
write port); ``slots`` the image buffers for ``CLASSIFY_IMAGE`` (the host's window); ``max
run`` the longest zero run its decoder takes.

On-chip training (devices built with :class:`~cnnforge.hw.train.TrainingAccelerator`).
``TRAIN`` loads its image into the image buffer (a following ``CLASSIFY`` classifies it with the
updated weights), runs the forward pass, the backward pass and the SGD update, and replies when
the new weights are in place, with the forward pass's class, logits and probabilities (the
prediction before the update). ``READ_CYCLES`` after a ``TRAIN`` gives the cycles of the whole
step. A label of ``classes`` or more is NAKed ``BAD_ARGUMENT``. ``READ_WEIGHTS`` reads the
trainer's state: values ``first .. first + count - 1`` of the stream of
:func:`cnnforge.hw.train.dump_order` (int16 masters and biases sign-extended, the LFSR state as
its 32 bits), at most ``MAX_READ_VALUES`` (2,048) per frame, sent as the trainer streams them
(the loaded image stays); a range outside the dump, or a count of 0, is NAKed
``BAD_ARGUMENT``. ``WRITE_WEIGHTS`` on such a device writes only the int8 forward copies, not
the trainer's masters. Devices without a trainer NAK both ``UNSUPPORTED``.

Model upload (``WRITE_WEIGHTS``). The words are those of
:func:`cnnforge.hw.accel.model_writes` for the device's parallelism: ``memory`` is the
:class:`~cnnforge.hw.accel.ModelMemory` value in bits 0-6 and ``LAST`` (bit 7) on the final
frame of an upload; ``address`` is the first word's; the payload holds at most
``image_bytes(config) // word_bytes`` words (:func:`max_weight_words`). The payload is staged in
the image buffer and written into the accelerator only after the CRC checks, so a damaged frame
writes nothing; the staging discards the loaded image (``CLASSIFY`` answers ``NO_IMAGE`` until the
next ``LOAD_IMAGE``). A frame without ``LAST`` marks the model incomplete and one with ``LAST``
complete: ``CLASSIFY`` answers ``NO_MODEL`` in between. Devices whose model memories are
initialized by the bitstream start with a model; on the iCE40 (dense weights in SPRAM, which
starts empty) the host must upload the model first (:meth:`cnnforge.boards.host.Client.load_model`;
``Client.classify`` does it when PING says there is no model). A memory value that is not a
model memory is NAKed ``BAD_MEMORY``; a payload that is not a whole number of words, or larger
than the staging buffer, ``BAD_LENGTH``.

A request the device cannot serve gets a ``NAK`` frame instead, payload ``[error, command]``
(:class:`Error`; ``command`` is the offending request's command byte, 0 if unknown).

Device behaviour on malformed input: bytes outside a frame are skipped until a SYNC byte; a
length above :func:`max_payload` is NAKed (``BAD_LENGTH``) as soon as the length arrives; a gap
of more than the inter-byte timeout inside a frame is NAKed (``TIMEOUT``); a complete frame with a
wrong CRC is NAKed (``BAD_CRC``), with a length that does not fit its command ``BAD_LENGTH``.
Any frame completed while a classification runs is NAKed ``BUSY`` (a ``LOAD_IMAGE`` or
``WRITE_WEIGHTS`` started then does not touch the image buffer). A ``LOAD_IMAGE`` that fails
leaves no valid image: ``CLASSIFY`` then answers ``NO_IMAGE``. Requests may be sent without
waiting for the replies: each gets one reply, in order (the device queues up to 128 bytes of
replies while the line sends them; a request whose reply finds the queue full waits in the
receiver, and what arrives behind it is lost: the host keeps at most 16 requests in flight).
"""

import struct
from dataclasses import dataclass

from amaranth.lib import enum

from ..errors import CnnforgeError


__all__ = ["SYNC", "REPLY", "PROTOCOL_VERSION", "HEADER_BYTES", "OVERHEAD_BYTES", "Command",
           "Error", "FrameError", "NakError", "Frame", "crc16", "encode", "decode",
           "FrameDecoder", "check_reply", "max_payload", "image_bytes", "request_length_ok",
           "classify_reply_bytes", "ClassifyResult", "ping_payload", "parse_ping", "LAST",
           "FLAG_MODEL", "FLAG_WRITABLE", "WEIGHTS_HEADER_BYTES", "max_weight_words",
           "weight_frames", "FLAG_TRAINABLE", "TRAIN_HEADER_BYTES", "READ_HEADER_BYTES",
           "VALUE_BYTES", "MAX_READ_VALUES", "train_payload", "read_weights_payload",
           "parse_values", "FLAG_STREAM", "ReplyMode", "ZERO_RUN", "MAX_ZERO_RUN",
           "zero_run_limit",
           "STREAM_HEADER_BYTES", "zero_run_encode", "zero_run_decode", "stream_payload",
           "stream_reply_bytes", "StreamResult"]

SYNC = 0xA5
REPLY = 0x80
PROTOCOL_VERSION = 4
LAST = 0x80               # WRITE_WEIGHTS memory byte: the final frame of a model upload
FLAG_MODEL = 0x01         # PING flags: the device holds a complete model
FLAG_WRITABLE = 0x02      # PING flags: the device takes WRITE_WEIGHTS
FLAG_TRAINABLE = 0x04     # PING flags: the device trains on chip (TRAIN, READ_WEIGHTS)
FLAG_STREAM = 0x08        # PING flags: the device takes CLASSIFY_IMAGE
ZERO_RUN = 0x04           # CLASSIFY_IMAGE mode bit: the image is zero-run coded
MAX_ZERO_RUN = 255        # longest run of zeros one code can stand for (a device takes fewer)
STREAM_HEADER_BYTES = 2   # CLASSIFY_IMAGE: sequence number, mode
WEIGHTS_HEADER_BYTES = 3  # WRITE_WEIGHTS: memory, address (u16)
TRAIN_HEADER_BYTES = 1    # TRAIN: label
READ_HEADER_BYTES = 6     # READ_WEIGHTS: first (u32), count (u16)
VALUE_BYTES = 4           # READ_WEIGHTS: one value (i32)
# READ_WEIGHTS: values per reply (8 kB frames: 27 for the reference network's 54,411 values,
# each costing one pass over the dump, 0.5 ms at 100 MHz, beside 27 ms on a 3 Mbaud line).
MAX_READ_VALUES = 2048
HEADER_BYTES = 4          # sync, command, length (2)
OVERHEAD_BYTES = 6        # header and CRC


class Command(enum.Enum, shape=8):
    """Command byte of a frame (replies set bit 7, see ``REPLY``)."""
    PING = 0x01
    LOAD_IMAGE = 0x02
    CLASSIFY = 0x03
    READ_CYCLES = 0x04
    WRITE_WEIGHTS = 0x05
    READ_WEIGHTS = 0x06
    TRAIN = 0x07
    CLASSIFY_IMAGE = 0x08
    NAK = 0x15            # device -> host only


class Error(enum.Enum, shape=8):
    """Error code of a NAK."""
    BAD_CRC = 1
    BAD_LENGTH = 2
    UNKNOWN_COMMAND = 3
    TIMEOUT = 4
    BUSY = 5
    UNSUPPORTED = 6
    NO_IMAGE = 7
    NO_MODEL = 8
    BAD_MEMORY = 9
    BAD_ARGUMENT = 10     # TRAIN label, READ_WEIGHTS range, CLASSIFY_IMAGE mode or run


class ReplyMode(enum.Enum, shape=2):
    """What a ``CLASSIFY_IMAGE`` reply carries after its sequence number."""
    ALL = 0               # class, logits, probabilities (as CLASSIFY)
    LOGITS = 1            # class, logits
    CLASS = 2             # class


class FrameError(CnnforgeError):
    """A malformed frame (one line saying what is wrong)."""


class NakError(CnnforgeError):
    """The device answered with a NAK."""

    def __init__(self, error, command, seq=None):
        self.error = error
        self.command = command
        self.seq = seq          # a CLASSIFY_IMAGE's sequence number
        name = error.name if isinstance(error, Error) else f"error 0x{error:02x}"
        try:
            what = Command(command).name
        except ValueError:
            what = f"0x{command:02x}"
        which = "" if seq is None else f" (sequence number {seq})"
        super().__init__(f"device answered NAK {name} to command {what}{which}")


def image_bytes(config):
    return config.input_size * config.input_size * config.in_channels


def max_payload(config):
    """Longest payload the device accepts: lengths above it are NAKed at the header."""
    return max(1024, image_bytes(config) + WEIGHTS_HEADER_BYTES)


def classify_reply_bytes(config):
    return 1 + 4 * config.classes + 2 * config.classes


def max_weight_words(config, word_bytes):
    """Most model words in one ``WRITE_WEIGHTS`` frame (the image buffer stages them)."""
    return image_bytes(config) // word_bytes


def request_length_ok(command, length, config, word_bytes=None):
    """Whether ``length`` is a valid request payload length for ``command`` (``word_bytes``:
    the device's model word size, for ``WRITE_WEIGHTS``)."""
    if command == Command.LOAD_IMAGE:
        return length == image_bytes(config)
    if command == Command.TRAIN:
        return length == TRAIN_HEADER_BYTES + image_bytes(config)
    if command == Command.READ_WEIGHTS:
        return length == READ_HEADER_BYTES
    if command in (Command.PING, Command.CLASSIFY, Command.READ_CYCLES):
        return length == 0
    if command == Command.CLASSIFY_IMAGE:
        return STREAM_HEADER_BYTES < length <= max_payload(config)
    if command == Command.WRITE_WEIGHTS:
        if not word_bytes:
            return False
        words, rest = divmod(length - WEIGHTS_HEADER_BYTES, word_bytes)
        return rest == 0 and 1 <= words <= max_weight_words(config, word_bytes)
    return False


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE of ``data`` (check value of ``b"123456789"``: 0x29B1)."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


@dataclass(frozen=True)
class Frame:
    command: int          # the raw command byte
    payload: bytes = b""

    @property
    def is_reply(self):
        return bool(self.command & REPLY)

    def __repr__(self):
        return f"Frame(0x{self.command:02x}, {len(self.payload)} bytes)"


def encode(command, payload=b""):
    """A complete frame: ``command`` is a :class:`Command` or a raw byte (for fault tests)."""
    command = command.value if isinstance(command, Command) else int(command)
    if not 0 <= command <= 0xFF:
        raise FrameError(f"command must be a byte, not {command!r}")
    payload = bytes(payload)
    if len(payload) > 0xFFFF:
        raise FrameError(f"payload of {len(payload)} bytes does not fit the u16 length field")
    body = struct.pack("<BH", command, len(payload)) + payload
    return bytes([SYNC]) + body + struct.pack(">H", crc16(body))


def decode(data):
    """Exactly one complete frame from ``data``; :class:`FrameError` naming what is wrong."""
    data = bytes(data)
    if len(data) < OVERHEAD_BYTES:
        raise FrameError(f"frame too short: {len(data)} bytes, a frame has at least "
                         f"{OVERHEAD_BYTES}")
    if data[0] != SYNC:
        raise FrameError(f"frame starts with 0x{data[0]:02x}, not the sync byte 0x{SYNC:02x}")
    command, length = struct.unpack_from("<BH", data, 1)
    if len(data) != length + OVERHEAD_BYTES:
        raise FrameError(f"length field says {length} payload bytes but the frame carries "
                         f"{len(data) - OVERHEAD_BYTES}")
    body = data[1:HEADER_BYTES + length]
    (sent,) = struct.unpack_from(">H", data, HEADER_BYTES + length)
    computed = crc16(body)
    if sent != computed:
        raise FrameError(f"CRC mismatch: frame says 0x{sent:04x}, computed 0x{computed:04x}")
    return Frame(command, data[HEADER_BYTES:HEADER_BYTES + length])


class FrameDecoder:
    """Incremental decoder of a byte stream: skips garbage until SYNC, yields good frames.

    Frames with a bad CRC or an oversized length are dropped (counted in ``errors``) and the
    search for the next SYNC resumes one byte after the dropped frame's SYNC. A stray SYNC byte
    in garbage waits for as many bytes as its (garbage) length field claims, like the device
    does until its inter-byte timeout.
    """

    def __init__(self, max_length=0xFFFF):
        self._buf = bytearray()
        self._max = max_length
        self.skipped = 0
        self.errors = 0

    def feed(self, data):
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                self.skipped += len(self._buf)
                self._buf.clear()
                return frames
            self.skipped += start
            del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return frames
            command, length = struct.unpack_from("<BH", self._buf, 1)
            if length > self._max:
                self.errors += 1
                del self._buf[:1]
                continue
            if len(self._buf) < length + OVERHEAD_BYTES:
                return frames
            try:
                frames.append(decode(self._buf[:length + OVERHEAD_BYTES]))
            except FrameError:
                self.errors += 1
                del self._buf[:1]
                continue
            del self._buf[:length + OVERHEAD_BYTES]

    @property
    def pending(self):
        """Bytes of a frame still incomplete."""
        return len(self._buf)


def check_reply(request, frame):
    """The reply payload for ``request``; :class:`NakError` for a NAK, FrameError otherwise."""
    request = Command(request)
    if frame.command == Command.NAK.value:
        raise nak_error(frame)
    if frame.command != request.value | REPLY:
        raise FrameError(f"reply command 0x{frame.command:02x} does not answer "
                         f"{request.name} (expected 0x{request.value | REPLY:02x})")
    return frame.payload


def nak_error(frame):
    """The :class:`NakError` a NAK frame stands for (:class:`FrameError` if malformed)."""
    if len(frame.payload) not in (2, 3):
        raise FrameError(f"NAK with a {len(frame.payload)}-byte payload (expected 2 or 3)")
    code, command = frame.payload[:2]
    try:
        code = Error(code)
    except ValueError:
        pass
    return NakError(code, command, frame.payload[2] if len(frame.payload) == 3 else None)


def ping_payload(config, flags=0, word_bytes=0, slots=0, max_run=0):
    return bytes([PROTOCOL_VERSION, config.input_size, config.in_channels, config.classes,
                  flags, word_bytes, slots, max_run])


def parse_ping(payload):
    """``{"version", "input_size", "in_channels", "classes", "model_loaded", "writable",
    "trainable", "stream", "word_bytes", "slots", "max_run"}`` from a PING reply."""
    if len(payload) >= 1 and payload[0] != PROTOCOL_VERSION:
        raise FrameError(f"the device speaks protocol version {payload[0]}, this host "
                         f"{PROTOCOL_VERSION}: rebuild the bitstream or update the host")
    if len(payload) != 8:
        raise FrameError(f"PING reply of {len(payload)} bytes (expected 8)")
    version, size, channels, classes, flags, word_bytes, slots, max_run = payload
    return {"version": version, "input_size": size, "in_channels": channels, "classes": classes,
            "model_loaded": bool(flags & FLAG_MODEL), "writable": bool(flags & FLAG_WRITABLE),
            "trainable": bool(flags & FLAG_TRAINABLE), "stream": bool(flags & FLAG_STREAM),
            "word_bytes": word_bytes, "slots": slots, "max_run": max_run}


# ---- streaming classification -----------------------------------------------------------------

def zero_run_limit(divisor):
    """The longest zero run a device whose UART counts ``divisor`` cycles per bit decodes
    (32 per bit: its zeros, two pixels a cycle, are written in about 80 % of the 20 bit times
    the UART can hold the following bytes)."""
    return min(MAX_ZERO_RUN, 32 * divisor)


def zero_run_encode(data, max_run=64):
    """``data`` (bytes) in the ``CLASSIFY_IMAGE`` zero-run code: each byte ``b != 0`` as it is,
    each run of zeros as ``0, n`` per up to ``max_run`` of them (the device's, from PING)."""
    if not 1 <= max_run <= MAX_ZERO_RUN:
        raise FrameError(f"zero runs of at most {max_run} (1 to {MAX_ZERO_RUN})")
    data = bytes(data)
    out = bytearray()
    i, end = 0, len(data)
    while i < end:
        if data[i]:
            j = i
            while j < end and data[j]:
                j += 1
            out += data[i:j]
        else:
            j = i
            while j < end and not data[j] and j - i < max_run:
                j += 1
            out += bytes([0, j - i])
        i = j
    return bytes(out)


def zero_run_decode(code, length=None, max_run=MAX_ZERO_RUN):
    """The bytes ``code`` stands for; :class:`FrameError` for a run of 0 or above ``max_run``,
    a code ending inside a run, or (``length`` given) another length."""
    out = bytearray()
    i = 0
    while i < len(code):
        if code[i]:
            out.append(code[i])
            i += 1
            continue
        if i + 1 == len(code):
            raise FrameError("zero-run code ends inside a run")
        run = code[i + 1]
        if not 1 <= run <= max_run:
            raise FrameError(f"zero run of {run} (1 to {max_run})")
        out += bytes(run)
        i += 2
    if length is not None and len(out) != length:
        raise FrameError(f"zero-run code decodes to {len(out)} bytes, not {length}")
    return bytes(out)


def stream_payload(seq, image, mode=ReplyMode.ALL, coding="auto", max_run=64):
    """``CLASSIFY_IMAGE`` payload: ``image`` (bytes or a uint8 array) raw, zero-run coded
    (``coding="zero-run"``, runs of at most ``max_run``: the device's) or whichever is shorter
    (``"auto"``)."""
    raw = bytes(image)
    if not 0 <= seq <= 0xFF:
        raise FrameError(f"sequence number {seq} does not fit a byte")
    if coding not in ("auto", "raw", "zero-run"):
        raise FrameError(f"unknown image coding {coding!r} (auto, raw, zero-run)")
    body, flags = raw, 0
    if coding != "raw":
        code = zero_run_encode(raw, max_run)
        if coding == "zero-run" or len(code) < len(raw):
            body, flags = code, ZERO_RUN
    return bytes([seq, ReplyMode(mode).value | flags]) + body


def stream_reply_bytes(config, mode):
    """Payload bytes of a ``CLASSIFY_IMAGE`` reply in reply mode ``mode``."""
    mode = ReplyMode(mode)
    fields = {ReplyMode.ALL: classify_reply_bytes(config),
              ReplyMode.LOGITS: 1 + 4 * config.classes, ReplyMode.CLASS: 1}[mode]
    return 1 + fields


@dataclass
class StreamResult:
    """A ``CLASSIFY_IMAGE`` reply: the fields its mode carries (``None`` for the others)."""
    seq: int
    cls: int
    logits: list = None
    probs: list = None    # Q15

    @classmethod
    def from_payload(cls, payload, classes, mode):
        mode = ReplyMode(mode)
        expect = {ReplyMode.ALL: 2 + 6 * classes, ReplyMode.LOGITS: 2 + 4 * classes,
                  ReplyMode.CLASS: 2}[mode]
        if len(payload) != expect:
            raise FrameError(f"CLASSIFY_IMAGE reply of {len(payload)} bytes (expected {expect} "
                             f"for {classes} classes in reply mode {mode.name})")
        logits = probs = None
        if mode != ReplyMode.CLASS:
            logits = list(struct.unpack_from(f"<{classes}i", payload, 2))
        if mode == ReplyMode.ALL:
            probs = list(struct.unpack_from(f"<{classes}H", payload, 2 + 4 * classes))
        return cls(payload[0], payload[1], logits, probs)


def train_payload(image, label, classes=None):
    """``TRAIN`` payload: the label, then the image bytes (``image``: uint8 array)."""
    label = int(label)
    if not 0 <= label <= 0xFF or (classes is not None and label >= classes):
        raise FrameError(f"label {label} is not a class of this network"
                         + (f" (0..{classes - 1})" if classes else ""))
    return bytes([label]) + bytes(image)


def read_weights_payload(first, count):
    """``READ_WEIGHTS`` payload: values ``first .. first + count - 1`` of the dump."""
    if not 0 <= first <= 0xFFFFFFFF or not 1 <= count <= 0xFFFF:
        raise FrameError(f"READ_WEIGHTS range first={first} count={count} does not fit its "
                         f"fields")
    return struct.pack("<IH", first, count)


def parse_values(payload, count):
    """The ``count`` values (int) of a ``READ_WEIGHTS`` reply."""
    if len(payload) != VALUE_BYTES * count:
        raise FrameError(f"READ_WEIGHTS reply of {len(payload)} bytes (expected "
                         f"{VALUE_BYTES * count} for {count} values)")
    return list(struct.unpack(f"<{count}i", payload))


def weight_frames(writes, word_bytes, max_words):
    """``WRITE_WEIGHTS`` payloads for ``writes`` (``[(memory, address, word)]``, e.g.
    :func:`cnnforge.hw.accel.model_writes`): runs of consecutive addresses of one memory, at
    most ``max_words`` words each; the last payload carries ``LAST``."""
    runs = []
    for memory, address, word in writes:
        memory = int(getattr(memory, "value", memory))
        if not 0 <= memory < LAST or not 0 <= address <= 0xFFFF:
            raise FrameError(f"model write ({memory}, {address}) does not fit the frame fields")
        if not 0 <= word < 1 << (8 * word_bytes):
            raise FrameError(f"model word 0x{word:x} is wider than {word_bytes} bytes")
        run = runs[-1] if runs else None
        if (run is None or run[0] != memory or run[1] + len(run[2]) != address
                or len(run[2]) == max_words):
            runs.append((memory, address, [word]))
        else:
            run[2].append(word)
    payloads = []
    for n, (memory, address, words) in enumerate(runs):
        flag = LAST if n == len(runs) - 1 else 0
        payloads.append(struct.pack("<BH", memory | flag, address)
                        + b"".join(w.to_bytes(word_bytes, "little") for w in words))
    return payloads


@dataclass
class ClassifyResult:
    cls: int
    logits: list
    probs: list           # Q15 (32768 = 1.0)

    @classmethod
    def from_payload(cls, payload, classes):
        expect = 1 + 6 * classes
        if len(payload) != expect:
            raise FrameError(f"CLASSIFY reply of {len(payload)} bytes (expected {expect} for "
                             f"{classes} classes)")
        logits = list(struct.unpack_from(f"<{classes}i", payload, 1))
        probs = list(struct.unpack_from(f"<{classes}H", payload, 1 + 4 * classes))
        return cls(payload[0], logits, probs)

    def to_payload(self):
        n = len(self.logits)
        return (bytes([self.cls]) + struct.pack(f"<{n}i", *self.logits)
                + struct.pack(f"<{n}H", *self.probs))
