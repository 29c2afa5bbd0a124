"""Accuracy of the float and integer networks on the MNIST test set."""

import numpy as np

from . import mnist
from .sim.reference import float_model, model_file
from .sim.reference.golden import predict_int


__all__ = ["evaluate", "eval_cli"]


def evaluate(model_path=None, mnist_dir=None, limit=None):
    """``{"float": acc, "int8": acc, "images": n}`` on the first ``limit`` test images."""
    model = model_file.load(model_path)
    params = model_file.load_float(model_path)
    images, labels = mnist.load("test", mnist_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return {
        "float": float(np.mean(float_model.predict(params, model.config, images) == labels)),
        "int8": float(np.mean(predict_int(model, images) == labels)),
        "images": len(images),
    }


def eval_cli(mnist_dir=None, model_path=None, limit=None, progress=True):
    result = evaluate(model_path, mnist_dir, limit)
    print(f"test images     {result['images']}")
    print(f"float accuracy  {100 * result['float']:.2f} %")
    print(f"int8 accuracy   {100 * result['int8']:.2f} %")
    return result
