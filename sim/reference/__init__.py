"""The reference models: what every RTL block must compute, bit for bit.

``golden`` (the integer oracle), ``float_model`` and ``float_train`` (the float network and its
training recipe), ``quantize`` (post-training quantization), ``trainer`` (the fixed-point SGD
trainer, the on-chip trainer's oracle) and ``model_file`` (the committed model's file format).
They import nothing of ``cnnforge`` but ``cnnforge.hw``'s parameters and records, the errors
and the atomic file writes.
"""
