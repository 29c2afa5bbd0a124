"""Host side of the UART link: classify images on a board, or on the RTL in simulation.

A *transport* moves bytes: ``write(data)``, ``read(n, timeout)`` (up to ``n`` bytes, fewer only
on timeout), ``sleep(seconds)``, ``flush()``, ``now()`` (seconds). :class:`SerialTransport` is a serial port
(pyserial, imported only when used); ``cnnforge.sim.verify.tb_board.SimTransport`` is the UART pins of
the simulated board core. :class:`Client` speaks :mod:`cnnforge.boards.protocol` over either.
"""

import time
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import CnnforgeError, ToolError
from .protocol import (SYNC, HEADER_BYTES, REPLY, Command, ClassifyResult, FrameError,
                       ReplyMode, StreamResult, check_reply, MAX_READ_VALUES, decode, encode,
                       max_weight_words, nak_error, parse_ping, parse_values,
                       read_weights_payload, stream_payload, train_payload, weight_frames)


__all__ = ["DEFAULT_BAUD", "LinkError", "SerialTransport", "Client", "Classification",
           "classify", "classify_stream", "progress_bar", "load_image_file", "train_session",
           "train_board"]

DEFAULT_BAUD = 3_000_000


class LinkError(CnnforgeError):
    """No (valid) reply from the device."""


class SerialTransport:
    """A serial port through pyserial."""

    sim = False

    def __init__(self, port, baud=DEFAULT_BAUD):
        try:
            import serial
        except ImportError:
            raise ToolError("pyserial is not installed: pip install pyserial") from None
        try:
            self._port = serial.Serial(port, baud, timeout=1.0)
        except serial.SerialException as e:
            raise LinkError(f"cannot open {port}: {e}") from None

    def write(self, data):
        self._port.write(bytes(data))
        self._port.flush()

    def read(self, n, timeout):
        self._port.timeout = timeout
        return self._port.read(n)

    def sleep(self, seconds):
        time.sleep(seconds)

    def flush(self):
        self._port.reset_input_buffer()

    def now(self):
        return time.perf_counter()

    def close(self):
        self._port.close()


@dataclass
class Classification:
    cls: int
    logits: list
    probs: list            # Q15 integers (32768 = 1.0)
    cycles: int            # accelerator cycles of this image (READ_CYCLES)
    seconds: float         # host time of load + classify + read cycles (simulated in --sim)

    def probabilities(self):
        return [p / 32768 for p in self.probs]


