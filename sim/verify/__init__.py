"""The verification machinery: harnesses, the simulator runner, test benches, system simulations.

``harness`` (stream and port harnesses around a block under test), ``rtl_runner`` (Amaranth to
Verilog to Verilator through cocotb), ``tb_*`` (cocotb test benches: load, start, wait for done),
``system`` (the accelerator on MNIST), ``train_system`` (on-chip training against the golden
trainer), ``board_system`` (board cores driven by the host library through their UART pins).
Only the tests and the command line import this package.
"""
