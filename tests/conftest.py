"""Shared pytest setup: the simulator on PATH, the ``rtl`` marker for `make sim` and the
``slow`` marker on the larger variants CI leaves out."""

import os

import pytest

from cnnforge.sim.verify import rtl_runner

#: Test modules that import from these run RTL simulations.
RTL_MODULES = ("cnnforge.sim.verify.rtl_runner", "cnnforge.sim.verify.system")

#: Larger variants of what `make test` checks in a smaller form, marked ``slow`` so that CI
#: (`make test` on 2 cores) stays within 30 minutes; `make test-all` runs them. Beside each, what
#: still covers it in `make test`.
SLOW_VARIANTS = {
    # the training core through its UART pins: tests/test_host.py (host side, protocol),
    # test_link.py and test_board_top.py (link), test_train.py (training RTL, 12 MNIST steps)
    "tests/test_board_train.py::test_training_through_uart",
    # the iCE40 datapath from an empty SPRAM through the UART: test_accel.py's up5k datapath
    # loaded through the model port, test_board_top.py's UART test
    "tests/test_board_top.py::test_ice40_board_core_uploads_the_model",
    # window engine at 8 and 32 lanes, 5x5 kernels: 16 lanes on MNIST, the random cases
    "tests/test_conv_window.py::test_reference_lanes[8-2704]",
    "tests/test_conv_window.py::test_reference_lanes[32-784]",
    "tests/test_conv_window.py::test_k5_two_channels_lanes8",
    "tests/test_conv.py::test_reference_throughput[32]",
    # sum_levels=1 (no preset uses it) and the unpipelined 4x9 array: the sum_levels=2 cases
    "tests/test_conv_window.py::test_random_back_to_back[k3_c2_l2_s1]",
    "tests/test_dense.py::test_random_back_to_back[dense_stream_equal_s1]",
    # streaming with 2 beats per group (no preset): the 4 per group case with sum_levels=2 and
    # the extremes; stall-free requantization with parts (no preset): its write-port and exact
    # latency tests in the Amaranth simulator
    "tests/test_dense.py::test_random_back_to_back[dense_stream_gather]",
    "tests/test_requant.py::test_random_and_edges[l4_p1_s7_free]",
    "tests/test_mac.py::test_mac_random[signed3x3_s1]",
    "tests/test_mac.py::test_mac_random[conv4x9]",
    # stalls with the standard window pipeline (no preset): the tap-serial and deep ones
    "tests/test_accel.py::test_stalls_and_backpressure_at_the_edges[window-standard]",
    # a second baud divisor
    "tests/test_link.py::test_link_with_fake_accelerator[7]",
    # the blocks alone on MNIST: the whole accelerator on MNIST (test_accel.py: the up5k-like
    # 16-lane generic datapath, the ecp5-85f preset, the up5k datapath), the random cases
    "tests/test_conv_window.py::test_mnist_lanes16",
    "tests/test_conv.py::test_mnist_images_lanes16",
    "tests/test_dense.py::test_mnist_images_reference",
    "tests/test_dense.py::test_mnist_images_reference_stream",
    "tests/test_mac.py::test_mac_mnist_conv",
    "tests/test_mac.py::test_mac_mnist_dense",
    "tests/test_requant.py::test_mnist_conv_acc_to_act[16-True]",
    "tests/test_requant.py::test_mnist_conv_acc_to_act[4-False]",
    "tests/test_softmax.py::test_mnist_logits",
    # the serial softmax on 1,000 random words: its edge cases, 3 classes, the up5k datapath
    # and the board core on MNIST; the pipelined one keeps its random run
    "tests/test_softmax.py::test_random_logits[serial]",
    # the float training run twice: test_model_file.py's other checks of the committed model
    "tests/test_model_file.py::test_training_is_reproducible",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "rtl: a cocotb regression of an RTL block (run by `make sim`)")
    binary = rtl_runner.verilator_bin()
    if binary is not None:
        os.environ["PATH"] = f"{binary}{os.pathsep}{os.environ['PATH']}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in SLOW_VARIANTS:
            item.add_marker(pytest.mark.slow)
        module = getattr(item, "module", None)
        if module is not None and any(getattr(v, "__module__", None) in RTL_MODULES
                                      for v in vars(module).values()):
            item.add_marker(pytest.mark.rtl)