class Client:
    """Requests and replies over a transport; every method raises one-line errors.

    Parameters
    ----------
    transport
        See the module docstring.
    timeout : float
        Seconds to wait for each reply.
    model : QuantModel, optional
    parallelism : Parallelism, optional
        The model the device should run and the device's parallelism (its board preset):
        :meth:`classify` uploads the model when the device has none (an iCE40 after
        configuration: its dense weights live in SPRAM, which starts empty).
    """

    def __init__(self, transport, timeout=1.0, *, model=None, parallelism=None):
        self.transport = transport
        self.timeout = timeout
        self.model = model
        self.parallelism = parallelism
        self.info = None

    def send(self, data):
        """Raw bytes to the device (fault injection)."""
        self.transport.write(data)

    def read_frame(self, timeout=None):
        """The next frame from the device, skipping bytes before a SYNC."""
        timeout = self.timeout if timeout is None else timeout
        read = self.transport.read
        while True:
            first = read(1, timeout)
            if not first:
                raise LinkError(f"no reply from the device within {timeout:g} s")
            if first[0] != SYNC:
                continue
            head = read(HEADER_BYTES - 1, timeout)
            if len(head) < HEADER_BYTES - 1:
                raise LinkError("reply cut off in its header")
            length = head[1] | head[2] << 8
            # The timeout is one of silence: a long reply (64 kB take 0.2 s at 3 Mbaud) is
            # read for as long as bytes keep coming.
            rest = b""
            while len(rest) < length + 2:
                more = read(length + 2 - len(rest), timeout)
                if not more:
                    break
                rest += more
            if len(rest) < length + 2:
                raise LinkError(f"reply cut off: {len(rest)} of {length + 2} bytes after the "
                                f"header")
            try:
                return decode(first + head + rest)
            except FrameError as e:
                raise LinkError(f"corrupted reply: {e}") from None

    def request(self, command, payload=b"", timeout=None):
        """Send a request; the reply payload (:class:`~.protocol.NakError` for a NAK)."""
        self.transport.write(encode(command, payload))
        return check_reply(command, self.read_frame(timeout))

    def ping(self):
        self.info = parse_ping(self.request(Command.PING))
        return self.info

    def _config(self):
        if self.info is None:
            self.ping()
        return self.info

    def load_image(self, image):
        image = self._check_image(image)
        self.request(Command.LOAD_IMAGE, image.tobytes())

    def classify_loaded(self, timeout=None):
        payload = self.request(Command.CLASSIFY, timeout=timeout)
        return ClassifyResult.from_payload(payload, self._config()["classes"])

    def read_cycles(self):
        payload = self.request(Command.READ_CYCLES)
        if len(payload) != 4:
            raise LinkError(f"READ_CYCLES reply of {len(payload)} bytes (expected 4)")
        return int.from_bytes(payload, "little")

    def weight_payloads(self, model, parallelism, memories=None):
        """The ``WRITE_WEIGHTS`` payloads loading ``model`` into this device (checks that the
        device is built for the model's network and for ``parallelism``)."""
        from ..hw.accel import ModelMemory, model_word_bits, model_writes
        from ..hw.model import QuantNetwork
        from .top import link_config
        info = self.ping()
        config = link_config(model)
        if (info["input_size"], info["in_channels"], info["classes"]) != \
                (config.input_size, config.in_channels, config.classes):
            raise CnnforgeError(f"the device runs a {info['input_size']}x{info['input_size']}x"
                                f"{info['in_channels']} -> {info['classes']} network, the model "
                                f"is {config.input_size}x{config.input_size}x"
                                f"{config.in_channels} -> {config.classes}")
        if not info["writable"]:
            raise CnnforgeError("the device takes no model uploads (no WRITE_WEIGHTS)")
        if isinstance(model, QuantNetwork):
            # A layer-list accelerator: its memories are a list (hw/network.py), `memories`
            # their indices.
            from ..hw.network import network_writes, weight_memories
            word_bytes = (max(m.bits for m in weight_memories(parallelism)) + 7) // 8
            writes = [w for w in network_writes(model, parallelism)
                      if memories is None or w[0] in memories]
        else:
            word_bytes = (model_word_bits(config, parallelism) + 7) // 8
            writes = model_writes(model, parallelism,
                                  tuple(ModelMemory) if memories is None else memories)
        if word_bytes != info["word_bytes"]:
            raise CnnforgeError(f"the device's model words are {info['word_bytes']} bytes, "
                                f"{word_bytes} for this parallelism: wrong board or preset?")
        return weight_frames(writes, word_bytes, max_weight_words(config, word_bytes))

    def load_model(self, model=None, parallelism=None, memories=None):
        """Upload ``model`` (default: the client's) through ``WRITE_WEIGHTS`` frames; the number
        of bytes sent. ``memories``: only these :class:`~cnnforge.hw.accel.ModelMemory` (the
        model then counts as complete too: for replacing part of a loaded model)."""
        model = model if model is not None else self.model
        parallelism = parallelism if parallelism is not None else self.parallelism
        if model is None or parallelism is None:
            raise CnnforgeError("load_model needs the model and the device's parallelism")
        sent = 0
        for payload in self.weight_payloads(model, parallelism, memories):
            self.request(Command.WRITE_WEIGHTS, payload)
            sent += len(payload)
        self.info["model_loaded"] = True
        return sent

    def _check_image(self, image):
        info = self._config()
        image = np.asarray(image)
        shape = (info["input_size"], info["input_size"])
        if info["in_channels"] > 1:
            shape += (info["in_channels"],)
        if image.shape != shape or image.dtype != np.uint8:
            raise CnnforgeError(f"image must be uint8 of shape {shape} for this device, not "
                                f"{image.dtype} {image.shape}")
        return image

    def _check_trainable(self):
        if not self._config()["trainable"]:
            raise CnnforgeError("the device does not train on chip: build the bitstream with "
                                "training (make bitstream BOARD=... TRAIN=random|model)")

    def train(self, image, label, timeout=None):
        """One on-chip training step; the forward pass's :class:`ClassifyResult` (before the
        update). The image stays loaded (``classify_loaded`` then uses the new weights)."""
        self._check_trainable()
        image = self._check_image(image)
        classes = self._config()["classes"]
        payload = self.request(Command.TRAIN, train_payload(image.tobytes(), label, classes),
                               timeout)
        return ClassifyResult.from_payload(payload, classes)

    def read_values(self, first, count):
        """Values ``first .. first + count - 1`` of the trainer's dump (any count: several
        ``READ_WEIGHTS`` frames of at most ``MAX_READ_VALUES`` values)."""
        self._check_trainable()
        out = []
        while count > 0:
            n = min(MAX_READ_VALUES, count)
            out += parse_values(self.request(Command.READ_WEIGHTS,
                                             read_weights_payload(first, n)), n)
            first += n
            count -= n
        return out

    def read_state(self, like):
        """The trainer's state (masters, biases, LFSR state) as a
        :class:`~cnnforge.sim.reference.trainer.TrainState`; ``like``: the state the device was built
        with (its network, format and constants)."""
        from ..hw.train import dump_order, parse_dump, state_from_dump
        words = sum(n for _, n in dump_order(like.config))
        values = np.asarray(self.read_values(0, words), np.int64) & 0xFFFFFFFF
        return state_from_dump(like, parse_dump(like.config, values))

    def _ensure_model(self):
        if not self._config()["model_loaded"]:
            if self.model is None:
                raise CnnforgeError("the device has no model (an iCE40 after configuration): "
                                    "give the client the model to upload")
            self.load_model()

    def classify_many(self, images, mode=ReplyMode.CLASS, coding="auto", progress=None,
                      window=None):
        """Classify ``images`` streaming (``CLASSIFY_IMAGE``): up to ``window`` (default: the
        device's slots) requests in flight, each sent as soon as the device has a free image
        buffer, so the line and the accelerator are busy at once. ``mode``: what each reply
        carries (:class:`~.protocol.ReplyMode`); ``coding``: ``"auto"`` (zero-run code where
        it is shorter), ``"raw"`` or ``"zero-run"``; ``progress(done, total)`` is called after
        each reply. Returns a :class:`~.protocol.StreamResult` per image, in order; a NAK or a
        reply out of order raises, naming the image.
        """
        mode = ReplyMode(mode)
        info = self._config()
        if not info.get("stream"):
            raise CnnforgeError("the device does not take streamed images (CLASSIFY_IMAGE): "
                                "rebuild its bitstream")
        window = info["slots"] if window is None else int(window)
        if window < 1:
            raise CnnforgeError(f"window must be at least 1 request, not {window}")
        self._ensure_model()
        images = list(images)
        results = [None] * len(images)
        pending = deque()
        sent = 0
        while sent < len(images) or pending:
            while sent < len(images) and len(pending) < window:
                image = self._check_image(images[sent])
                self.transport.write(encode(Command.CLASSIFY_IMAGE,
                                            stream_payload(sent & 0xFF, image.tobytes(), mode,
                                                           coding, info["max_run"])))
                pending.append(sent)
                sent += 1
            frame = self.read_frame()
            index = pending.popleft()
            if frame.command == Command.NAK.value:
                error = nak_error(frame)
                raise LinkError(f"image {index}: {error}")
            if frame.command != Command.CLASSIFY_IMAGE.value | REPLY:
                raise LinkError(f"image {index}: reply command 0x{frame.command:02x} does not "
                                f"answer CLASSIFY_IMAGE")
            try:
                result = StreamResult.from_payload(frame.payload, info["classes"], mode)
            except FrameError as e:
                raise LinkError(f"image {index}: {e}") from None
            if result.seq != index & 0xFF:
                raise LinkError(f"image {index}: reply carries sequence number {result.seq}, "
                                f"expected {index & 0xFF} (replies out of order)")
            results[index] = result
            if progress is not None:
                progress(index + 1, len(images))
        return results

    def classify(self, image):
        start = self.transport.now()
        self._ensure_model()
        self.load_image(image)
        result = self.classify_loaded()
        cycles = self.read_cycles()
        return Classification(result.cls, result.logits, result.probs, cycles,
                              self.transport.now() - start)


