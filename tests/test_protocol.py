"""The frame format shared by host and gateware: CRC, encoder, decoders, reply parsing."""

import struct

import numpy as np
import pytest

from cnnforge.boards.protocol import (SYNC, FLAG_MODEL, FLAG_STREAM, FLAG_TRAINABLE, FLAG_WRITABLE,
                                      LAST, MAX_ZERO_RUN, ReplyMode, StreamResult, ZERO_RUN,
                                      stream_payload, stream_reply_bytes, zero_run_decode,
                                      zero_run_encode, zero_run_limit, nak_error,
                                      ClassifyResult, Command, Error, Frame, FrameDecoder,
                                      FrameError, NakError, check_reply, classify_reply_bytes,
                                      crc16, decode, encode, image_bytes, max_payload,
                                      MAX_READ_VALUES, max_weight_words, parse_ping,
                                      parse_values, ping_payload, read_weights_payload,
                                      request_length_ok, train_payload, weight_frames)
from cnnforge.hw.accel import ModelMemory
from cnnforge.hw.params import NetworkConfig

CONFIG = NetworkConfig()


def test_crc16_ccitt_false_check_values():
    assert crc16(b"123456789") == 0x29B1          # the catalogue's check value
    assert crc16(b"") == 0xFFFF
    assert crc16(b"\x00") == 0xE1F0


def test_encode_layout_and_zero_residue():
    frame = encode(Command.LOAD_IMAGE, bytes(range(10)))
    assert frame[0] == SYNC and frame[1] == 0x02
    assert struct.unpack_from("<H", frame, 2)[0] == 10
    assert frame[4:14] == bytes(range(10))
    assert crc16(frame[1:]) == 0                   # CRC sent MSB first: residue 0
    assert len(encode(Command.PING)) == 6


@pytest.mark.parametrize("payload", [b"", b"\xa5", bytes(784), bytes(range(256)) * 4])
def test_roundtrip(payload):
    assert decode(encode(Command.LOAD_IMAGE, payload)) == Frame(0x02, payload)


def test_every_single_bit_flip_is_caught():
    frame = encode(Command.CLASSIFY, b"\x01\x02\x03")
    for i in range(1, len(frame)):
        for bit in range(8):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            with pytest.raises(FrameError):
                decode(bad)


@pytest.mark.parametrize("data, message", [
    (b"\xa5\x01\x00", "frame too short: 3 bytes, a frame has at least 6"),
    (b"\x00\x01\x00\x00\xff\xff", "frame starts with 0x00, not the sync byte 0xa5"),
    (encode(Command.PING, b"ab")[:-1], "length field says 2 payload bytes but the frame carries 1"),
    (encode(Command.PING)[:-1] + b"\x00", "CRC mismatch: frame says 0x"),
])
def test_malformed_frames_one_line_errors(data, message):
    with pytest.raises(FrameError, match=message.replace("(", r"\(")) as info:
        decode(data)
    assert "\n" not in str(info.value)


def test_encode_rejects_bad_commands_and_payloads():
    with pytest.raises(FrameError, match="command must be a byte, not 256"):
        encode(256)
    with pytest.raises(FrameError, match="does not fit the u16 length field"):
        encode(Command.LOAD_IMAGE, bytes(70_000))
    assert encode(0x42)[1] == 0x42                # raw bytes allowed for fault tests


def test_stream_decoder_resyncs_on_garbage():
    good = encode(Command.PING, b"xy")
    bad = bytearray(encode(Command.CLASSIFY, b"abc"))
    bad[5] ^= 0x40
    stream = b"\x00\x13garbage" + good + bytes(bad) + encode(Command.READ_CYCLES)
    dec = FrameDecoder()
    frames = []
    for i in range(0, len(stream), 3):            # in dribs and drabs
        frames += dec.feed(stream[i:i + 3])
    assert [f.command for f in frames] == [Command.PING.value, Command.READ_CYCLES.value]
    assert frames[0].payload == b"xy"
    assert dec.errors >= 1 and dec.skipped >= 9


def test_check_reply_and_naks():
    assert check_reply(Command.PING, Frame(0x81, b"abcd")) == b"abcd"
    with pytest.raises(NakError, match="device answered NAK BUSY to command CLASSIFY"):
        check_reply(Command.CLASSIFY, Frame(Command.NAK.value, bytes([Error.BUSY.value, 3])))
    with pytest.raises(NakError, match="NAK error 0x63 to command 0x42"):
        check_reply(Command.PING, Frame(Command.NAK.value, b"\x63\x42"))
    with pytest.raises(FrameError, match="reply command 0x82 does not answer PING"):
        check_reply(Command.PING, Frame(0x82))
    with pytest.raises(FrameError, match="NAK with a 1-byte payload"):
        check_reply(Command.PING, Frame(Command.NAK.value, b"\x01"))


