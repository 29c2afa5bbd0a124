"""Streamed classification (``CLASSIFY_IMAGE``) through the board core's UART pins.

The real board core (``up5k`` preset, portable datapath) in RTL simulation, driven by
``Client.classify_many``: MNIST test images in every reply mode (everything, class and logits,
class only) and coding (auto, raw, zero-run), each result compared with the golden model; the
fault cases (more images in flight than slots, bad zero-run codes, wrong decoded lengths, bad
modes, a flipped bit, streamed and one-at-a-time commands mixed), each followed by a good image.
"""

import numpy as np

from cnnforge.boards.protocol import Command, Error, ReplyMode
from cnnforge.sim.verify.board_system import SIM_BAUD, SIM_CLK_FREQ, run_sim_job
from helpers import check_classification, mnist_images, needs_mnist

STREAM = Command.CLASSIFY_IMAGE.value


def check_stream_result(got, model, image, mode, where):
    """A ``StreamResult`` (as a dict) against the golden model, for the fields ``mode`` has."""
    from cnnforge.sim.reference import golden
    ref = golden.infer_int(model, np.asarray(image, np.uint8))
    assert got["cls"] == int(ref.cls[0]), f"{where}: class {got['cls']} != {ref.cls[0]}"
    if mode == ReplyMode.CLASS:
        assert got["logits"] is None and got["probs"] is None
    else:
        assert got["logits"] == [int(x) for x in ref.logits[0]], f"{where}: logits differ"
        if mode == ReplyMode.ALL:
            assert got["probs"] == [int(x) for x in ref.probs[0]], f"{where}: probs differ"
        else:
            assert got["probs"] is None


@needs_mnist
def test_streamed_classification_through_the_pins():
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference import model_file
    model = model_file.load()
    images, _ = mnist_images("test", 12)
    images, (img_a, img_b) = images[:10], images[10:]
    link = sim_core(model, "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD)
    out = run_sim_job("stream_up5k", link, "cnnforge.sim.verify.tb_board:stream_scenario",
                      {"images": [im.tolist() for im in images],
                       "fault_images": [img_a.tolist(), img_b.tolist()]},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    assert out["framing_errors"] == 0
    job = out["result"]
    assert job["info"]["stream"] and job["info"]["slots"] == 2
    modes = {"all_auto": ReplyMode.ALL, "logits_raw": ReplyMode.LOGITS,
             "class_zero_run": ReplyMode.CLASS}
    for name, mode in modes.items():
        results = job["modes"][name]["results"]
        assert [r["seq"] for r in results] == list(range(len(images)))
        for n, (got, image) in enumerate(zip(results, images)):
            check_stream_result(got, model, image, mode, f"{name}, image {n}")
    # The next image arrives while one is computed: raw images (792-byte frames, 31,680
    # cycles on the line) and their computation (cycles) overlap, so the stream takes well
    # under the time of one after the other, and never less than the computation alone.
    cycles = job["legacy"]["cycles"]
    line = (784 + 8) * 10 * (SIM_CLK_FREQ // SIM_BAUD)
    raw = job["modes"]["logits_raw"]["seconds"] * SIM_CLK_FREQ
    assert len(images) * cycles < raw < 0.75 * len(images) * (line + cycles)

    faults = job["faults"]
    for name, record in faults.items():
        check_stream_result(record["after"], model, img_a, ReplyMode.ALL, f"after {name}")
    first, r20, r21 = faults["over_window"]["replies"]
    assert first == {"nak": [Error.BUSY.value, STREAM, 22]}
    check_stream_result(r20, model, img_a, ReplyMode.ALL, "over_window 20")
    check_stream_result(r21, model, img_b, ReplyMode.ALL, "over_window 21")
    assert (r20["seq"], r21["seq"]) == (20, 21)
    for name, code, seq in (("run_of_0", Error.BAD_ARGUMENT, 30),
                            ("run_over_limit", Error.BAD_ARGUMENT, 30),
                            ("short_code", Error.BAD_LENGTH, 30),
                            ("long_code", Error.BAD_LENGTH, 30),
                            ("dangling_zero", Error.BAD_LENGTH, 30),
                            ("short_raw", Error.BAD_LENGTH, 30),
                            ("reply_mode_3", Error.BAD_ARGUMENT, 31),
                            ("unknown_mode_bit", Error.BAD_ARGUMENT, 31),
                            ("flipped_bit", Error.BAD_CRC, 32)):
        assert faults[name]["replies"] == [{"nak": [code.value, STREAM, seq]}], name
    assert job["info"]["max_run"] == 32 * (SIM_CLK_FREQ // SIM_BAUD)
    runs = faults["longest_runs"]
    check_stream_result(runs["replies"][0], model, np.array(runs["image"], np.uint8),
                        ReplyMode.ALL, "longest_runs")
    nak, result = faults["load_during_stream"]["replies"]
    assert nak == {"nak": [Error.BUSY.value, Command.LOAD_IMAGE.value]}
    check_stream_result(result, model, img_b, ReplyMode.ALL, "load_during_stream")
    during = faults["stream_during_classify"]
    assert during["first"] == [Error.BUSY.value, STREAM, 34]
    assert during["second"] == Command.CLASSIFY.value | 0x80
    check_classification(job["legacy"], model, img_b, "legacy classify after streaming")
