"""The float training recipe (Keras MNIST CNN): Adam on cross-entropy with early stopping.

Batch 128, Adam lr 1e-3, the caller's validation split for early stopping (patience 2, best
weights restored), at most ``EPOCHS`` epochs, everything seeded from ``SEED``. Same seed and
same machine -> same parameters, bit for bit.
"""

import numpy as np
from tqdm import tqdm

from ...hw.params import Network
from . import float_model, float_network


__all__ = ["SEED", "EPOCHS", "BATCH", "LR", "PATIENCE", "train_float"]

SEED = 1
EPOCHS = 15
BATCH = 128
LR = 1e-3
PATIENCE = 2


class _Seed:
    """The float model of the seed network (``float_model``: its recipe's exact arithmetic)."""
    def __init__(self, config):
        self.config = config

    def init(self, rng):
        return float_model.init_params(self.config, rng)

    def forward(self, params, images):
        return float_model.forward(params, self.config, images)

    def loss_and_grads(self, params, images, labels):
        return float_model.loss_and_grads(params, self.config, images, labels)

    def predict(self, params, images):
        return float_model.predict(params, self.config, images)

    def copy(self, params):
        return float_model.FloatParams(*(a.copy() for a in params.arrays()))


class _Layers:
    """The float model of any layer list (``float_network``)."""
    def __init__(self, network):
        self.network = network

    def init(self, rng):
        return float_network.init_network(self.network, rng)

    def forward(self, params, images):
        return float_network.forward(params, images)

    def loss_and_grads(self, params, images, labels):
        return float_network.loss_and_grads(params, images, labels)

    def predict(self, params, images):
        return float_network.predict(params, images)

    def copy(self, params):
        return params.copy()


def _val_loss(model, params, images, labels):
    losses = []
    for i in range(0, len(images), 2000):
        logits = model.forward(params, images[i:i + 2000]).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.append(-logp[np.arange(len(logp)), labels[i:i + 2000]])
    return float(np.concatenate(losses).mean())


def shifted(images, shift, rng):
    """Each image moved by a random whole number of pixels in ``-shift..shift`` down and right,
    the border filled with pixel 0 (data augmentation: the batch's copy)."""
    n, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)) + ((0, 0),) *
                    (images.ndim - 3))
    dy, dx = rng.integers(0, 2 * shift + 1, (2, n))
    return np.stack([padded[i, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))])


def train_float(config, images, labels, val_images, val_labels, *, seed=SEED, epochs=EPOCHS,
                batch=BATCH, lr=LR, patience=PATIENCE, shift=0, progress=True, log=print):
    """Adam on cross-entropy with early stopping; returns the best params and the history.

    ``config`` is a :class:`~cnnforge.hw.params.NetworkConfig` (the seed network: ``FloatParams``)
    or any :class:`~cnnforge.hw.params.Network` (a ``FloatNetwork``). ``shift`` > 0 trains on
    copies of each batch moved by up to ``shift`` pixels (:func:`shifted`)."""
    model = _Layers(config) if isinstance(config, Network) else _Seed(config)
    rng = np.random.default_rng(seed)
    params = model.init(rng)
    opt = float_model.Adam(params, lr=lr)
    best, best_loss, since_best, history = None, np.inf, 0, []
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        bar = tqdm(range(0, len(images), batch), desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False, unit="batch")
        for i in bar:
            idx = order[i:i + batch]
            x = shifted(images[idx], shift, rng) if shift else images[idx]
            loss, grads = model.loss_and_grads(params, x, labels[idx])
            opt.step(params, grads)
        val_loss = _val_loss(model, params, val_images, val_labels)
        val_acc = float(np.mean(model.predict(params, val_images) == val_labels))
        history.append({"epoch": epoch + 1, "val_loss": round(val_loss, 6),
                        "val_acc": round(val_acc, 6)})
        log(f"epoch {epoch + 1}: val loss {val_loss:.4f}, val accuracy {100 * val_acc:.2f} %")
        if val_loss < best_loss:
            best_loss, since_best = val_loss, 0
            best = model.copy(params)
        else:
            since_best += 1
            if since_best >= patience:
                break
    return best, history