def test_payload_helpers():
    assert image_bytes(CONFIG) == 784
    assert max_payload(CONFIG) == 1024
    assert classify_reply_bytes(CONFIG) == 61
    assert parse_ping(ping_payload(CONFIG, FLAG_MODEL | FLAG_WRITABLE | FLAG_STREAM, 16, 2,
                                   160)) == {
        "version": 4, "input_size": 28, "in_channels": 1, "classes": 10, "model_loaded": True,
        "writable": True, "trainable": False, "stream": True, "word_bytes": 16, "slots": 2,
        "max_run": 160}
    assert parse_ping(ping_payload(CONFIG))["model_loaded"] is False
    assert parse_ping(ping_payload(CONFIG, FLAG_TRAINABLE))["trainable"] is True
    with pytest.raises(FrameError, match="PING reply of 3 bytes"):
        parse_ping(bytes([4, 0, 0]))
    with pytest.raises(FrameError, match="the device speaks protocol version 2, this host 4"):
        parse_ping(bytes([2, 28, 1, 10]))
    r = ClassifyResult(7, list(range(-5, 5)), list(range(100, 110)))
    assert ClassifyResult.from_payload(r.to_payload(), 10) == r
    with pytest.raises(FrameError, match="CLASSIFY reply of 60 bytes"):
        ClassifyResult.from_payload(bytes(60), 10)
    assert request_length_ok(Command.LOAD_IMAGE, 784, CONFIG)
    assert not request_length_ok(Command.LOAD_IMAGE, 783, CONFIG)
    assert not request_length_ok(Command.PING, 1, CONFIG)
    assert request_length_ok(Command.WRITE_WEIGHTS, 3 + 16, CONFIG, word_bytes=16)
    assert request_length_ok(Command.WRITE_WEIGHTS, 3 + 49 * 16, CONFIG, word_bytes=16)
    assert not request_length_ok(Command.WRITE_WEIGHTS, 3 + 50 * 16, CONFIG, word_bytes=16)
    assert not request_length_ok(Command.WRITE_WEIGHTS, 3 + 17, CONFIG, word_bytes=16)
    assert not request_length_ok(Command.WRITE_WEIGHTS, 3, CONFIG, word_bytes=16)
    assert not request_length_ok(Command.WRITE_WEIGHTS, 19, CONFIG)      # no write port
    assert not request_length_ok(Command.NAK, 2, CONFIG)
    assert max_weight_words(CONFIG, 16) == 49
    assert request_length_ok(Command.TRAIN, 785, CONFIG)
    assert not request_length_ok(Command.TRAIN, 784, CONFIG)
    assert request_length_ok(Command.READ_WEIGHTS, 6, CONFIG)
    assert not request_length_ok(Command.READ_WEIGHTS, 5, CONFIG)
    assert MAX_READ_VALUES == 2048


def test_training_payloads():
    image = bytes(range(256)) * 3 + bytes(16)
    assert train_payload(image, 9, 10) == bytes([9]) + image
    with pytest.raises(FrameError, match="label 10 is not a class of this network"):
        train_payload(image, 10, 10)
    with pytest.raises(FrameError, match="label -1"):
        train_payload(image, -1)
    assert read_weights_payload(54080, 331) == bytes([0x40, 0xD3, 0, 0, 0x4B, 0x01])
    with pytest.raises(FrameError, match="count=0"):
        read_weights_payload(0, 0)
    with pytest.raises(FrameError, match="first=-1"):
        read_weights_payload(-1, 1)
    values = [-(1 << 31), -1, 0, 1, (1 << 31) - 1]
    assert parse_values(b"".join(v.to_bytes(4, "little", signed=True) for v in values), 5) == values
    with pytest.raises(FrameError, match="READ_WEIGHTS reply of 19 bytes"):
        parse_values(bytes(19), 5)


def test_weight_frames():
    writes = [(ModelMemory.CONV_B, a, a + 1) for a in range(5)] + \
        [(ModelMemory.DENSE_B, 0, 0xFFFF), (ModelMemory.DENSE_B, 2, 7)]
    frames = weight_frames(writes, 2, max_words=3)
    assert frames == [
        bytes([1, 0, 0, 1, 0, 2, 0, 3, 0]),              # CONV_B at 0: words 1, 2, 3
        bytes([1, 3, 0, 4, 0, 5, 0]),                    # at 3: 4, 5 (3 words a frame at most)
        bytes([4, 0, 0, 0xFF, 0xFF]),                    # DENSE_B at 0
        bytes([4 | LAST, 2, 0, 7, 0]),                   # a gap in the addresses: a new frame
    ]
    for payload in frames:
        assert request_length_ok(Command.WRITE_WEIGHTS, len(payload), CONFIG, word_bytes=2)
    with pytest.raises(FrameError, match="model word 0x10000 is wider than 2 bytes"):
        weight_frames([(ModelMemory.CONV_W, 0, 1 << 16)], 2, 3)


