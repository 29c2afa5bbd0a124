"""On-chip training through the board protocol: the training board core (UART link +
:class:`~cnnforge.hw.train.TrainingAccelerator`) in RTL simulation, against the golden trainer.

``TRAIN`` steps from the random init: every reply (the forward pass before the update) against
``golden.infer_int`` of the golden trainer's state before the step; ``READ_WEIGHTS`` of value
ranges across the dense masters, the biases, the conv masters and the LFSR state against the
golden state; a ``CLASSIFY`` with the trained weights; then the training fault cases (label out of
range, bad length, bad CRC, READ_WEIGHTS ranges outside the dump, a PING during a step), after
which the state is still exactly the golden trainer's. Also the host's ``train-board --sim``.
"""

import numpy as np
import pytest

from cnnforge.sim.verify.board_system import SIM_BAUD, SIM_CLK_FREQ, run_sim_job
from cnnforge.boards.protocol import MAX_READ_VALUES
from helpers import check_classification, flat_state, mnist_images, needs_mnist

STEPS = 3
DUMP_WORDS = 54411
# (first, count): a run of dense masters, then the longest reply (MAX_READ_VALUES) ending with
# the LFSR state (every section of the dump); after the fault cases a shorter one.
RANGES = [(5000, 150), (DUMP_WORDS - MAX_READ_VALUES, MAX_READ_VALUES)]
RANGES_AFTER = [(5000, 150), (53984, 427)]


def check_values(got, state, where, ranges=RANGES):
    flat = flat_state(state)
    assert len(flat) == DUMP_WORDS and len(got) == len(ranges)
    for (first, count), values in zip(ranges, got):
        exp = flat[first:first + count]
        bad = np.flatnonzero(np.asarray(values) != exp)
        assert len(values) == count and not len(bad), \
            f"{where}: value {first + bad[0]} is {values[bad[0]]}, golden {exp[bad[0]]}"


@needs_mnist
@pytest.mark.slow(reason="the training core through its UART pins: test_host.py (host side, "
                         "protocol), test_link.py and test_board_top.py (link), test_train.py "
                         "(training RTL, 12 MNIST steps)")
def test_training_through_uart():
    from cnnforge.boards.protocol import Command, Error
    from cnnforge.boards.top import sim_core
    from cnnforge.sim.reference.trainer import initial_state, train_step

    images, labels = mnist_images("train", STEPS)
    labels = [int(y) for y in labels]
    test_x, _ = mnist_images("test", 1)
    state = initial_state("random")
    link = sim_core(state.model(), "up5k", clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD,
                    train_init="random")
    out = run_sim_job("board_train_up5k", link, "cnnforge.sim.verify.tb_board:board_train_scenario",
                      {"images": [im.tolist() for im in images], "labels": labels,
                       "check_image": test_x[0].tolist(), "ranges": RANGES,
                       "ranges_after": RANGES_AFTER},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    assert out["framing_errors"] == 0
    job = out["result"]
    assert job["info"]["trainable"] and job["info"]["model_loaded"]

    def nak(record, code, command):
        assert record["nak"] == [code.value, command.value], \
            f"expected NAK {code.name} for {command.name}, got {record}"

    golden = state.copy()
    for n, (step, image, label) in enumerate(zip(job["steps"], images, labels)):
        check_classification(step["result"], golden.model(), image, f"training step {n}")
        train_step(golden, image, label)
        assert step["cycles"] > 0
    check_values(job["values"], golden, f"after {STEPS} steps")
    check_classification(job["loaded"], golden.model(), images[-1], "the last training image again")
    check_classification(job["after"], golden.model(), test_x[0], "classification after training")

    f = job["faults"]
    nak(f["bad_label"]["reply"], Error.BAD_ARGUMENT, Command.TRAIN)
    nak(f["train_bad_length"]["reply"], Error.BAD_LENGTH, Command.TRAIN)
    nak(f["train_bad_crc"]["reply"], Error.BAD_CRC, Command.TRAIN)
    nak(f["train_bad_crc"]["classify"], Error.NO_IMAGE, Command.CLASSIFY)
    for name in ("read_count_0", "read_past_end", "read_too_many"):
        nak(f[name]["reply"], Error.BAD_ARGUMENT, Command.READ_WEIGHTS)
    nak(f["read_bad_length"]["reply"], Error.BAD_LENGTH, Command.READ_WEIGHTS)
    for name in ("bad_label", "train_bad_length", "train_bad_crc", "read_count_0",
                 "read_past_end", "read_too_many", "read_bad_length"):
        assert f[name]["after"]["trainable"], name
    busy = f["busy_train"]
    assert busy["naks"] == [[Error.BUSY.value, Command.PING.value]]
    assert busy["commands"][0] == Command.NAK.value       # the PING is answered first
    assert len(busy["results"]) == 1
    check_classification(busy["results"][0], golden.model(), images[0], "step during a PING")
    train_step(golden, images[0], labels[0])
    # None of the faulty frames trained or changed anything: exactly one more step.
    check_values(job["values_after"], golden, "after the fault cases", RANGES_AFTER)
    check_classification(job["final"], golden.model(), test_x[0], "final classification")
    cycles = [s["cycles"] for s in job["steps"]]
    print(f"cycles per training step through the link: {cycles}; simulated "
          f"{out['sim_time_ns'] / 1e6:.1f} ms")
