"""Simulation: the reference models and the machinery that checks the RTL against them.

* :mod:`cnnforge.sim.reference` — what the hardware must compute: the bit-exact integer oracle
  (``golden``), the float model and its training recipe, the quantizer, the fixed-point
  trainer and the model file. Pure numpy; imports only ``cnnforge.hw`` (the widths and the
  records the RTL is built from).
* :mod:`cnnforge.sim.verify` — how the RTL is checked: stream and port harnesses, the
  Verilator/cocotb runner, the cocotb test benches (``tb_*``), and whole-system simulations
  (accelerator, on-chip training, board cores through their UART pins). Used by the tests and
  the command line only.
"""
