"""Accuracy of a model file's float and integer networks on its data set's test images."""

import numpy as np

from . import datasets
from .sim.reference import float_network, model_file
from .sim.reference.golden import predict_int


__all__ = ["evaluate", "eval_cli", "dataset_of"]


def dataset_of(qnet, info):
    """The data set a model file was trained or imported for (``info["dataset"]``, else the one
    its input shape fits)."""
    return info.get("dataset") or datasets.for_input(qnet.network.input)


def evaluate(model_path=None, mnist_dir=None, limit=None):
    """``{"float": acc, "int8": acc, "images": n, "dataset": name}`` on the first ``limit`` test
    images."""
    qnet, info = model_file.load_network(model_path, with_info=True)
    params = model_file.load_float_network(model_path)
    data = dataset_of(qnet, info)
    images, labels = datasets.load(data, "test", mnist_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return {
        "float": float(np.mean(float_network.predict(params, images) == labels)),
        "int8": float(np.mean(predict_int(qnet, images) == labels)),
        "images": len(images),
        "dataset": data,
    }


def eval_cli(mnist_dir=None, model_path=None, limit=None, progress=True):
    result = evaluate(model_path, mnist_dir, limit)
    print(f"test images     {result['images']} ({result['dataset']})")
    print(f"float accuracy  {100 * result['float']:.2f} %")
    print(f"int8 accuracy   {100 * result['int8']:.2f} %")
    return result
