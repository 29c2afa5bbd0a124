# amaranth: UnusedElaboratable=no
"""Helpers shared by the tests (as Amaranth's ``tests/utils.py``): the MNIST files and the
committed model (a test that needs them is skipped, with the reason, when they are missing),
parametrized cases, payload words, the Amaranth-simulator stream driver, the checks the two
convolution engines share, and the board-level fakes and checks."""

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from cnnforge.boards.protocol import PROTOCOL_VERSION, REPLY, Command, Error
from cnnforge.errors import ModelError
from cnnforge.hw.conv_window import bias_words, weight_words
from cnnforge.hw.params import NetworkConfig, Widths
from cnnforge.hw.util import pack_fields
from cnnforge.sim.reference import golden, model_file
from cnnforge.sim.verify.harness import PortLoader
from cnnforge.sim.verify.rtl_runner import STALL_SWEEP, run_stream_test


# -- parametrized cases ---------------------------------------------------------------------------

def case(name, *values, slow=None):
    """A ``pytest.param`` of ``name`` (also its id) and ``values``; ``slow`` (what still covers
    the case in `make test`) marks it slow."""
    marks = [pytest.mark.slow(reason=slow)] if slow else []
    return pytest.param(name, *values, id=name, marks=marks)


# -- MNIST and the committed model ----------------------------------------------------------------

#: The folder with the MNIST files (``cnnforge data --dir``), from the environment.
MNIST_DIR = os.environ.get("MNIST_DIR")
HAVE_MNIST = bool(MNIST_DIR) and Path(MNIST_DIR).is_dir()
NO_MNIST = "MNIST_DIR is not set to a folder with the MNIST files"

#: Marks a test that reads the MNIST files: skipped when ``MNIST_DIR`` does not name their folder.
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=NO_MNIST)

#: Marks slow a block's test on MNIST: in `make test` the whole accelerator on MNIST covers it.
slow_on_mnist = pytest.mark.slow(
    reason="the whole accelerator on MNIST (test_accel.py: the up5k-like 16-lane generic datapath, "
           "the ecp5-85f preset, the up5k datapath); the random cases")


def mnist_images(split, count=None):
    """The first ``count`` (default: all) images and labels of ``split`` ("train" or "test");
    skips the test when the MNIST files are missing."""
    if not HAVE_MNIST:
        pytest.skip(NO_MNIST)
    from cnnforge import mnist
    images, labels = mnist.load(split, MNIST_DIR)
    return images[:count], labels[:count]


def reference_model():
    """The committed model; skips the test when it cannot be loaded."""
    try:
        return model_file.load()
    except ModelError as e:
        pytest.skip(f"no committed model: {e}")


# -- payload words --------------------------------------------------------------------------------

def pack_rows(rows, width):
    """Rows of lane values -> one ArrayLayout word each (lane 0 in the low bits)."""
    return [pack_fields(row, width) for row in np.asarray(rows, np.int64).tolist()]


# -- the Amaranth simulator -----------------------------------------------------------------------

def simulate_stream(dut, inputs, n_out, *, gap, stall, seed, max_cycles, before=None,
                    ready_unless_backpressured=False):
    """Stream ``inputs`` into ``dut.i`` with random gaps and stalls on ``dut.o`` in the Amaranth
    simulator until ``n_out`` words came out (or ``max_cycles``); every cycle, checks the stream
    rule on ``o`` (valid and payload hold until the transfer) and, with
    ``ready_unless_backpressured``, that ``i.ready`` drops only while ``o`` is backpressured.

    ``before``: an async function of ``ctx`` run first. Returns the output words and the cycles.
    """
    rng = random.Random(seed)
    out = []
    state = {}

    async def bench(ctx):
        if before is not None:
            await before(ctx)
        idx, cycles, held = 0, 0, None
        while len(out) < n_out and cycles < max_cycles:
            if idx < len(inputs) and not ctx.get(dut.i.valid) and rng.random() >= gap:
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload.as_value(), inputs[idx])
            ctx.set(dut.o.ready, int(rng.random() >= stall))
            await ctx.delay(1e-9)
            o_valid, o_ready = ctx.get(dut.o.valid), ctx.get(dut.o.ready)
            payload = ctx.get(dut.o.payload.as_value())
            if held is not None:
                assert o_valid and payload == held, "o.valid/payload changed before the transfer"
            held = payload if o_valid and not o_ready else None
            if ready_unless_backpressured and not ctx.get(dut.i.ready):
                assert o_valid and not o_ready, "i.ready low without output backpressure"
            if o_valid and o_ready:
                out.append(payload)
            transfer = ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
            await ctx.tick()
            cycles += 1
            if transfer:
                idx += 1
                ctx.set(dut.i.valid, 0)
        state["cycles"] = cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out, state["cycles"]


