"""Import of trained models (ONNX, Keras) into cnnforge model files, with post-training
quantization: ``cnnforge import MODEL --out model.npz``.

Readers (``onnx_reader``, ``keras_reader``) walk a model's graph and hand each op to
:class:`~.builder.NetworkBuilder`, which folds BatchNorm and preprocessing, fixes layouts and
checks what cnnforge can build; :func:`~.quantize_import.import_model` then calibrates and
quantizes the float network and writes the model file.
"""
