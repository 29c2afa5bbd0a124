"""The ``cnnforge`` command line.

Every subcommand imports what it needs lazily, so ``cnnforge data`` works without the toolchain
loaded. Errors of :class:`~cnnforge.errors.CnnforgeError` print one line and exit with status 1.
"""

import argparse
import os
import sys
from pathlib import Path

from .errors import CnnforgeError


def _mnist_dir(args):
    return args.mnist_dir or os.environ.get("MNIST_DIR") or "data/mnist"


def _check_count(option, value, minimum=1, maximum=None, of=None):
    """``value``, an integer option (``None``: not given), if it is in ``minimum .. maximum``;
    :class:`CnnforgeError` naming the option and the bounds otherwise (``of``: what the
    maximum counts). Every count and index is checked here before any data is read: the
    commands take them as Python slices, where a negative count or one past the data does
    not fail."""
    if value is None:
        return value
    if value < minimum or maximum is not None and value > maximum:
        if maximum is None:
            bounds = f"at least {minimum}"
        else:
            bounds = f"in {minimum}..{maximum}" + (f" ({of})" if of else "")
        raise CnnforgeError(f"{option} must be {bounds}, not {value}")
    return value


def _mnist_images(split):
    """Images in the MNIST ``split`` (the official counts: the loader insists on them)."""
    from .mnist import COUNTS
    return COUNTS[split]


def _mnist_has(split):
    return f"MNIST has {_mnist_images(split)} {'training' if split == 'train' else split} images"


def _check_mnist_count(option, value, split, minimum=1):
    """:func:`_check_count` for a number of MNIST ``split`` images."""
    return _check_count(option, value, minimum, _mnist_images(split), of=_mnist_has(split))


def _check_presets(names):
    """``names`` if each is a parallelism preset; :class:`CnnforgeError` otherwise."""
    from .hw.accel import PRESETS
    for name in names:
        if name not in PRESETS:
            raise CnnforgeError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})")
    return names


def cmd_data(args):
    from . import mnist
    directory = args.dir or _mnist_dir(args)
    mnist.download(directory, progress=not args.quiet)
    print(f"MNIST ready in {directory}")


def _network(text):
    """A preset name or a JSON file of a layer list: ``(Network, preset name or None)``."""
    from pathlib import Path
    from .hw.params import PRESETS, ConfigError, Network
    if text in PRESETS:
        return PRESETS[text], text
    if not text.endswith(".json"):
        raise CnnforgeError(f"unknown network {text!r} (a preset: {', '.join(PRESETS)}, or a "
                            f".json layer list)")
    try:
        return Network.from_json(Path(text).read_text()), None
    except OSError as e:
        raise CnnforgeError(f"{text}: cannot read the network ({e.strerror})") from None
    except ConfigError as e:
        raise CnnforgeError(f"{text}: {e}") from None


