"""``cnnforge import``: each fixture made by a real exporter (PyTorch's ONNX export, Keras 3)
becomes a model file whose int8 network is within 0.5 points of its float one on the 10,000
MNIST test images; broken or unsupported files give one line and write nothing.

The float reproduction of each framework's outputs and the ONNX Runtime cross-check are in
``test_import_onnx.py`` and ``test_import_keras.py``.
"""

from pathlib import Path

import numpy as np
import pytest

from cnnforge import cli
from cnnforge.sim.reference import float_network, model_file
from helpers import MNIST_DIR, needs_mnist

FIXTURES = Path(__file__).parent / "fixtures" / "import"

#: fixture -> the ``cnnforge import`` options of its input convention (its outputs.npz says it).
CASES = {
    "seed_cnn.keras": [],                       # pixels / 255 fed from outside: the default
    "seed_cnn.onnx": [],
    "lenet_bn.h5": ["--input-scale", "1"],      # raw pixels: the model rescales them itself
    "lenet_bn.keras": ["--input-scale", "1"],
    "lenet_bn.onnx": ["--input-scale", "1"],    # its Div/Sub/Div preprocessing is folded
    "lenet_bn_unfolded.onnx": ["--input-scale", "1"],
}


def test_fixture_conventions_are_the_ones_recorded():
    for name, options in CASES.items():
        convention = str(np.load(FIXTURES / f"{name}.outputs.npz")["input_convention"])
        assert convention == ("pixels" if options else "pixels/255"), name


@needs_mnist
@pytest.mark.parametrize("name", CASES)
def test_import_quantizes_within_half_a_point(tmp_path, capsys, name):
    out = tmp_path / "model.npz"
    code = cli.main(["import", str(FIXTURES / name), "--out", str(out), "--mnist-dir", MNIST_DIR,
                     "--calibration-images", "1000", *CASES[name]])
    stdout, err = capsys.readouterr()
    assert (code, err) == (0, "")
    qnet, info = model_file.load_network(out, with_info=True)
    recorded = float(np.load(FIXTURES / f"{name}.outputs.npz")["float_test_accuracy"])
    # The imported float network classifies the test set as the framework did.
    assert abs(info["test_accuracy_float"] - recorded) <= 0.0005
    assert info["test_accuracy_int8"] >= info["test_accuracy_float"] - 0.005
    assert info["source"]["file"] == name and info["calibration"]["images"] == 1000
    # What the file holds is what was measured.
    from cnnforge.evaluate import evaluate
    again = evaluate(out, MNIST_DIR)
    assert (again["float"], again["int8"]) == (info["test_accuracy_float"],
                                               info["test_accuracy_int8"])
    assert f"wrote {out}" in stdout
    # The float network is kept in the file, with its input mapping.
    params = model_file.load_float_network(out)
    assert params.network == qnet.network
    x = np.load(FIXTURES / f"{name}.outputs.npz")
    from cnnforge.mnist import load
    images, _ = load("test", MNIST_DIR)
    logits = float_network.forward(params, images[x["indices"]], dtype=np.float64)
    spread = x["logits"].max() - x["logits"].min()
    assert np.abs(logits - x["logits"]).max() <= 1e-4 * spread


def test_unknown_format_and_missing_file(tmp_path, capsys):
    out = tmp_path / "m.npz"
    (tmp_path / "model.pt").write_bytes(b"\x80\x02")
    for argv, message in [
        ([str(tmp_path / "model.pt")], f"{tmp_path / 'model.pt'}: unknown model format '.pt' "
                                       f"(cnnforge imports .h5, .hdf5, .keras, .onnx)"),
        ([str(tmp_path / "none.onnx")], f"{tmp_path / 'none.onnx'}: model file not found"),
        ([str(FIXTURES / "seed_cnn.onnx"), "--input-std", "0"],
         "--input-std must be nonzero and every input option finite"),
        ([str(FIXTURES / "seed_cnn.onnx"), "--calibration-images", "0"],
         "--calibration-images must be in 1..60000, not 0"),
    ]:
        code = cli.main(["import", *argv, "--out", str(out)])
        _, err = capsys.readouterr()
        assert (code, err) == (1, f"cnnforge import: error: {message}\n")
        assert not out.exists()


def test_truncated_file_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes((FIXTURES / "lenet_bn.onnx").read_bytes()[:5000])
    out = tmp_path / "m.npz"
    out.write_bytes(b"previous")
    code = cli.main(["import", str(bad), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"cnnforge import: error: {bad}: not a readable ONNX model (")
    assert out.read_bytes() == b"previous"        # nothing overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx", "m.npz"]


def test_same_padding_of_a_mean_subtracted_input_is_refused(tmp_path, capsys):
    """Keras' 'same' conv pads the normalized input with zeros, which is no pixel value once a
    mean is subtracted: refused with the reason, nothing written."""
    out = tmp_path / "m.npz"
    code = cli.main(["import", str(FIXTURES / "lenet_bn.keras"), "--out", str(out),
                     "--input-scale", "1", "--input-mean", "33", "--mnist-dir",
                     MNIST_DIR or str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1
    assert "its zero padding of the offset input" in err and "cannot fold it" in err
    assert not out.exists()