def load_image_file(path, size=28, *, max_side=4096, channels=1):
    """A PNG (or any Pillow format) as a ``size`` x ``size`` uint8 grayscale image, MNIST style
    (white digit on black: a mostly white picture is inverted); with ``channels=3`` an RGB
    ``(size, size, 3)`` image as it is.

    :class:`CnnforgeError` naming the problem for a missing file, one that is not an image, or
    a picture with a side longer than ``max_side`` (told from its header, before decoding).
    """
    try:
        from PIL import Image
    except ImportError:
        raise ToolError("Pillow is not installed: pip install Pillow") from None

    def too_large(width, height):
        return CnnforgeError(f"image {path} is {width}x{height} pixels, more than "
                             f"{max_side}x{max_side}")

    try:
        with warnings.catch_warnings():
            # Pillow's warning for a picture near its limit: refused below anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(path)      # the header only: decoding waits for convert()
    except FileNotFoundError:
        raise CnnforgeError(f"image file {path} not found") from None
    except Image.DecompressionBombError:
        # Pillow refuses to open it at all; the header, read with its limit lifted (nothing
        # is decoded), still tells the size.
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as picture:
                size_seen = picture.size
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        raise too_large(*size_seen) from None
    except (OSError, ValueError, SyntaxError) as e:   # UnidentifiedImageError is an OSError
        raise CnnforgeError(f"cannot read image {path}: {e}") from None
    with picture:
        if max(picture.size) > max_side:
            raise too_large(*picture.size)
        try:
            scaled = picture.convert("L" if channels == 1 else "RGB").resize((size, size))
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise CnnforgeError(f"cannot read image {path}: {e}") from None
    image = np.asarray(scaled, np.uint8)
    if channels == 1 and image.mean() > 127:
        image = 255 - image
    return image


