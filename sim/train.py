"""Training recipe: float Adam training, then quantization to the committed model file.

The recipe (Keras MNIST CNN): batch 128, Adam lr 1e-3, cross-entropy, the last 10 % of the
60k training images held out for validation and early stopping (patience 2, best weights
restored), at most ``EPOCHS`` epochs, everything seeded from ``SEED``. Same seed and same
machine -> same model file, byte for byte.
"""

import hashlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..hw.params import NetworkConfig
from .. import mnist
from . import float_model, model as model_file, quantize as quant
from .golden import predict_int


__all__ = ["SEED", "EPOCHS", "BATCH", "LR", "train_float", "train_and_save", "file_sha256"]

SEED = 1
EPOCHS = 15
BATCH = 128
LR = 1e-3
VALIDATION = 6000
PATIENCE = 2


def _val_loss(params, config, images, labels):
    losses = []
    for i in range(0, len(images), 2000):
        logits = float_model.forward(params, config, images[i:i + 2000]).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(len(logp)), labels[i:i + 2000]])
    return float(np.concatenate(losses).mean())


def train_float(config, images, labels, val_images, val_labels, *, seed=SEED, epochs=EPOCHS,
                batch=BATCH, lr=LR, patience=PATIENCE, progress=True, log=print):
    """Adam on cross-entropy with early stopping; returns the best params and the history."""
    rng = np.random.default_rng(seed)
    params = float_model.init_params(config, rng)
    opt = float_model.Adam(params, lr=lr)
    best, best_loss, since_best, history = None, np.inf, 0, []
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        bar = tqdm(range(0, len(images), batch), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False, unit="batch")
        for i in bar:
            idx = order[i:i + batch]
            loss, grads = float_model.loss_and_grads(params, config, images[idx], labels[idx])
            opt.step(params, grads)
        val_loss = _val_loss(params, config, val_images, val_labels)
        val_acc = float(np.mean(float_model.predict(params, config, val_images) == val_labels))
        history.append({"epoch": epoch + 1, "val_loss": round(val_loss, 6),
                        "val_acc": round(val_acc, 6)})
        log(f"epoch {epoch + 1}: val loss {val_loss:.4f}, val accuracy {100 * val_acc:.2f} %")
        if val_loss < best_loss:
            best_loss, since_best = val_loss, 0
            best = float_model.FloatParams(*(a.copy() for a in params.arrays()))
        else:
            since_best += 1
            if since_best >= patience:
                break
    return best, history


def file_sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_and_save(mnist_dir=None, out=None, epochs=None, seed=None, progress=True,
                   config=NetworkConfig(), limit=None, log=print):
    """The whole recipe: train, calibrate, quantize, evaluate on the test set, save.

    ``limit`` trains on the first ``limit`` training images only (for tests).
    """
    seed = SEED if seed is None else seed
    epochs = EPOCHS if epochs is None else epochs
    out = model_file.DEFAULT_PATH if out is None else Path(out)
    train_x, train_y = mnist.load("train", mnist_dir)
    test_x, test_y = mnist.load("test", mnist_dir)
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    n_val = len(train_x) // 10
    fit_x, fit_y = train_x[:-n_val], train_y[:-n_val]
    val_x, val_y = train_x[-n_val:], train_y[-n_val:]

    params, history = train_float(config, fit_x, fit_y, val_x, val_y, seed=seed, epochs=epochs,
                                  progress=progress, log=log)
    act_scale, qmodel, val_int_acc, pct = quant.calibrate(params, config, val_x, val_y)
    float_acc = float(np.mean(float_model.predict(params, config, test_x) == test_y))
    int_acc = float(np.mean(predict_int(qmodel, test_x) == test_y))
    info = {
        "recipe": {"seed": seed, "max_epochs": epochs, "batch": BATCH, "lr": LR,
                   "optimizer": "adam", "validation": n_val, "patience": PATIENCE,
                   "train_images": len(fit_x), "activation_percentile": pct},
        "history": history,
        "act_scale": act_scale,
        "test_accuracy_float": round(float_acc, 6),
        "test_accuracy_int8": round(int_acc, 6),
        "test_images": len(test_x),
    }
    model_file.save(qmodel, out, info=info, float_params=params)
    log(f"float accuracy {100 * float_acc:.2f} %, int8 accuracy {100 * int_acc:.2f} % "
        f"on {len(test_x)} test images")
    log(f"wrote {out} (sha256 {file_sha256(out)})")
    return qmodel, info
