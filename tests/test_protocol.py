"""The frame format shared by host and gateware: CRC, encoder, decoders, reply parsing."""

import struct

import pytest

from cnnforge.boards.protocol import (SYNC, ClassifyResult, Command, Error, Frame, FrameDecoder,
                                      FrameError, NakError, check_reply, classify_reply_bytes,
                                      crc16, decode, encode, image_bytes, max_payload,
                                      parse_ping, ping_payload, request_length_ok)
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
    assert parse_ping(ping_payload(CONFIG)) == {"version": 1, "input_size": 28,
                                                "in_channels": 1, "classes": 10}
    with pytest.raises(FrameError, match="PING reply of 3 bytes"):
        parse_ping(b"abc")
    r = ClassifyResult(7, list(range(-5, 5)), list(range(100, 110)))
    assert ClassifyResult.from_payload(r.to_payload(), 10) == r
    with pytest.raises(FrameError, match="CLASSIFY reply of 60 bytes"):
        ClassifyResult.from_payload(bytes(60), 10)
    assert request_length_ok(Command.LOAD_IMAGE, 784, CONFIG)
    assert not request_length_ok(Command.LOAD_IMAGE, 783, CONFIG)
    assert not request_length_ok(Command.PING, 1, CONFIG)
    assert request_length_ok(Command.WRITE_WEIGHTS, 5, CONFIG)
    assert not request_length_ok(Command.NAK, 2, CONFIG)
