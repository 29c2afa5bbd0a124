"""``cnnforge describe`` and ``cnnforge predict``: what a model file holds, layer by layer, and
its float and int8 outputs on test images or image files."""

import numpy as np

from .errors import CnnforgeError
from .fsutil import atomic_open
from .hw.params import Conv2D, Dense, MaxPool
from .sim.reference import float_network, model_file
from .sim.reference.golden import infer_int


__all__ = ["describe_rows", "describe", "predict"]


def _layer_text(layer):
    if isinstance(layer, Conv2D):
        pad = layer.padding if isinstance(layer.padding, str) else \
            "pads " + ",".join(map(str, layer.padding))
        return f"conv2d {layer.filters}x{layer.kernel}x{layer.kernel}/{layer.stride} {pad} relu"
    if isinstance(layer, MaxPool):
        return f"maxpool {layer.size}x{layer.size}/{layer.stride}"
    if isinstance(layer, Dense):
        return f"dense {layer.units}" + (" relu" if layer.relu else "")
    return layer.kind


def describe_rows(qnet, info=None):
    """One dict per layer: index, layer, output shape, MACs, weights, tensor bits and the
    requantization and activation scale of each ReLU layer."""
    net = qnet.network
    info = info or {}
    scales = info.get("act_scales") or info.get("calibration", {}).get("act_scales", {})
    if "act_scale" in info:                  # the seed recipe: one scale, after the conv
        scales = {"0": info["act_scale"]}
    rows = []
    for index, layer in enumerate(net.layers):
        row = {"index": index, "layer": _layer_text(layer),
               "output": "x".join(map(str, net.output_shape(index))),
               "macs": net.macs(index), "weights": 0, "bits": "uint8 out"}
        p = qnet.layers[index]
        if p is not None:
            w = net.layer_widths(index)
            row["weights"] = int(p.w.size + p.b.size)
            if p.mult is None:
                row["bits"] = f"w int8, b int{w.bias}, logits int{w.acc}"
            else:
                row["bits"] = f"w int8, b int{w.bias}, acc int{w.acc}, uint8 out"
                row["requant"] = f"x{int(p.mult.min())}..{int(p.mult.max())} >> {p.shift}"
            if str(index) in scales:
                row["act_scale"] = f"{scales[str(index)]:.4g}"
        rows.append(row)
    return rows


def describe(path, log=print):
    qnet, info = model_file.load_network(path, with_info=True)
    net = qnet.network
    rows = describe_rows(qnet, info)
    cols = [("#", "index"), ("layer", "layer"), ("output", "output"), ("MACs", "macs"),
            ("weights", "weights"), ("tensors", "bits"), ("requant", "requant"),
            ("act scale", "act_scale")]
    table = [[str(r.get(key, "")) if key not in ("macs", "weights") else f"{r[key]:,}"
              for _, key in cols] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, (h, _) in enumerate(cols)]
    log(f"{path or model_file.DEFAULT_PATH}: input {'x'.join(map(str, net.input))} uint8")
    log("  ".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip())
    for t in table:
        log("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())
    total_w = sum(r["weights"] for r in rows)
    log(f"softmax: distance x{qnet.softmax_mult} >> {qnet.softmax_shift}, Q15 probabilities")
    log(f"total: {net.total_macs:,} MACs per image, {total_w:,} weights and biases")
    for key in ("test_accuracy_float", "test_accuracy_int8"):
        if key in info:
            log(f"{key.replace('_', ' ')}: {100 * info[key]:.2f} % ({info.get('test_images')} "
                f"{info.get('dataset', 'mnist')} test images)")
    return rows


def predict(path, images, names, out, log=print):
    """Float and int8 logits, probabilities and classes of ``images`` into ``out`` (``.npz``)."""
    qnet = model_file.load_network(path)
    params = model_file.load_float_network(path)
    r = infer_int(qnet, images)
    logits = float_network.forward(params, images, dtype=np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    result = {
        "names": np.asarray(names), "float_logits": logits.astype(np.float32),
        "float_probs": probs.astype(np.float32), "float_class": logits.argmax(axis=1),
        "int8_logits": r.logits, "int8_probs": r.probs.astype(np.float64) / 32768,
        "int8_class": r.cls,
    }
    with atomic_open(out, "wb") as f:
        np.savez(f, **result)
    for i, name in enumerate(names[:20]):
        log(f"{name}: float class {result['float_class'][i]} "
            f"(p {probs[i].max():.3f}), int8 class {r.cls[i]} (p {r.probs[i].max() / 32768:.3f})")
    if len(names) > 20:
        log(f"... {len(names) - 20} more")
    agree = float(np.mean(result["float_class"] == r.cls))
    log(f"float and int8 classes agree on {100 * agree:.2f} % of {len(names)} images; wrote {out}")
    return result


def parse_range(text, count):
    """``A:B`` -> ``range(A, B)`` within ``0..count``; :class:`CnnforgeError` otherwise."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise CnnforgeError(f"--mnist-range must be A:B (e.g. 0:100), not {text!r}") from None
    if not 0 <= a < b <= count:
        raise CnnforgeError(f"--mnist-range {text}: needs 0 <= A < B <= {count}")
    return range(a, b)
