"""``make verilog`` (``cnnforge verilog``): every block elaborated to ``build/verilog/<block>.v``.

Blocks are built for the committed model and the UP5K parallelism with the portable
(``generic``) datapath, so the files simulate anywhere; ``BLOCKS`` names them.
"""

from pathlib import Path

from amaranth.back import verilog

from .fsutil import atomic_write_text
from .hw.params import Widths


__all__ = ["BLOCKS", "block_factories", "write_all"]


def block_factories(model, lanes=16, requant_parallel=2, dense_mults=8):
    """``{name: factory}`` for every RTL block, configured for ``model``."""
    from .hw.mac import MACArray
    from .hw.conv import ConvEngine
    from .hw.conv_window import WindowConvEngine
    from .hw.requant import Requantize
    from .hw.maxpool import MaxPool
    from .hw.dense import DenseEngine
    from .hw.softmax import Softmax
    from .hw.accel import Accelerator, Parallelism
    from .hw.train import Trainer, TrainingAccelerator
    from .hw.params import TrainFormat
    from .sim.reference.trainer import init_from_model
    config = model.config
    par = Parallelism(conv_lanes=lanes, requant_parallel=requant_parallel, dense_mults=dense_mults)
    widths = Widths(config)
    return {
        "mac_array": lambda: MACArray(lanes=lanes, taps=1, a_signed=False,
                                      acc_width=widths.conv_acc),
        "conv_engine": lambda: ConvEngine(config, lanes=lanes, conv_w=model.conv_w,
                                          conv_b=model.conv_b),
        "window_conv_engine": lambda: WindowConvEngine(config, lanes=lanes, conv_w=model.conv_w,
                                                       conv_b=model.conv_b),
        "requantize": lambda: Requantize(config, lanes=lanes, requant_mult=model.requant_mult,
                                         requant_shift=model.requant_shift,
                                         parallel=requant_parallel),
        "maxpool": lambda: MaxPool(config, lanes=lanes),
        "dense_engine": lambda: DenseEngine(config, in_lanes=lanes, mults=dense_mults,
                                            dense_w=model.dense_w, dense_b=model.dense_b),
        "softmax": lambda: Softmax(config, softmax_mult=model.softmax_mult,
                                   softmax_shift=model.softmax_shift),
        "accelerator": lambda: Accelerator(model, Parallelism(
            conv_lanes=lanes, requant_parallel=requant_parallel, dense_mults=dense_mults)),
        "trainer": lambda: Trainer(init_from_model(model, TrainFormat()), par, grad_lanes=4),
        "training_accelerator": lambda: TrainingAccelerator(
            init_from_model(model, TrainFormat(rounding="stochastic")), par, grad_lanes=4),
    }


BLOCKS = ("mac_array", "conv_engine", "window_conv_engine", "requantize", "maxpool",
          "dense_engine", "softmax", "accelerator", "trainer", "training_accelerator")


def write_all(out, model=None):
    """Write ``<out>/<block>.v`` for every block; returns the paths."""
    from .sim.reference import model_file
    model = model_file.load() if model is None else model
    out = Path(out)
    paths = []
    for name, factory in block_factories(model).items():
        path = out / f"{name}.v"
        atomic_write_text(path, verilog.convert(factory(), name=name, emit_src=False))
        paths.append(path)
    return paths
