"""The command line reports bad input in one line with a non-zero exit."""

import gzip

import pytest

from cnnforge import cli
from helpers import needs_mnist


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_with_empty_mnist_dir(tmp_path, capsys):
    code, out, err = run(capsys, "--mnist-dir", str(tmp_path), "eval", "-q")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("cnnforge eval: error: ") and "missing MNIST file" in err


def test_eval_with_corrupt_idx_file(tmp_path, capsys):
    # A test-image file whose header promises more images than it holds.
    header = (0x803).to_bytes(4, "big") + (10000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(784 * 3))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((0x801).to_bytes(4, "big") + (10000).to_bytes(4, "big") + bytes(10000))
    code, out, err = run(capsys, "eval", "--mnist-dir", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert "t10k-images-idx3-ubyte.gz: truncated" in err


def test_eval_with_bad_model_file(tmp_path, capsys):
    (tmp_path / "m.npz").write_bytes(b"junk")
    code, out, err = run(capsys, "eval", "--model", str(tmp_path / "m.npz"))
    assert code == 1 and "corrupt model file" in err and err.count("\n") == 1


def test_report_without_records(tmp_path, capsys):
    code, out, err = run(capsys, "report", "--records", str(tmp_path / "none.jsonl"))
    assert code == 1 and "no simulation records" in err


@pytest.mark.parametrize("argv, message", [
    (["train-board"], "give --port (the board's serial port) or --sim"),
    (["train-board", "--sim", "--board", "de10"], "unknown board 'de10'; boards: icebreaker"),
    (["train-board", "--sim", "--steps", "-1"], "--steps must be at least 0, not -1"),
])
def test_train_board_bad_arguments(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("cnnforge train-board: error: ") and message in err


@needs_mnist
def test_train_board_missing_port(tmp_path, capsys):
    code, out, err = run(capsys, "train-board", "--port", str(tmp_path / "ttyNONE"),
                         "--steps", "1", "--eval", "0")
    assert code == 1 and err.count("\n") == 1
    assert "ttyNONE" in err


@pytest.mark.parametrize("board, device", [("icebreaker", "iCE40UP5K"),
                                           ("orangecrab", "LFE5U-25F")])
def test_training_bitstream_for_a_board_too_small(capsys, board, device):
    code, out, err = run(capsys, "bitstream", "--board", board, "--train", "random")
    assert code == 1 and err.count("\n") == 1
    assert f"on-chip training does not fit the {device}" in err and "ulx3s" in err


@pytest.mark.parametrize("argv, message", [
    (["train-fixed", "--set", "lr_shift"], "--set takes FIELD=INT, not 'lr_shift'"),
    (["train-fixed", "--set", "lr_shift=x"], "--set takes FIELD=INT, not 'lr_shift=x'"),
    (["train-fixed", "--set", "nosuch=3"], "train format: unknown field 'nosuch'"),
    (["train-fixed", "--set", "master_frac=12"], "master_bits - master_frac must be at least 8"),
    (["train-sim", "--preset", "nope"], "unknown preset 'nope' (one of up5k, ecp5-25f, "
                                        "ecp5-85f, gw2a-18, gw1n-9)"),
    (["train-sim", "--steps", "0"], "--steps must be in 1..60000"),
])
def test_training_commands_bad_arguments(capsys, argv, message):
    """The golden trainer's and the training RTL's options are refused before any data is read."""
    code, out, err = run(capsys, "--mnist-dir", "/nonexistent", *argv)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"cnnforge {argv[0]}: error: ") and message in err
