"""cnnforge: a CNN accelerator generator (Amaranth HDL in, verified Verilog and bitstreams out)."""

__version__ = "0.1.0"
