"""Shared pytest setup: the simulator on PATH and the ``rtl`` marker for `make sim`."""

import os

import pytest

from cnnforge.sim import rtl_runner

#: Test modules that import from these run RTL simulations.
RTL_MODULES = ("cnnforge.sim.rtl_runner", "cnnforge.sim.system")


def pytest_configure(config):
    config.addinivalue_line("markers", "rtl: a cocotb regression of an RTL block (run by `make sim`)")
    binary = rtl_runner.verilator_bin()
    if binary is not None:
        os.environ["PATH"] = f"{binary}{os.pathsep}{os.environ['PATH']}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and any(getattr(v, "__module__", None) in RTL_MODULES
                                      for v in vars(module).values()):
            item.add_marker(pytest.mark.rtl)