# -- the convolution engines (ConvEngine, WindowConvEngine: one interface) -----------------------

def conv_model(config, conv_w, conv_b):
    """A QuantModel holding only what ``golden.conv_acc`` needs."""
    return golden.QuantModel(config=config, conv_w=conv_w, conv_b=conv_b, requant_mult=None,
                             requant_shift=1, dense_w=None, dense_b=None, softmax_mult=0,
                             softmax_shift=0)


def pixel_words(images):
    """Raster stream of input payload words (channels packed, channel 0 in the low byte)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return pack_rows(images.reshape(-1, images.shape[-1]), 8)


def output_words(acc, lanes, config):
    """Expected output beats from golden ``conv_acc`` ``(N, H', W', F)``: raster, groups inner."""
    return pack_rows(np.asarray(acc).reshape(-1, lanes), Widths(config).conv_acc)


def check_conv_stream(name, config, lanes, conv_w, conv_b, images, *, engine, latency,
                      acc=None, stalls=STALL_SWEEP, **engine_args):
    """Stream ``images`` through ``engine`` (the class; ``engine_args`` its further arguments) in
    the harness; every word against ``acc`` (default: golden ``conv_acc``). The no-stall run
    takes at most the sustained rate (``cycles_per_image`` per image), the first image's fill
    (its first K-1 rows and K pixels) and ``latency(engine)``, the cycles from the last window's
    pixel to its last word. Returns the result and the first engine built."""
    images = np.asarray(images)
    if acc is None:
        acc = golden.conv_acc(conv_model(config, conv_w, conv_b), images)
    expected = output_words(acc, lanes, config)
    built = []

    def factory():
        built.append(engine(config, lanes=lanes, conv_w=conv_w, conv_b=conv_b, **engine_args))
        return built[-1]

    result = run_stream_test(name, factory, inputs=pixel_words(images), expected=expected,
                             stalls=stalls)
    result.assert_ok()
    built_engine = built[0]
    cycles = result.runs[0].cycles
    fill = (config.kernel - 1) * config.input_size + config.kernel
    limit = len(images) * built_engine.cycles_per_image + fill + latency(built_engine)
    print(f"{name}: {len(expected)} words, no-stall run {cycles} cycles for {len(images)} "
          f"images (bound {limit}, {built_engine.cycles_per_image} per image sustained)")
    assert cycles <= limit, f"{name}: {cycles} cycles, sustained throughput allows {limit}"
    return result, built_engine


def longest_accumulation_case(random_images):
    """All-255 pixels with all -128 / all 127 weights and the bias at its bound: the longest
    accumulation (K=5, Cin=2: 50 taps), checked to reach both ends of conv_acc without wrapping;
    then an all-zero image and one of ``random_images(config, rng, 1)``. Returns the config,
    weights, biases and images."""
    config = NetworkConfig(input_size=6, in_channels=2, filters=4, kernel=5, pool=2, classes=2)
    bmax = Widths(config).conv_bias_max
    w = np.empty((4, 5, 5, 2), np.int8)
    w[0], w[1], w[2], w[3] = -128, 127, -128, 127
    b = np.array([-bmax, bmax, bmax, -bmax], np.int32)
    rng = np.random.default_rng(5)
    images = np.concatenate([np.full((2, 6, 6, 2), 255, np.uint8),
                             np.zeros((1, 6, 6, 2), np.uint8), random_images(config, rng, 1)])
    acc = golden.conv_acc(conv_model(config, w, b), images)
    width = Widths(config).conv_acc
    assert acc.min() == -2 * bmax and acc.min() >= -2 ** (width - 1)
    assert acc.max() <= 2 ** (width - 1) - 1
    return config, w, b, images


def check_conv_write_port(name, engine, random_weights, random_images, **engine_args):
    """The weight/bias write port of ``engine`` (the class; ``engine_args`` its further
    arguments) behind a :class:`PortLoader`: new weights/biases written right after image n's
    last pixel (while n still computes) leave n alone and apply from image n+1; a partial
    rewrite keeps the other words; words written before an image's first pixel apply to it.
    ``random_weights(config, rng)`` and ``random_images(config, rng, count)`` draw the models
    and images. Returns an engine built like the one tested."""
    config = NetworkConfig(input_size=8, in_channels=1, filters=4, kernel=3, pool=2, classes=2)
    lanes, bias_width = 2, Widths(config).conv_bias
    rng = np.random.default_rng(11)
    w0, b0 = random_weights(config, rng)
    w1, b1 = random_weights(config, rng)
    w2, b2 = w1.copy(), b1.copy()
    w2[0:2] = rng.integers(-128, 128, w2[0:2].shape)   # group 0 only
    b2[3] = -b2[3]                                       # one bias of group 1
    images = random_images(config, rng, 4)
    built = engine(config, lanes=lanes, conv_w=w0, conv_b=b0, **engine_args)
    chunks, per = built.bias_word_shape
    beat = PortLoader.beat

    def weight_beats(w, groups=None):
        return [beat(1, a, pack_fields(v, 8)) for a, v in enumerate(weight_words(config, lanes, w))
                if groups is None or a // config.taps in groups]

    def bias_beats(b, filters=None):
        return [beat(2, a, pack_fields(v, bias_width))
                for a, v in enumerate(bias_words(config, lanes, b))
                if filters is None or any((a // chunks) * lanes + (a % chunks) * per + k
                                          in filters for k in range(per))]

    def pixel_beats(image):
        return [beat(0, 0, v) for v in pixel_words(image[None])]

    # The harness resets between stall settings and a reset keeps the written words: every run
    # starts by writing the initial model again (before image 0's first pixel: applies to it).
    inputs = (weight_beats(w0) + bias_beats(b0) + pixel_beats(images[0])
              + weight_beats(w1) + bias_beats(b1) + pixel_beats(images[1])
              + pixel_beats(images[2])
              + weight_beats(w2, {0}) + bias_beats(b2, {3})
              + [beat(3, 0, 0)] * 3                        # kind 3: ignored
              + pixel_beats(images[3]))
    expected = []
    for image, (w, b) in zip(images, [(w0, b0), (w1, b1), (w1, b1), (w2, b2)]):
        expected += output_words(golden.conv_acc(conv_model(config, w, b), image[None]), lanes,
                                 config)
    result = run_stream_test(
        name, lambda: PortLoader(engine(config, lanes=lanes, conv_w=w0, conv_b=b0, **engine_args)),
        inputs=inputs, expected=expected)
    result.assert_ok()
    return built


# -- board level ----------------------------------------------------------------------------------

#: The network of the board-level fakes and scenarios.
BOARD_CONFIG = NetworkConfig()


def check_classification(got, model, image, where):
    """A classification reply (``cls``, ``logits``, ``probs``) against ``golden.infer_int``."""
    ref = golden.infer_int(model, np.asarray(image, np.uint8))
    assert got["cls"] == int(ref.cls[0]), f"{where}: class {got['cls']} != {ref.cls[0]}"
    assert got["logits"] == [int(x) for x in ref.logits[0]], f"{where}: logits differ"
    assert got["probs"] == [int(x) for x in ref.probs[0]], f"{where}: probabilities differ"


def check_board_scenario(out, images, fault_images, check):
    """The replies of ``tb_board:board_scenario`` (the images, then the fault cases, each
    followed by a good request); ``check(result, image, where)`` checks one classification."""
    job = out["result"]
    assert out["framing_errors"] == 0
    info = job["info"]
    assert {k: info[k] for k in ("version", "input_size", "in_channels", "classes")} == \
        {"version": PROTOCOL_VERSION, "input_size": BOARD_CONFIG.input_size,
         "in_channels": BOARD_CONFIG.in_channels, "classes": BOARD_CONFIG.classes}
    assert info["model_loaded"]
    assert len(job["images"]) == len(images)
    for n, (got, image) in enumerate(zip(job["images"], images)):
        check(got, image, f"image {n}")
        assert got["cycles"] > 0
    img_a, img_b = fault_images
    f = job["faults"]

    def nak(record, code, command):
        assert record["nak"] == [code.value, command], \
            f"expected NAK {code.name} for 0x{command:02x}, got {record}"

    nak(f["flipped_bit"]["reply"], Error.BAD_CRC, Command.LOAD_IMAGE.value)
    nak(f["flipped_bit"]["classify"], Error.NO_IMAGE, Command.CLASSIFY.value)
    check(f["flipped_bit"]["after"], img_a, "after flipped bit")
    for name in ("short_load", "long_load"):
        nak(f[name]["reply"], Error.BAD_LENGTH, Command.LOAD_IMAGE.value)
        nak(f[name]["classify"], Error.NO_IMAGE, Command.CLASSIFY.value)
        check(f[name]["after"], img_a, f"after {name}")
    assert f["flipped_length"]["reply"]["nak"] is not None
    nak(f["truncated"]["reply"], Error.TIMEOUT, Command.LOAD_IMAGE.value)
    assert f["garbage"]["reply"]["nak"] is None
    assert f["garbage"]["reply"]["command"] == Command.PING.value | 0x80
    nak(f["unknown_command"]["reply"], Error.UNKNOWN_COMMAND, 0x42)
    nak(f["bad_length"]["reply"], Error.BAD_LENGTH, Command.PING.value)
    nak(f["oversized_length"]["reply"], Error.BAD_LENGTH, Command.PING.value)
    nak(f["read_weights"]["reply"], Error.UNSUPPORTED, Command.READ_WEIGHTS.value)
    nak(f["train"]["reply"], Error.UNSUPPORTED, Command.TRAIN.value)
    assert not info["trainable"]
    pinged = ["flipped_length", "truncated", "garbage", "unknown_command", "bad_length",
              "oversized_length", "read_weights", "train"]
    if not info["writable"]:
        assert info["word_bytes"] == 0
        nak(f["write_weights"]["reply"], Error.UNSUPPORTED, Command.WRITE_WEIGHTS.value)
        pinged.append("write_weights")
    elif "weights_bad_crc" in f:
        nak(f["weights_bad_crc"]["reply"], Error.BAD_CRC, Command.WRITE_WEIGHTS.value)
        nak(f["weights_bad_crc"]["classify"], Error.NO_IMAGE, Command.CLASSIFY.value)
        check(f["weights_bad_crc"]["after"], img_a, "after a weight frame with a bad CRC")
        nak(f["weights_bad_memory"]["reply"], Error.BAD_MEMORY, Command.WRITE_WEIGHTS.value)
        nak(f["weights_bad_length"]["reply"], Error.BAD_LENGTH, Command.WRITE_WEIGHTS.value)
        pinged += ["weights_bad_memory", "weights_bad_length"]
        busy = f["weights_busy"]
        assert busy["naks"] == [[Error.BUSY.value, Command.WRITE_WEIGHTS.value]], busy["naks"]
        assert len(busy["results"]) == 1
        check(busy["results"][0], img_a, "classify during a WRITE_WEIGHTS")
        check(busy["after"], img_a, "model and image unchanged by a BUSY WRITE_WEIGHTS")
    for name in pinged:
        assert f[name]["after"] == info, name
    nak(f["busy_ping"]["first"], Error.BUSY, Command.PING.value)
    check(f["busy_ping"]["second"], img_a, "classify answered after a BUSY")
    assert f["busy_ping"]["cycles"] > 0
    assert f["busy_load"]["naks"] == [[Error.BUSY.value, Command.LOAD_IMAGE.value]]
    assert len(f["busy_load"]["results"]) == 1
    check(f["busy_load"]["results"][0], img_a, "classify during a LOAD_IMAGE")
    check(f["busy_load"]["after"], img_a, "image unchanged by a BUSY LOAD_IMAGE")
    answers = [p["nak"] or p["command"] for p in f["pipelined_pings"]]
    assert answers == [Command.PING.value | REPLY] * 8, answers
    assert f["pipelined_after"] == info
    assert f["pipelined_load"]["first"] == Command.LOAD_IMAGE.value | REPLY
    check(f["pipelined_load"]["second"], img_b, "a CLASSIFY sent with its LOAD_IMAGE")
    check(f["final"]["after"], img_b, "final")


def flat_state(state):
    """The dump stream of a training ``state`` (:func:`cnnforge.hw.train.dump_order`) as i32
    values."""
    lfsr = int(state.lfsr.state)
    return np.concatenate([state.dense_m.ravel(), state.dense_b, state.conv_m.ravel(),
                           state.conv_b, [lfsr - (1 << 32) if lfsr >> 31 else lfsr]])


def other_model(model, path):
    """``model`` with negated conv weights and reversed dense biases, saved to ``path``."""
    other = dataclasses.replace(
        model,
        conv_w=(-model.conv_w.astype(np.int16)).clip(-128, 127).astype(np.int8),
        dense_b=(model.dense_b[::-1]).astype(model.dense_b.dtype))
    model_file.save(other, path)
    return model_file.load(path)


def check_upload(out):
    """A partial upload's record (``board_scenario``): the model is unloaded from its first frame
    until its last."""
    up = out["result"]["upload"]
    assert up["no_model"]["nak"] == [Error.NO_MODEL.value, Command.CLASSIFY.value]
    assert not up["loaded_during"] and up["loaded_after"]