def cmd_train(args):
    from . import train
    from .hw.params import ConfigError
    _check_count("--epochs", args.epochs, maximum=1000)
    _check_count("--seed", args.seed, 0)
    network, name = _network(args.network)
    try:
        train.train_network(network, name=name, mnist_dir=_mnist_dir(args), out=args.out,
                            epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    except ConfigError as e:
        raise CnnforgeError(str(e)) from None


def cmd_import(args):
    from .importers import convert
    _check_count("--calibration-images", args.calibration_images, maximum=60_000)
    convert.import_model(args.model, args.out, calibration_images=args.calibration_images,
                         scale=args.input_scale, mean=args.input_mean, std=args.input_std,
                         mnist_dir=_mnist_dir(args), calibration=args.calibration_data)


def cmd_describe(args):
    from . import describe
    describe.describe(args.model)


def cmd_predict(args):
    import numpy as np
    from . import datasets, describe
    from .evaluate import dataset_of
    from .sim.reference import model_file
    qnet, info = model_file.load_network(args.model, with_info=True)
    if bool(args.images) == bool(args.mnist_range):
        raise CnnforgeError("give image files or --mnist-range A:B (one of the two)")
    h, w, c = qnet.network.input
    if args.mnist_range:
        data = dataset_of(qnet, info)
        picked = describe.parse_range(args.mnist_range, datasets.count(data, "test"))
        test_x, test_y = datasets.load(data, "test", _mnist_dir(args))
        images = test_x[picked.start:picked.stop]
        names = [f"{data} test #{i} (label {test_y[i]})" for i in picked]
    else:
        from .boards import host
        if c not in (1, 3) or h != w:
            raise CnnforgeError(f"image files are read as square grayscale or RGB pictures; "
                                f"this network takes {h}x{w}x{c} images (use --mnist-range)")
        images = np.stack([host.load_image_file(p, h, channels=c) for p in args.images])
        images = images.reshape(len(images), h, w, c)
        names = list(args.images)
    describe.predict(args.model, images, names, args.out)


def cmd_eval(args):
    from . import evaluate
    _check_mnist_count("--limit", args.limit, "test")
    evaluate.eval_cli(mnist_dir=_mnist_dir(args), model_path=args.model, limit=args.limit,
                      progress=not args.quiet)


def cmd_export(args):
    from .sim.reference import model_file
    model = model_file.load_network(args.model)
    model_file.export_json(model, args.out)
    print(f"wrote {args.out}")


def cmd_verilog(args):
    from . import verilog
    for path in verilog.write_all(args.out):
        print(f"wrote {path}")


def cmd_bench(args):
    from . import bench
    _check_mnist_count("--images", args.images, "test")
    _check_mnist_count("--train-steps", args.train_steps, "train", minimum=0)
    _check_presets(args.presets)
    bench.bench(mnist_dir=_mnist_dir(args), images=args.images, presets=args.presets,
                train_steps=args.train_steps)


def _model_file(path):
    """A ``--model`` argument: the file, or the committed model file of that name
    (``lenet.npz``), so that ``make sim-full MODEL=lenet.npz`` works from any folder."""
    if path is None:
        return None
    from .sim.reference import model_file
    given = Path(path)
    committed = model_file.DEFAULT_PATH.with_name(given.name)
    if not given.exists() and given.name == path and committed.exists():
        return committed
    return given


def cmd_check(args):
    from . import check
    if args.multipliers is not None:
        _check_count("--multipliers", args.multipliers, maximum=100_000)
    check.check_cli(_model_file(args.model), args.board, args.multipliers)


def cmd_explore(args):
    from . import explore
    explore.explore_cli(_model_file(args.model), args.board, args.out)


def cmd_calibrate_logic(args):
    from . import calibrate_logic
    if args.family not in ("ecp5", "ice40"):
        raise CnnforgeError(f"--family must be ecp5 or ice40, not {args.family!r}")
    calibrate_logic.main(args.family, args.out, args.report)


def cmd_sim_full(args):
    from . import bench
    _check_mnist_count("--images", args.images, "test")
    _check_presets([args.preset])
    if args.multipliers is not None:
        _check_count("--multipliers", args.multipliers, maximum=100_000)
    _check_count("--jobs", args.jobs, maximum=256)
    bench.sim_full(mnist_dir=_mnist_dir(args), images=args.images, preset=args.preset,
                   model_path=_model_file(args.model), multipliers=args.multipliers,
                   jobs=args.jobs)


def _format_overrides(items):
    """``FIELD=INT`` strings -> ``{field: int}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = int(value, 0)
        except ValueError:
            raise CnnforgeError(f"--set takes FIELD=INT, not {item!r}") from None
        if not sep:
            raise CnnforgeError(f"--set takes FIELD=INT, not {item!r}")
    return out


def cmd_train_fixed(args):
    from . import train
    from .hw.params import ConfigError
    _check_count("--epochs", args.epochs, maximum=1000)
    # The training order is `epochs` permutations of the training set, one after another.
    _check_count("--limit", args.limit, 1, args.epochs * _mnist_images("train"),
                 of=f"{args.epochs} epoch(s); {_mnist_has('train')}")
    _check_mnist_count("--test-limit", args.test_limit, "test")
    try:
        fmt = train.train_format(args.init, lr_shift=args.lr_shift, rounding=args.rounding,
                                 overrides=_format_overrides(args.set))
    except ConfigError as e:
        raise CnnforgeError(str(e)) from None
    _, accuracy = train.train_fixed(_mnist_dir(args), init=args.init, epochs=args.epochs,
                                    limit=args.limit, progress=not args.quiet, fmt=fmt,
                                    test_limit=args.test_limit, float_twin=args.float)
    print(f"fixed-point SGD ({args.init} init, {args.epochs} epoch(s)): "
          f"{100 * accuracy:.2f} % on the test set")


def cmd_train_sim(args):
    import json

    from . import mnist
    from .hw.accel import PRESETS, Parallelism
    from .hw.params import NetworkConfig
    from .sim.verify.train_system import train_bench
    presets = _check_presets(args.preset or ["up5k", "ecp5-85f"])
    _check_mnist_count("--steps", args.steps, "train")
    _check_mnist_count("--test-images", args.test_images, "test", minimum=0)
    if args.grad_lanes is not None:
        for preset in presets:
            try:
                Parallelism(**{**PRESETS[preset].to_dict(), "grad_lanes": args.grad_lanes}) \
                    .check(NetworkConfig(), training=True)
            except (TypeError, ValueError) as e:
                raise CnnforgeError(f"--grad-lanes with preset {preset!r}: {e}") from None
    train_x, train_y = mnist.load("train", _mnist_dir(args))
    test_x, test_y = (mnist.load("test", _mnist_dir(args)) if args.test_images
                      else ((), ()))
    ok = True
    for preset in presets:
        result = train_bench(preset, train_x, train_y, steps=args.steps,
                             grad_lanes=args.grad_lanes, rounding=args.rounding,
                             test_images=test_x[:args.test_images],
                             test_labels=test_y[:args.test_images])
        ok &= bool(result.get("bit_exact", True))
        print(json.dumps(result))
    if not ok:
        raise CnnforgeError("the training RTL disagrees with the golden trainer")


def cmd_bitstream(args):
    from .boards import build
    par = (build.parse_parallelism(args.parallelism, args.board, training=args.train is not None)
           if args.parallelism is not None else None)
    model = None
    if args.model is not None:
        from .sim.reference import model_file
        path = _model_file(args.model)
        model = model_file.load_network(path)
        if args.parallelism is not None:
            raise CnnforgeError("--parallelism sets the seed network's presets; a --model is "
                                "balanced over its layers")
    _check_count("--baud", args.baud)
    from .bench_link import mnist_request_bytes
    size, _, channels = (model.network.input if model is not None else (28, 28, 1))
    coded = mnist_request_bytes(_mnist_dir(args)) if (size, channels) == (28, 1) else None
    build.build(args.board, args.out, parallelism=par, train_init=args.train, model=model,
                name=None if args.model is None else Path(args.model).stem, baud=args.baud,
                request_bytes=coded, link=args.link,
                margin_seeds=() if args.one_seed else build.MARGIN_SEEDS)


def cmd_program(args):
    from .boards import build
    build.program(args.board, args.out, train=args.train)


def cmd_classify(args):
    from .boards import host
    from .boards.board import get_board
    from .sim.reference import model_file
    from .sim.verify import board_system
    get_board(args.board)            # an unknown board is an error before any work
    for index in args.mnist_index:
        _check_count("--mnist-index", index, 0, _mnist_images("test") - 1,
                     of=_mnist_has("test"))
    _check_count("--baud", args.baud)
    if args.mnist_range is not None:
        return _classify_stream(args)
    if not args.images and not args.mnist_index:
        raise CnnforgeError("nothing to classify: give image files, --mnist-index N or "
                            "--mnist-range A:B")
    model_path = _model_file(args.model) if args.model else None
    qnet = model_file.load_network(model_path)
    size, _, channels = qnet.network.input
    images, names = [], []
    for path in args.images:
        images.append(host.load_image_file(path, size, channels=channels))
        names.append(path)
    if args.mnist_index:
        from . import mnist
        test_x, test_y = mnist.load("test", _mnist_dir(args))
        for index in args.mnist_index:
            images.append(test_x[index])
            names.append(f"MNIST test #{index} (label {test_y[index]})")
    preset = get_board(args.board).preset
    if args.sim:
        target = "generic" if args.sim_datapath == "generic" else None
        _, results = board_system.simulate(images, model_path, preset, target=target)
        where = "simulated board"
    else:
        if not args.port:
            raise CnnforgeError("give --port (the board's serial port) or --sim")
        from .boards.top import board_model
        # The model is uploaded first when the board has none (iCE40: SPRAM starts empty).
        model, parallelism, _ = board_model(qnet, preset)
        results = host.classify(args.port, images, baud=args.baud, model=model,
                                parallelism=parallelism)
        where = args.port
    for name, r in zip(names, results):
        probs = " ".join(f"{p / 32768:.3f}" for p in r.probs)
        print(f"{name}: class {r.cls}  [{probs}]  {r.cycles} cycles  ({where})")


def cmd_bench_link(args):
    from . import bench_link
    from .boards.board import get_board
    boards = args.board or ["icebreaker"]
    for name in boards:
        get_board(name)
    if not args.sim:
        raise CnnforgeError("bench-link measures the simulated board core: give --sim")
    _check_mnist_count("--images", args.images, "test")
    for baud in args.baud or ():
        _check_count("--baud", baud)
    reports = [bench_link.bench_link(name, images=args.images, mnist_dir=_mnist_dir(args),
                                     model_path=_model_file(args.model), baud=baud,
                                     link=args.link)
               for name in boards for baud in (args.baud or [None])]
    path = bench_link.write_report(reports)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def _mnist_range(text):
    """``A:B`` (test images A .. B-1) as ``(A, B)``; a one-line error otherwise."""
    try:
        start, end = (int(x) for x in text.split(":"))
    except ValueError:
        raise CnnforgeError(f"--mnist-range must be START:END (e.g. 0:10000), not {text!r}") \
            from None
    total = _mnist_images("test")
    if not 0 <= start < end <= total:
        raise CnnforgeError(f"--mnist-range {text}: need 0 <= START < END <= {total} "
                            f"({_mnist_has('test')})")
    return start, end


def _classify_stream(args):
    """``classify --mnist-range A:B``: streamed (``CLASSIFY_IMAGE``), accuracy and images/s."""
    from . import mnist
    from .boards import host
    from .boards.board import get_board
    from .boards.protocol import ReplyMode
    from .sim.reference import model_file
    from .sim.verify import board_system
    if args.images or args.mnist_index:
        raise CnnforgeError("--mnist-range classifies MNIST test images: give no image files "
                            "or --mnist-index with it")
    start, end = _mnist_range(args.mnist_range)
    model_path = _model_file(args.model) if args.model else None
    qnet = model_file.load_network(model_path)
    size, _, channels = qnet.network.input
    if (size, channels) != (28, 1):
        raise CnnforgeError(f"--mnist-range needs a model of 28x28x1 images, not "
                            f"{size}x{size}x{channels}")
    test_x, test_y = mnist.load("test", _mnist_dir(args))
    images, labels = test_x[start:end], test_y[start:end]
    mode = ReplyMode[args.reply.upper()]
    preset = get_board(args.board).preset
    if args.sim:
        results, seconds = board_system.simulate_stream(images, model_path, preset, mode)
        where = "simulated board core, simulated time"
    else:
        if not args.port:
            raise CnnforgeError("give --port (the board's serial port) or --sim")
        from .boards.top import board_model
        model, parallelism, _ = board_model(qnet, preset)
        results, seconds = host.classify_stream(args.port, images, baud=args.baud, model=model,
                                                parallelism=parallelism, mode=mode,
                                                progress=host.progress_bar())
        where = args.port
    correct = sum(int(r.cls == y) for r, y in zip(results, labels))
    print(f"MNIST test {start}:{end}: {correct}/{len(images)} correct "
          f"({100 * correct / len(images):.2f} %), {len(images) / seconds:,.0f} images/s "
          f"({where}; streamed, reply {mode.name})")


def _gatesim_mnist(board_name, build_dir=None, *, images=20, mnist_dir=None, log=print):
    """``cnnforge gatesim``: the board scenario on ``images`` MNIST test images (and two more for
    the fault cases) through the built netlist's pins, every classification compared with the
    golden model word for word; :class:`CnnforgeError` naming the first difference."""
    import numpy as np

    from . import mnist
    from .boards.board import get_board
    from .sim.reference import golden, model_file
    from .sim.verify.gatesim import gatesim, gatesim_upload
    board = get_board(board_name)
    # (a board with a model of its own, a layer-list network, starts with it built in)
    model = (model_file.load_network(model_file.DEFAULT_PATH.with_name(board.model))
             if board.model else model_file.load())
    test_x, _ = mnist.load("test", mnist_dir)
    chosen, faults = test_x[:images], test_x[images:images + 2]
    log(f"gatesim {board.name}: {images} MNIST images through the netlist's pins "
        f"(Verilator; the first build takes a few minutes)")
    out = gatesim(board.name, build_dir, images=chosen, fault_images=faults,
                  upload=gatesim_upload(board))
    job = out["result"]
    if out["framing_errors"]:
        raise CnnforgeError(f"gatesim {board.name}: {out['framing_errors']} framing errors")
    checked = [(r, im, f"image {n}") for n, (r, im) in enumerate(zip(job["images"], chosen))]
    # (the scenario classifies its first fault image after each case, its second at the end)
    checked += [(rec["after"], faults[1] if name == "final" else faults[0],
                 f"after fault case {name}")
                for name, rec in job["faults"].items()
                if isinstance(rec, dict) and isinstance(rec.get("after"), dict)
                and "cls" in rec["after"]]
    for got, image, where in checked:
        ref = golden.infer_int(model, np.asarray(image, np.uint8))
        want = (int(ref.cls[0]), [int(x) for x in ref.logits[0]], [int(x) for x in ref.probs[0]])
        if (got["cls"], got["logits"], got["probs"]) != want:
            raise CnnforgeError(f"gatesim {board.name}: {where} differs from the golden model "
                                f"(class {got['cls']}, golden {want[0]})")
    log(f"gatesim {board.name}: {len(job['images'])} images and {len(checked) - len(chosen)} "
        f"classifications after fault cases bit-exact with the golden model; "
        f"{out['sim_time_ns'] / 1e6:.1f} ms simulated")
    return out


def cmd_gatesim(args):
    from .boards.board import get_board
    get_board(args.board)
    _check_mnist_count("--images", args.images, "test")
    _gatesim_mnist(args.board, Path(args.out) / args.board, images=args.images,
                   mnist_dir=_mnist_dir(args))


def cmd_train_board(args):
    import numpy as np

    from . import mnist
    from .boards import host
    from .boards.board import get_board
    from .sim.reference import golden
    from .sim.reference.trainer import data_order, initial_state
    from .sim.verify import board_system
    board = get_board(args.board)
    _check_count("--steps", args.steps, 0)       # more than the training set: several epochs
    _check_mnist_count("--eval", args.eval, "test", minimum=0)
    _check_count("--device-checks", args.device_checks, 0)   # of the --eval images
    _check_count("--baud", args.baud)
    if not args.sim and not args.port:
        raise CnnforgeError("give --port (the board's serial port) or --sim")
    train_x, train_y = mnist.load("train", _mnist_dir(args))
    test_x, test_y = mnist.load("test", _mnist_dir(args))
    order = data_order(len(train_x), -(-args.steps // len(train_x)) if args.steps else 0)
    order = order[:args.steps]
    images, labels = train_x[order], train_y[order]
    test_x, test_y = test_x[:args.eval], test_y[:args.eval]
    like = initial_state(args.init)
    before = float(np.mean(golden.predict_int(like.model(), test_x) == test_y)) \
        if len(test_x) else None
    kwargs = dict(test_images=test_x, test_labels=test_y, device_checks=args.device_checks,
                  verify=not args.no_verify)
    if args.sim:
        preset = board.training_preset()     # the board's training build, or why it has none
        where = f"simulated {board.name} training core ({preset})"
        print(f"{where}: {len(order)} training steps from the {args.init} init (RTL "
              f"simulation: minutes)")
        out = board_system.simulate_training(args.init, images, labels, preset=preset,
                                             **kwargs)
    else:
        where = args.port
        out = host.train_board(args.port, like, images, labels, baud=args.baud,
                               log=None if args.quiet else print, **kwargs)
    print(f"{where}: {out['steps']} steps in {out['seconds']:.2f} s "
          f"({out['step_cycles']} cycles in the last step); training accuracy (prediction "
          f"before each update) {100 * (out['train_accuracy'] or 0):.2f} %")
    print(f"state read back in {out['read_seconds']:.2f} s"
          + ("" if out["matches_golden"] is None else
             "; bit-identical with the golden trainer"))
    if out["test_accuracy"] is not None:
        print(f"test accuracy on {len(test_x)} images: {100 * before:.2f} % before, "
              f"{100 * out['test_accuracy']:.2f} % after; {out['device_checks']} classified "
              f"on the device, bit-exact")
    if args.out:
        from .sim.reference import model_file
        model_file.save(out["state"].model(), args.out,
                        info={"trained_on": where, "init": args.init, "steps": out["steps"]})
        print(f"trained model written to {args.out}")


def cmd_report(args):
    from . import report
    print(report.sim_summary(args.records))


def link_options(p, board, sim_help):
    """The options of a subcommand that talks to a board: port, baud rate, board, --sim."""
    p.add_argument("--port", help="serial port of the board, e.g. /dev/ttyUSB1")
    p.add_argument("--baud", type=int, default=3_000_000)
    p.add_argument("--board", default=board, help="board (its preset, also for --sim)")
    p.add_argument("--sim", action="store_true", help=sim_help)


def build_parser():
    # The common options are accepted before or after the subcommand.
    # The subcommand's copies land under other names (argparse lets a subparser's
    # namespace overwrite the main one's) and main() merges them.
    def common_options(prefix):
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--mnist-dir", dest=prefix + "mnist_dir", default=None,
                            help="folder with the MNIST IDX files (default: $MNIST_DIR, else data/mnist)")
        common.add_argument("-q", "--quiet", dest=prefix + "quiet", action="store_true",
                            help="no progress bars")
        return common

    common = common_options("sub_")
    parser = argparse.ArgumentParser(prog="cnnforge", description=__doc__.splitlines()[0],
                                     parents=[common_options("")])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_parser = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add_parser(*a, parents=[common], **kw)

    p = sub.add_parser("data", help="download MNIST and verify its checksums")
    p.add_argument("--dir", help="destination folder (default: the MNIST folder)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train the float model, quantize it, write the model file")
    p.add_argument("--network", default="mnist-seed",
                   help="a preset (mnist-seed, lenet, mnist-small, rgb-shapes) or a .json "
                        "layer list")
    p.add_argument("--out", default=None, help="model file to write (default: the preset's "
                                               "committed one)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the recipe's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("import", help="an ONNX or Keras model to a model file: layers mapped, "
                                      "post-training quantization")
    p.add_argument("model", help="the .onnx, .keras or .h5 file")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument("--calibration-images", type=int, default=2000,
                   help="training images the activation scales are calibrated on")
    p.add_argument("--calibration-data", default=None,
                   help="a .npy of uint8 images (N, H, W, C) to calibrate on instead of the "
                        "data set")
    p.add_argument("--input-scale", type=float, default=None,
                   help="model input = (pixel * SCALE - MEAN) / STD (default SCALE 1/255)")
    p.add_argument("--input-mean", type=float, default=None, help="see --input-scale (default 0)")
    p.add_argument("--input-std", type=float, default=None, help="see --input-scale (default 1)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("describe", help="a model file's layers: shapes, MACs, weights, bits")
    p.add_argument("model", nargs="?", default=None, help="model file (default: the committed one)")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("predict", help="float and int8 logits, probabilities and classes of a "
                                       "model file on test images or image files")
    p.add_argument("model", help="model file")
    p.add_argument("images", nargs="*", help="image files (PNG, ...)")
    p.add_argument("--mnist-range", default=None, metavar="A:B",
                   help="test images A..B-1 of the model's data set (MNIST)")
    p.add_argument("--out", required=True, help="results file to write (.npz)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="float and int8 accuracy on the model's test set")
    p.add_argument("--model", default=None, help="model file (default: the committed one)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write the model file as JSON (for other tools)")
    p.add_argument("--model", default=None, help="model file (default: the committed one)")
    p.add_argument("out", help="JSON file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verilog", help="elaborate every RTL block to Verilog")
    p.add_argument("--out", default="build/verilog", help="output folder")
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("bench", help="cycles per image in RTL simulation -> build/bench.json, .md")
    p.add_argument("--images", type=int, default=200, help="MNIST test images per configuration")
    p.add_argument("--presets", nargs="+", default=["up5k", "ecp5-85f"],
                   help="parallelism presets (see hw/accel.py PRESETS)")
    p.add_argument("--train-steps", type=int, default=10,
                   help="on-chip training steps per configuration (0: skip training)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("check", help="before any synthesis: what a model's accelerator needs "
                                     "of a board, per layer and in total, and whether it fits")
    p.add_argument("model", help="a model file (or a committed one's name, e.g. lenet.npz)")
    p.add_argument("--board", default="ulx3s",
                   help="a board of boards/catalog/ (ulx3s, orangecrab, tangprimer20k, ...)")
    p.add_argument("--multipliers", type=int, default=None,
                   help="multipliers to balance over the layers (default: the board preset's)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explore", help="every balanced parallelism of a model on a board: "
                                       "cycles, block RAM, images/s; JSON, CSV and a plot")
    p.add_argument("model", help="a model file (or a committed one's name, e.g. lenet.npz)")
    p.add_argument("--board", default="ulx3s",
                   help="a board of boards/catalog/ (ulx3s, orangecrab, tangprimer20k, ...)")
    p.add_argument("--out", default="build/explore", help="output folder")
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("calibrate-logic", help="(maintainers) fit the logic estimate of "
                                               "`check` to Yosys: a synthesis per design")
    p.add_argument("--family", default="ecp5", help="ecp5 or ice40")
    p.add_argument("--out", default="build/calibrate", help="working folder")
    p.add_argument("--report", action="append", default=[], metavar="DESIGN=report.json|N",
                   help="a build report (or its logic count) of a calibration design, for the "
                        "flattening factor")
    p.set_defaults(func=cmd_calibrate_logic)

    p = sub.add_parser("sim-full", help="all MNIST test images through the RTL, checked")
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--preset", default="up5k")
    p.add_argument("--model", default=None,
                   help="a model file (default: the committed seed model); a network other than "
                        "the seed runs on the layer-list accelerator")
    p.add_argument("--multipliers", type=int, default=None,
                   help="multipliers of the layer-list accelerator (default: the preset's)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="chunks of 1,000 images simulated side by side, one process and one "
                        "Verilator build each (default: 2, or 1 on a single core)")
    p.set_defaults(func=cmd_sim_full)

    p = sub.add_parser("train-fixed", help="the golden fixed-point SGD trainer (batch 1), "
                                           "then test accuracy")
    p.add_argument("--init", choices=("random", "model"), default="random",
                   help="LFSR random init, or fine-tune the committed model")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="only the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--lr-shift", type=int, default=None,
                   help="learning rate 2**-S in float terms (default: the init's)")
    p.add_argument("--rounding", choices=("nearest", "stochastic"), default="nearest",
                   help="rounding of the weight updates")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                   help="override a TrainFormat field (repeatable)")
    p.add_argument("--float", action="store_true",
                   help="also train the float SGD twin (random init: same init, order and "
                        "learning rate)")
    p.set_defaults(func=cmd_train_fixed)

    p = sub.add_parser("train-sim", help="on-chip training in RTL simulation against the "
                                         "golden trainer; cycles per training step")
    p.add_argument("--preset", action="append", default=None,
                   help="parallelism preset (repeatable; default: up5k and ecp5-85f)")
    p.add_argument("--steps", type=int, default=10, help="training steps (MNIST training images)")
    p.add_argument("--grad-lanes", type=int, default=None,
                   help="gradient lanes (default: the preset's)")
    p.add_argument("--rounding", choices=("nearest", "stochastic"), default="nearest")
    p.add_argument("--test-images", type=int, default=0,
                   help="MNIST test images classified after training")
    p.set_defaults(func=cmd_train_sim)

    p = sub.add_parser("bitstream", help="synthesize, place and route a board build, with report")
    p.add_argument("--board", default="icebreaker",
                   help="a board of boards/catalog/ (icebreaker, ulx3s, orangecrab, "
                        "tangprimer20k)")
    p.add_argument("--out", default="build", help="output folder (the build goes to OUT/BOARD)")
    p.add_argument("--baud", type=int, default=None,
                   help="the host link's line rate (default: the board's, 3 Mbaud; the "
                        "iCEBreaker's FT2232H takes 6000000): OUT/BOARD-<rate>mbaud")
    p.add_argument("--link", choices=("uart", "usb"), default=None,
                   help="the host link (default: the board's first; usb: the FPGA's own USB "
                        "port as a CDC-ACM serial device, the OrangeCrab): OUT/BOARD-<link> "
                        "when not the default")
    p.add_argument("--parallelism", default=None,
                   help="override fields of the board's preset, e.g. "
                        "conv_lanes=4,requant_parallel=1,dense_mults=4")
    p.add_argument("--train", choices=("random", "model"), default=None,
                   help="build with on-chip training from this starting point (cnnforge "
                        "train-board); the build goes to OUT/BOARD-train")
    p.add_argument("--model", default=None,
                   help="a model file (or a committed one's name, e.g. lenet.npz): a network "
                        "other than the seed is built as a layer-list accelerator in "
                        "OUT/BOARD-NAME")
    p.add_argument("--one-seed", action="store_true",
                   help="stop at the first placement that meets the clock (default: also place "
                        "with nextpnr's default seed and seeds 1 and 2, and report how many "
                        "meet it)")
    p.set_defaults(func=cmd_bitstream)

    p = sub.add_parser("program", help="load the board's bitstream (iceprog / openFPGALoader)")
    p.add_argument("--board", default="icebreaker")
    p.add_argument("--out", default="build")
    p.add_argument("--train", action="store_true",
                   help="the build with on-chip training (OUT/BOARD-train/)")
    p.set_defaults(func=cmd_program)

    p = sub.add_parser("classify", help="classify images on the board (or its simulation)")
    p.add_argument("images", nargs="*", help="image files (PNG, ...), scaled to the input size")
    p.add_argument("--mnist-index", type=int, action="append", default=[],
                   help="an MNIST test image by index (repeatable)")
    link_options(p, "icebreaker", "run the protocol against the board core in RTL simulation")
    p.add_argument("--mnist-range", default=None, metavar="A:B",
                   help="MNIST test images A..B-1 streamed (many in flight): accuracy, images/s")
    p.add_argument("--reply", choices=("class", "logits", "all"), default="class",
                   help="with --mnist-range: what each reply carries")
    p.add_argument("--sim-datapath", choices=("generic", "board"), default="generic",
                   help="--sim with the portable datapath, or the board's (vendor primitives "
                        "through Yosys's cell models; slower)")
    p.add_argument("--model", default=None, help="model file (default: the committed one)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("bench-link", help="images/s through a board's simulated pins (streamed "
                                          "frames, each reply mode) -> build/bench-link.json, .md")
    p.add_argument("--sim", action="store_true", help="simulate the board core (required)")
    p.add_argument("--board", action="append", default=None,
                   help="board (repeatable; default icebreaker)")
    p.add_argument("--images", type=int, default=100, help="MNIST test images per run")
    p.add_argument("--baud", type=int, action="append", default=None,
                   help="line rate (repeatable; default: the board's)")
    p.add_argument("--model", default=None, help="model file (default: the board's)")
    p.add_argument("--link", choices=("uart", "usb"), default=None,
                   help="the board's host link (default: its first; usb: packets of USB full "
                        "speed through the CDC-ACM device, the link-bound rate measured too)")
    p.set_defaults(func=cmd_bench_link)

    p = sub.add_parser("gatesim", help="the built netlist (Yosys's output, cell models) through "
                                       "its pins: model upload, MNIST images, fault cases")
    p.add_argument("--board", default="icebreaker")
    p.add_argument("--images", type=int, default=20, help="MNIST test images")
    p.add_argument("--out", default="build", help="the builds' folder (OUT/BOARD)")
    p.set_defaults(func=cmd_gatesim)

    p = sub.add_parser("train-board", help="train on the board (or its simulation) over UART, "
                                           "read the weights back and evaluate them")
    link_options(p, "ulx3s", "train the board core in RTL simulation instead")
    p.add_argument("--init", choices=("random", "model"), default="random",
                   help="the starting point the bitstream was built with (TRAIN=...)")
    p.add_argument("--steps", type=int, default=60000,
                   help="training images (batch 1; the host-side order of train-fixed)")
    p.add_argument("--eval", type=int, default=10000,
                   help="test images to evaluate the read-back weights on")
    p.add_argument("--device-checks", type=int, default=20,
                   help="of those, classified on the device too and compared bit for bit")
    p.add_argument("--no-verify", action="store_true",
                   help="do not run the golden trainer alongside")
    p.add_argument("--out", default=None, help="write the trained int8 model file here")
    p.set_defaults(func=cmd_train_board)

    p = sub.add_parser("report", help="summary table of the last `make sim` run")
    p.add_argument("--records", default="build/sim/summary.jsonl", help="simulation records")
    p.set_defaults(func=cmd_report)

    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.mnist_dir = args.sub_mnist_dir or args.mnist_dir
    args.quiet = args.sub_quiet or args.quiet
    import signal
    import threading

    def terminate(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM (kill, a CI timeout) ends a command as Ctrl-C does: its cleanup runs (a build
    # removes its unfinished folder, atomic writes their .part files). Only the main thread
    # may set handlers.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        args.func(args)
    except CnnforgeError as e:
        print(f"cnnforge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cnnforge {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
