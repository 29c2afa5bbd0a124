"""The host's training calls against a software device that speaks the protocol: chunking of
``READ_WEIGHTS``, the read-back state, and the errors of a wrong device."""

import numpy as np
import pytest

from cnnforge.boards.host import Client, train_session
from cnnforge.boards.protocol import (FLAG_MODEL, FLAG_TRAINABLE, MAX_READ_VALUES,
                                      ClassifyResult, Command, Error, FrameDecoder, encode,
                                      ping_payload)
from cnnforge.errors import CnnforgeError
from cnnforge.hw.params import NetworkConfig
from cnnforge.sim.reference.trainer import forward, init_random, train_step
from helpers import flat_state


class SoftDevice:
    """A transport whose far end is the golden trainer behind the protocol (PING, TRAIN,
    READ_WEIGHTS, READ_CYCLES, LOAD_IMAGE, CLASSIFY)."""

    sim = True

    def __init__(self, state, flags=FLAG_MODEL | FLAG_TRAINABLE):
        self.state = state
        self.flags = flags
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.reads = []
        self.image = None

    def _result(self, image):
        step = forward(self.state, image)
        return ClassifyResult(int(np.argmax(step.logits)), [int(x) for x in step.logits],
                              [int(x) for x in step.probs]).to_payload()

    def write(self, data):
        cfg = self.state.config
        for frame in self.decoder.feed(data):
            cmd, payload = Command(frame.command), frame.payload
            if cmd == Command.PING:
                reply = ping_payload(cfg, self.flags)
            elif cmd == Command.TRAIN:
                image = np.frombuffer(payload[1:], np.uint8).reshape(28, 28, 1)
                reply = self._result(image)
                train_step(self.state, image, payload[0])
                self.image = image
            elif cmd == Command.READ_WEIGHTS:
                first = int.from_bytes(payload[:4], "little")
                count = int.from_bytes(payload[4:], "little")
                self.reads.append((first, count))
                if not 1 <= count <= MAX_READ_VALUES:
                    self.out += encode(Command.NAK, bytes([Error.BAD_ARGUMENT.value, cmd.value]))
                    continue
                values = flat_state(self.state)[first:first + count]
                reply = b"".join(int(v).to_bytes(4, "little", signed=True) for v in values)
            elif cmd == Command.READ_CYCLES:
                reply = (1234).to_bytes(4, "little")
            elif cmd == Command.LOAD_IMAGE:
                self.image, reply = np.frombuffer(payload, np.uint8).reshape(28, 28, 1), b""
            elif cmd == Command.CLASSIFY:
                reply = self._result(self.image)
            self.out += encode(cmd.value | 0x80, reply)

    def read(self, n, timeout):
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def sleep(self, seconds):
        pass

    def flush(self):
        self.out.clear()

    def now(self):
        return 0.0


def small_images(n, seed=3):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def test_read_values_in_chunks():
    state = init_random(NetworkConfig())
    device = SoftDevice(state.copy())
    client = Client(device)
    total = len(flat_state(state))
    count = 2 * MAX_READ_VALUES + 77
    got = client.read_values(100, count)
    assert device.reads == [(100, MAX_READ_VALUES), (100 + MAX_READ_VALUES, MAX_READ_VALUES),
                            (100 + 2 * MAX_READ_VALUES, 77)]
    assert got == [int(v) for v in flat_state(state)[100:100 + count]]
    back = client.read_state(state)
    assert all(np.array_equal(getattr(back, k), getattr(state, k))
               for k in ("dense_m", "dense_b", "conv_m", "conv_b"))
    assert back.lfsr.state == state.lfsr.state and total == 54411


def test_train_session_against_the_golden_trainer():
    state = init_random(NetworkConfig())
    images, labels = small_images(3)
    device = SoftDevice(state.copy())
    out = train_session(Client(device), images, labels, state, test_images=images[:2],
                        test_labels=labels[:2], device_checks=2)
    assert out["steps"] == 3 and out["matches_golden"] and out["device_checks"] == 2
    assert out["step_cycles"] == 1234
    assert np.array_equal(out["state"].dense_m, device.state.dense_m)


def test_train_session_detects_a_different_device():
    state = init_random(NetworkConfig())
    other = state.copy()
    other.dense_b = other.dense_b + 1          # not the state the host expects
    images, labels = small_images(1)
    with pytest.raises(CnnforgeError, match="training step 0: the device's forward pass differs"):
        train_session(Client(SoftDevice(other)), images, labels, state)


def test_train_session_needs_a_training_device():
    state = init_random(NetworkConfig())
    with pytest.raises(CnnforgeError, match="does not train on chip"):
        train_session(Client(SoftDevice(state, flags=FLAG_MODEL)), [], [], state)
