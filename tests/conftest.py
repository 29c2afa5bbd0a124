"""Shared pytest setup: the simulator on PATH and the ``rtl`` marker for `make sim`.

The ``slow`` marker (the larger variants CI leaves out, `make test-all` runs them) is set where
each test is defined, with its reason: what still covers it in `make test`."""

import os

import pytest

import helpers
from cnnforge.sim.verify import rtl_runner

#: Test modules that import from these run RTL simulations.
RTL_MODULES = ("cnnforge.sim.verify.rtl_runner", "cnnforge.sim.verify.system")
#: ... and so do those that import these helpers.
RTL_HELPERS = (helpers.check_conv_stream, helpers.check_conv_write_port)


def runs_rtl(value):
    return (getattr(value, "__module__", None) in RTL_MODULES
            or any(value is helper for helper in RTL_HELPERS))


def pytest_configure(config):
    config.addinivalue_line("markers", "rtl: a cocotb regression of an RTL block (run by `make sim`)")
    binary = rtl_runner.verilator_bin()
    if binary is not None:
        os.environ["PATH"] = f"{binary}{os.pathsep}{os.environ['PATH']}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and any(runs_rtl(v) for v in vars(module).values()):
            item.add_marker(pytest.mark.rtl)