def classify(port, images, baud=DEFAULT_BAUD, timeout=1.0, model=None, parallelism=None):
    """Classify ``images`` on the board at serial ``port`` (uploading ``model`` first if the
    board has none); a list of :class:`Classification`."""
    transport = SerialTransport(port, baud)
    try:
        client = Client(transport, timeout, model=model, parallelism=parallelism)
        return [client.classify(image) for image in images]
    finally:
        transport.close()


def classify_stream(port, images, baud=DEFAULT_BAUD, timeout=1.0, model=None, parallelism=None,
                    mode=ReplyMode.CLASS, progress=None):
    """Classify ``images`` on the board at serial ``port`` streaming
    (:meth:`Client.classify_many`); ``(results, seconds)``."""
    transport = SerialTransport(port, baud)
    try:
        client = Client(transport, timeout, model=model, parallelism=parallelism)
        client.ping()
        client._ensure_model()
        start = transport.now()
        results = client.classify_many(images, mode, progress=progress)
        return results, transport.now() - start
    finally:
        transport.close()


def progress_bar(stream=None, width=30):
    """A ``progress(done, total)`` for :meth:`Client.classify_many` drawing a bar on ``stream``
    (stderr)."""
    import sys
    stream = stream or sys.stderr

    def progress(done, total):
        filled = width * done // total
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            stream.write("\n")
        stream.flush()
    return progress


# ---- on-chip training -------------------------------------------------------------------------