def test_model_upload_frames_cover_model_writes():
    """Every word of model_writes() is in exactly one frame, at its address."""
    from cnnforge.hw.accel import PRESETS, Accelerator, model_writes
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    par = PRESETS["up5k"]
    word = (Accelerator(model, par).mw_data_bits + 7) // 8
    writes = model_writes(model, par)
    frames = weight_frames(writes, word, max_weight_words(CONFIG, word))
    got = []
    for n, payload in enumerate(frames):
        assert (payload[0] & LAST != 0) == (n == len(frames) - 1)
        address = payload[1] | payload[2] << 8
        body = payload[3:]
        got += [(payload[0] & ~LAST, address + k,
                 int.from_bytes(body[k * word:(k + 1) * word], "little"))
                for k in range(len(body) // word)]
    assert got == [(m.value, a, w) for m, a, w in writes]


def test_zero_run_code_round_trips_and_refuses_bad_codes():
    rng = np.random.default_rng(5)
    for _ in range(200):
        data = (rng.integers(0, 256, 300) * (rng.random(300) < rng.random())).astype(np.uint8)
        code = zero_run_encode(data.tobytes())
        assert zero_run_decode(code, len(data)) == data.tobytes()
    # Runs are cut at the device's limit (64 by default); non-zero bytes pass as they are.
    assert zero_run_encode(bytes(65) + b"\x07") == bytes([0, 64, 0, 1, 7])
    assert zero_run_encode(bytes(300), 160) == bytes([0, 160, 0, 140])
    assert zero_run_encode(bytes(300), MAX_ZERO_RUN) == bytes([0, 255, 0, 45])
    assert zero_run_encode(b"") == b""
    assert [zero_run_limit(d) for d in (4, 5, 7, 8, 100)] == [128, 160, 224, 255, 255]
    with pytest.raises(FrameError, match="zero runs of at most 256"):
        zero_run_encode(b"", 256)
    with pytest.raises(FrameError, match="zero run of 0"):
        zero_run_decode(bytes([0, 0]))
    with pytest.raises(FrameError, match="zero run of 65 \\(1 to 64\\)"):
        zero_run_decode(bytes([0, 65]), max_run=64)
    with pytest.raises(FrameError, match="ends inside a run"):
        zero_run_decode(bytes([5, 0]))
    with pytest.raises(FrameError, match="decodes to 3 bytes, not 4"):
        zero_run_decode(bytes([0, 3]), 4)


def test_stream_payload_and_reply():
    image = bytes(700) + bytes(range(1, 85))
    coded = stream_payload(9, image, ReplyMode.CLASS)
    assert coded[:2] == bytes([9, ReplyMode.CLASS.value | ZERO_RUN])
    assert zero_run_decode(coded[2:], 784) == image
    assert stream_payload(9, image, coding="raw") == bytes([9, 0]) + image
    dense = bytes(range(1, 256)) * 3 + bytes(range(1, 20))
    assert stream_payload(1, dense) == bytes([1, 0]) + dense      # auto: raw is shorter
    assert request_length_ok(Command.CLASSIFY_IMAGE, 3, CONFIG)
    assert not request_length_ok(Command.CLASSIFY_IMAGE, 2, CONFIG)
    assert stream_reply_bytes(CONFIG, ReplyMode.ALL) == 62
    assert stream_reply_bytes(CONFIG, ReplyMode.LOGITS) == 42
    assert stream_reply_bytes(CONFIG, ReplyMode.CLASS) == 2
    full = bytes([9, 3]) + struct.pack("<10i", *range(10)) + struct.pack("<10H", *range(10))
    assert StreamResult.from_payload(full, 10, ReplyMode.ALL) == StreamResult(
        9, 3, list(range(10)), list(range(10)))
    assert StreamResult.from_payload(full[:42], 10, ReplyMode.LOGITS).probs is None
    assert StreamResult.from_payload(bytes([9, 3]), 10, ReplyMode.CLASS) == StreamResult(9, 3)
    with pytest.raises(FrameError, match="reply of 3 bytes .* mode CLASS"):
        StreamResult.from_payload(bytes(3), 10, ReplyMode.CLASS)
    with pytest.raises(FrameError, match="sequence number 256"):
        stream_payload(256, image)
    error = nak_error(Frame(Command.NAK.value, bytes([Error.BUSY.value, 0x08, 17])))
    assert (error.error, error.command, error.seq) == (Error.BUSY, 0x08, 17)
    assert "sequence number 17" in str(error)
