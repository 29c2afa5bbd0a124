"""``cnnforge bench-link --sim``: images per second through a board's simulated pins.

The board's core (its preset's accelerator, the portable datapath: the same cycles as the
board's vendor primitives) runs in RTL simulation at the board's link clock and baud rate, with
the accelerator in its own clock domain where the board has one (ULX3S: link 30 MHz,
accelerator 100 MHz). The host library streams MNIST test images through the UART pins
(:meth:`cnnforge.boards.host.Client.classify_many`, the protocol's real frames, bit timing on
the line) in each reply mode and image coding, and the simulated time gives the end-to-end rate.
Beside it: the compute-bound rate (the accelerator's clock over its cycles per image, from
``READ_CYCLES``) and the link-bound rate (the line's bytes per second over the larger of the
bytes sent and received per image), the latter also over the whole MNIST test set, whose
coded sizes the host's encoder gives without simulation.
"""

from pathlib import Path

import numpy as np

from .boards.protocol import (OVERHEAD_BYTES, ReplyMode, image_bytes, stream_payload,
                              stream_reply_bytes)
from .errors import CnnforgeError
from .fsutil import atomic_write_text


__all__ = ["RUNS", "bench_link", "request_bytes", "mnist_request_bytes", "write_report"]

#: (reply mode, image coding) of each measured run.
RUNS = ((ReplyMode.CLASS, "auto"), (ReplyMode.LOGITS, "auto"), (ReplyMode.ALL, "auto"),
        (ReplyMode.CLASS, "raw"))


def request_bytes(image, coding, max_run):
    """Bytes on the line of one ``CLASSIFY_IMAGE`` request for ``image`` (frame included;
    zero runs of at most ``max_run``, the device's)."""
    return OVERHEAD_BYTES + len(stream_payload(0, np.asarray(image, np.uint8).tobytes(),
                                               coding=coding, max_run=max_run))


def mnist_request_bytes(mnist_dir=None):
    """``request_bytes(max_run)`` for :func:`cnnforge.boards.build.build`: the mean bytes of a
    zero-run coded request over the MNIST test set; None without the data."""
    from . import mnist
    try:
        images, _ = mnist.load("test", mnist_dir)
    except CnnforgeError:       # no data here: the report leaves the number out
        return None
    return lambda max_run: float(np.mean([request_bytes(im, "zero-run", max_run)
                                          for im in images]))


def bench_link_job(transport, images, labels, runs):
    """Job run inside the simulation (``cnnforge.sim.verify.tb_board``): each run of
    ``classify_many``, timed in simulated seconds."""
    from .boards.host import Client
    client = Client(transport, timeout=0.05)
    out = {"info": client.ping(), "runs": []}
    images = [np.asarray(im, np.uint8) for im in images]
    for mode, coding in runs:
        start = transport.now()
        results = client.classify_many(images, ReplyMode(mode), coding)
        seconds = transport.now() - start
        out["runs"].append({"mode": ReplyMode(mode).name, "coding": coding, "seconds": seconds,
                            "correct": sum(int(r.cls == y) for r, y in zip(results, labels)),
                            "classes": [r.cls for r in results]})
    out["cycles"] = client.read_cycles()
    return out


def _link_core(board, model_path, baud, link="uart", accel=None):
    """The board's core for simulation and ``(link clock, divisor, fast period ns)``; with
    ``accel`` that accelerator instead of the model's (``link="usb"`` only)."""
    from .boards.top import board_core, board_model
    from .boards.uart import divisor_for
    from .sim.reference import model_file
    from .sim.verify.tb_board import PERIOD_NS
    model, par, network_accel = board_model(model_file.load_network(model_path), board.preset,
                                            "generic")
    if link == "usb":
        # (the USB device's clocks are real time: the core runs at the board's clock)
        core = board_core(model, par if network_accel is None and accel is None else None,
                          clk_freq=board.clk_freq, baud=baud, timeout_s=0.002,
                          accel=accel or network_accel, link="usb")
        return core, board.clk_freq, None, None
    link_clk = board.link_clk_freq or board.clk_freq
    split = board.link_clk_freq is not None
    core = board_core(model, par if network_accel is None else None, clk_freq=link_clk,
                      baud=baud, timeout_s=0.002, accel=network_accel,
                      accel_domain="fast" if split else None)
    fast_ns = max(1, round(PERIOD_NS * link_clk / board.clk_freq)) if split else None
    return core, link_clk, divisor_for(link_clk, baud), fast_ns