def train_session(client, images, labels, like, *, test_images=(), test_labels=(),
                  device_checks=0, verify=True, log=None, every=100):
    """Train on the device, read its state back, evaluate it.

    ``like``: the :class:`~cnnforge.sim.reference.trainer.TrainState` the device was built with. With
    ``verify`` the golden trainer runs alongside: every step's reply (the forward pass) must
    equal its forward pass, and the read-back state its state, else :class:`CnnforgeError`.
    The read-back weights are evaluated on ``test_images`` with the golden integer model, and
    ``device_checks`` of them are also classified on the device (bit-exact with that model).

    Returns a dict: ``steps``, ``train_accuracy`` (predictions before each update),
    ``step_cycles`` (of the last step), ``seconds`` (training, host time), ``read_seconds``,
    ``matches_golden`` (None without ``verify``), ``test_accuracy``, ``device_checks`` and
    ``state`` (the read-back TrainState).
    """
    from ..sim.reference import golden
    from ..sim.reference.trainer import forward, train_step
    log = log or (lambda *_: None)
    info = client.ping()
    if not info["trainable"]:
        raise CnnforgeError("the device does not train on chip: build the bitstream with "
                            "training (make bitstream BOARD=... TRAIN=random|model)")
    cfg = like.config
    if (info["input_size"], info["in_channels"], info["classes"]) != \
            (cfg.input_size, cfg.in_channels, cfg.classes):
        raise CnnforgeError("the device runs another network than the training state")
    reference = like.copy() if verify else None
    correct = 0
    start = client.transport.now()
    cycles = 0
    for n, (image, label) in enumerate(zip(images, labels)):
        result = client.train(np.asarray(image, np.uint8), int(label))
        correct += result.cls == int(label)
        if reference is not None:
            step = forward(reference, image)
            if result.logits != [int(x) for x in step.logits] or \
                    result.probs != [int(x) for x in step.probs]:
                raise CnnforgeError(f"training step {n}: the device's forward pass differs from "
                                    f"the golden trainer's (wrong bitstream or init?)")
            train_step(reference, image, int(label))
        if (n + 1) % every == 0 or n + 1 == len(images):
            log(f"step {n + 1}/{len(images)}: training accuracy so far "
                f"{100 * correct / (n + 1):.2f} %")
    steps = len(images)
    seconds = client.transport.now() - start
    if steps:
        cycles = client.read_cycles()
    start = client.transport.now()
    state = client.read_state(like)
    read_seconds = client.transport.now() - start
    matches = None
    if reference is not None:
        matches = all(np.array_equal(getattr(state, k), getattr(reference, k))
                      for k in ("dense_m", "dense_b", "conv_m", "conv_b")) \
            and state.lfsr.state == reference.lfsr.state
        if not matches:
            raise CnnforgeError("the state read back from the device differs from the golden "
                                "trainer's")
    model = state.model()
    test_images = np.asarray(test_images, np.uint8)
    test_acc = None
    if len(test_images):
        test_acc = float(np.mean(golden.predict_int(model, test_images)
                                 == np.asarray(test_labels)))
    checked = 0
    for image in test_images[:device_checks]:
        got = client.classify(image)
        ref = golden.infer_int(model, image)
        if got.logits != [int(x) for x in ref.logits[0]] or \
                got.probs != [int(x) for x in ref.probs[0]]:
            raise CnnforgeError(f"test image {checked}: the device's classification differs "
                                f"from the read-back weights' golden model")
        checked += 1
    return {"steps": steps, "train_accuracy": correct / steps if steps else None,
            "step_cycles": cycles, "seconds": seconds, "read_seconds": read_seconds,
            "matches_golden": matches, "test_accuracy": test_acc, "device_checks": checked,
            "state": state}


def train_board(port, like, images, labels, *, baud=DEFAULT_BAUD, timeout=2.0, **kwargs):
    """:func:`train_session` on the board at serial ``port``."""
    transport = SerialTransport(port, baud)
    try:
        return train_session(Client(transport, timeout), images, labels, like, **kwargs)
    finally:
        transport.close()