def bench_link(board_name, *, images=100, mnist_dir=None, model_path=None, baud=None,
               link=None, log=print):
    """Measure ``board_name``'s link in simulation; the report as a dict.

    ``link``: the board's host link (None: its default). Over USB the link-bound rate is
    measured too: the same runs through the same core with an accelerator that answers in a
    few cycles (:class:`~cnnforge.sim.verify.fake_accel.FakeAccel`), so only the bus, the USB
    device and the protocol engine set the pace; scaled to the whole test set by its mean
    request bytes against the simulated images' (the bus carries whole 64-byte packets, so
    this is an estimate)."""
    from . import mnist
    from .boards.board import get_board
    from .sim.reference import model_file
    from .sim.verify.board_system import run_sim_job
    from .boards.top import link_config
    from .sim.verify.tb_board import PERIOD_NS
    board = get_board(board_name)
    link = board.check_link(link)
    if link == "usb" and baud is not None:
        raise CnnforgeError("--baud is a UART's; a USB link has none")
    baud = baud or board.baud
    model_path = model_path or (model_file.DEFAULT_PATH.with_name(board.model) if board.model
                                else None)
    qnet = model_file.load_network(model_path)
    size, _, channels = qnet.network.input
    if (size, channels) != (28, 1):
        raise CnnforgeError(f"bench-link streams MNIST test images; the model takes "
                            f"{size}x{size}x{channels}")
    test_x, test_y = mnist.load("test", mnist_dir)
    usb = link == "usb"
    core, link_clk, divisor, fast_ns = _link_core(board, model_path, baud, link)
    log(f"bench-link {board.name}: {images} images per run, "
        + ("USB full speed (CDC-ACM), core at " f"{link_clk / 1e6:g} MHz" if usb else
           f"link {link_clk / 1e6:g} MHz, {baud} baud (divisor {divisor})")
        + (f", accelerator {board.clk_freq / 1e6:g} MHz" if fast_ns else ""))
    args = {"images": test_x[:images].tolist(), "labels": test_y[:images].tolist(),
            "runs": [(mode.value, coding) for mode, coding in RUNS]}
    name = f"bench_link_{board.name}" + ("_usb" if usb else "")
    out = run_sim_job(name, core, "cnnforge.bench_link:bench_link_job", args, divisor=divisor,
                      clk_freq=link_clk, real_time=usb,
                      **({"fast_period_ns": fast_ns} if fast_ns else {}))
    if out["framing_errors"]:
        raise CnnforgeError(f"bench-link: {out['framing_errors']} framing errors on the "
                            f"simulated line")
    job = out["result"]
    link_runs = None
    if usb:
        # The link's own rate: the same runs, an accelerator that is never the bottleneck.
        from .sim.verify.fake_accel import FakeAccel
        probe, *_ = _link_core(board, model_path, baud, link,
                               accel=FakeAccel(link_config(qnet), delay=1))
        log(f"bench-link {board.name}: the link alone (an accelerator answering at once)")
        link_runs = run_sim_job(name + "_link", probe, "cnnforge.bench_link:bench_link_job",
                                args, divisor=None, clk_freq=link_clk,
                                real_time=True)["result"]["runs"]
    cycles = job["cycles"]
    # (the simulated accelerator clock: the link's period over the fast domain's, in ns)
    accel_clk = board.clk_freq if fast_ns is None else link_clk * PERIOD_NS / fast_ns
    compute = accel_clk / cycles
    line = None if usb else baud / 10           # bytes per second, 8N1
    config = link_config(qnet)
    max_run = job["info"]["max_run"]
    rows = []
    for k, run in enumerate(job["runs"]):
        mode, coding = ReplyMode[run["mode"]], run["coding"]
        down = OVERHEAD_BYTES + stream_reply_bytes(config, mode)
        up_sim = np.mean([request_bytes(im, coding, max_run) for im in test_x[:images]])
        up_all = np.mean([request_bytes(im, coding, max_run) for im in test_x])
        if usb:
            bound = images / link_runs[k]["seconds"]
            bound_all = bound * max(up_sim, down) / max(up_all, down)
        else:
            bound, bound_all = line / max(up_sim, down), line / max(up_all, down)
        rows.append({
            "mode": mode.name, "coding": coding, "images": images,
            "end_to_end": images / run["seconds"],
            "accuracy": run["correct"] / images,
            "request_bytes": float(up_sim), "reply_bytes": down,
            "link_bound": bound,
            "link_bound_test_set": bound_all,
            "request_bytes_test_set": float(up_all),
            "compute_bound": compute,
        })
        log(f"  {mode.name:6s} {coding:4s}: {rows[-1]['end_to_end']:8,.0f} images/s end to end "
            f"(link-bound {rows[-1]['link_bound']:,.0f}, test set "
            f"{rows[-1]['link_bound_test_set']:,.0f}; compute-bound {compute:,.0f})")
    return {"board": board.name, "model": str(model_path or "seed"), "link": link,
            "baud": None if usb else baud,
            "link_clk_hz": link_clk, "accel_clk_hz": accel_clk, "cycles_per_image": cycles,
            "raw_image_bytes": image_bytes(config), "simulated_images": images, "rows": rows,
            "slots": job["info"]["slots"], "max_run": max_run}


def write_report(reports, out="build"):
    """``build/bench-link.json`` and ``.md`` from a list of :func:`bench_link` reports."""
    import json
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench-link.json", json.dumps(reports, indent=2) + "\n")
    lines = ["| board | reply | image coding | request bytes (test set) | reply bytes | "
             "end to end, simulated (images/s) | link-bound, test set | compute-bound |",
             "|---|---|---|---|---|---|---|---|"]
    for report in reports:
        for row in report["rows"]:
            wire = ("USB full speed" if report.get("link") == "usb" else
                    f"{report['baud'] / 1e6:g} Mbaud")
            lines.append(
                f"| {report['board']} ({wire}) | {row['mode']} | "
                f"{row['coding']} | {row['request_bytes_test_set']:.1f} | {row['reply_bytes']} | "
                f"{row['end_to_end']:,.0f} ({row['images']} images) | "
                f"{row['link_bound_test_set']:,.0f} | {row['compute_bound']:,.0f} |")
    atomic_write_text(out / "bench-link.md", "\n".join(lines) + "\n")
    return out / "bench-link.json"
