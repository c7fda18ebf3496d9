"""The `tune-losses` command: spaces, sweep, up, down, sweeps, status, train, report, best, features, ui."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path

import yaml


def _overrides(pairs: list[str]) -> dict:
    from tune_losses import yaml_io

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not all(key.split(".")):
            raise ValueError(f"--set {pair!r} is not allowed: use --set path=value (e.g. train.epochs=3)")
        out[key] = yaml_io.loads(value, f"--set {pair!r}")
    return out


def _output_path(path: str, option: str, directory: bool = False) -> None:
    """An output path must be creatable: checked before any work (and before a store is opened)."""
    p = Path(path)
    if directory:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{option}={path!r} is a file; allowed: a directory (it is created if missing)")
    elif p.is_dir() or not p.parent.is_dir():
        why = f"{p} is a directory" if p.is_dir() else f"the directory {p.parent} does not exist"
        raise ValueError(f"{option}={path!r}: {why}; allowed: a file path in an existing directory")


@contextlib.contextmanager
def _reading(tracking_uri: str | None):
    """A read-only command's store: its server must take a connection, and every call is bounded, within
    TUNE_LOSSES_STORE_TIMEOUT s (default 10); a store that is down or failing is one line, exit 2, not minutes of
    MLflow's retries and a traceback."""
    from tune_losses import tracking

    uri = tracking_uri or tracking.default_tracking_uri()
    tracking.store.check_uri(uri)
    with tracking.store.bounded(uri) as timeout:
        tracking.store.probe(uri, timeout, call=False)  # a database's client would retry its connection ~100 s
        yield uri


def cmd_spaces(args) -> int:
    from tune_losses.spaces import describe_bundled

    rows = describe_bundled()
    width = max(len(n) for n, _ in rows)
    for name, desc in rows:
        print(f"{name:<{width}}  {desc}")
    return 0


def cmd_sweep(args) -> int:
    from tune_losses.spaces import load_space
    from tune_losses.tuning.runner import SweepInterrupted, print_summary, run_sweep

    if args.name is not None:
        from tune_losses.tuning.preflight import check_sweep_name

        check_sweep_name(args.name)
    overrides = _overrides(args.set)
    if args.dataset:
        overrides["train.dataset"] = {"name": args.dataset}
    if "train.dataset" in overrides:
        overrides["paper_dataset"] = None
    space, _, _ = load_space(args.space, overrides)  # validate before anything starts
    try:
        result = run_sweep(
            args.space,
            name=args.name,
            address=args.address,
            tracking_uri=args.tracking_uri,
            storage=args.storage,
            resume=args.resume,
            overrides=overrides,
            verbose=args.verbose,
            progress=True,
            warm_start=args.warm_start,
        )
    except SweepInterrupted as exc:
        again = [a for a in sys.argv[1:] if a != "--resume"] + ["--resume"]
        from tune_losses.tuning.resume import cli_command

        print(f"\n{exc}. Resume with: {shlex.join([*cli_command(), *again])}", file=sys.stderr)
        return 130
    print_summary(result, space.search.metric)
    return 0


def cmd_up(args) -> int:
    from tune_losses.tuning import warm_ray

    if args.num_cpus is not None and args.num_cpus < 1:
        raise ValueError(f"--num-cpus={args.num_cpus} is not allowed; allowed: an integer >= 1")
    info, already = warm_ray.up(args.num_cpus, driver_entry="tune_losses.cli:main")
    print(
        f"A warm Ray is {'already ' if already else ''}up: {info.describe()}.\n"
        f"Its {info.num_cpus} worker processes preload {', '.join(info.preload)} (torch, Ray Tune, MLflow); "
        f"`tune-losses sweep` joins it when no --address is given"
        + (
            f", its driver forked from a warm one (pid {info.driver_pid}) that has imported them too.\n"
            if info.driver_socket
            else ".\n"
        )
        + f"Stop it with `tune-losses down` (recorded in {warm_ray.state_file()})."
    )
    return 0


def cmd_down(args) -> int:
    from tune_losses.tuning import warm_ray

    info, stopped = warm_ray.down()
    if info is not None and stopped:
        print(f"Stopped the warm Ray ({info.describe()}).")
    elif info is not None:
        print(f"No warm Ray is up: the one recorded ({info.describe()}) is gone; its stale file is removed.")
    else:
        print("No warm Ray is up (nothing to stop).")
    return 0


def cmd_train(args) -> int:
    from pydantic import ValidationError

    from tune_losses import yaml_io
    from tune_losses.spaces import format_validation_error, set_path
    from tune_losses.training.config import TrainConfig
    from tune_losses.training.run import train_and_record

    path = Path(args.config)
    if not path.exists():
        raise ValueError(f"{path}: no such config file")
    _, doc = yaml_io.load_file(path)  # errors name the file: a directory, not UTF-8, malformed, a key twice
    doc = {} if doc is None else doc
    prefix = "train." if isinstance(doc, dict) and "train" in doc else ""
    data = doc.get("train", doc) if isinstance(doc, dict) else doc
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: invalid training config\n  {prefix.rstrip('.') or '(top level)'}: must be a "
            "mapping of training fields (dataset, model, loss, epochs, ...)"
        )
    for key, value in _overrides(args.set).items():
        try:
            set_path(data, tuple(key.removeprefix("train.").split(".")), value)
        except ValueError as exc:
            raise ValueError(f"{path}: --set {key}: {exc}") from None
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, str(path), "training config", prefix)) from None
    result = train_and_record(
        cfg,
        tracking_uri=args.tracking_uri,
        name=args.name or path.stem,
        sweep_run_id=doc.get("from_sweep"),
        register=args.register,
        progress=True,
    )
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    return 0 if result.get("status") == "completed" else 1


def cmd_report(args) -> int:
    from tune_losses.reports.build import build_report

    if args.out:
        _output_path(args.out, "--out", directory=True)
    from tune_losses import tracking

    out = args.out or tracking.run_dir() / "reports" / args.sweep  # where the sweep itself writes its report
    with _reading(args.tracking_uri):
        report = build_report(args.sweep, tracking_uri=args.tracking_uri, out_dir=out)
    print(report.markdown)
    print(f"\nWritten to {report.directory} and logged to the sweep's parent run under report/")
    return 0


def cmd_best(args) -> int:
    from tune_losses.reports.best import best_trial, export

    if args.export:
        _output_path(args.export, "--export")
    with _reading(args.tracking_uri):
        best = best_trial(args.sweep, tracking_uri=args.tracking_uri)
    print(
        f"best trial of {best['sweep']}: {best['trial']}  {best['metric']} = {best['value']:.4f} "
        f"(run {best['trial_run_id']})"
    )
    print("\n".join(best["protocol"]))
    print(yaml.safe_dump(best["train"], sort_keys=False))
    if args.export:
        print(f"exported to {export(best, args.export)}")
    return 0


def cmd_features(args) -> int:
    from tune_losses.data.features import compute_features

    path = compute_features(
        args.dataset,
        backbone=args.backbone,
        weights=args.weights,
        random_init=args.random_init,
        image_size=args.image_size,
        root=args.root,
        cache_dir=args.cache_dir,
        progress=True,
    )
    print(path)
    return 0


def cmd_sweeps(args) -> int:
    from tune_losses.tracking.sweeps import format_sweeps, list_sweeps

    with _reading(args.tracking_uri):
        rows = list_sweeps(args.tracking_uri)
    print(format_sweeps(rows))
    return 0


def cmd_status(args) -> int:
    from tune_losses import tracking
    from tune_losses.tracking.sweeps import format_status, sweep_status, waiting_driver

    try:
        with _reading(args.tracking_uri):
            status = sweep_status(args.sweep, args.tracking_uri)
    except tracking.store.StoreUnavailable as exc:  # what a driver of this machine knows, if one drives it
        raise tracking.store.StoreUnavailable(waiting_driver(args.sweep, args.tracking_uri, exc)) from None
    print(format_status(status))
    return 0


def cmd_ui(args) -> int:
    import os

    from tune_losses import tracking
    from tune_losses.tracking.sweeps import ui_url

    with _reading(args.tracking_uri) as uri:  # a scheme MLflow cannot serve, a store that is down: an error here
        page = ui_url(f"http://{args.host}:{args.port}", uri, args.sweep)  # an unknown sweep: error before starting
    print(f"MLflow UI for {tracking.redact(uri)}: {page}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", args.host, "--port", str(args.port), "--workers", "1"]
    # the store's URI (and any password in it) through the environment, never on a command line `ps` shows
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    os.execve(sys.executable, cmd, env)  # become the MLflow server: stopping this process stops it


READ_URI_HELP = (
    "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else runs/mlflow.db); a store that does not answer within "
    "TUNE_LOSSES_STORE_TIMEOUT seconds (default 10) is an error"
)


def _add_sweep_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run a sweep over a search space (a bundled name or a YAML path)")
    s.add_argument("space")
    s.add_argument("--name", help="the sweep's name (default: the space's)")
    s.add_argument(
        "--address",
        help="join an existing Ray cluster (default: RAY_ADDRESS, else the warm Ray of `tune-losses up`, else "
        "start one locally)",
    )
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    s.add_argument("--storage", help="where Ray Tune keeps trial checkpoints (reachable from every node)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep of this name")
    s.add_argument("--dataset", help="run the study on another data set (e.g. digits, fashion_mnist)")
    s.add_argument("--set", action="append", metavar="PATH=VALUE", help="override a field, e.g. train.epochs=3")
    s.add_argument(
        "--warm-start",
        metavar="EARLIER_SWEEP",
        help="start Optuna from an earlier sweep's results (searcher optuna; tuning/warm_start.py)",
    )
    s.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: Ray Tune's own tables instead of the progress display; -vv: also its logs",
    )
    s.set_defaults(func=cmd_sweep)


def _add_warm_parsers(sub) -> None:
    s = sub.add_parser(
        "up", help="keep a local Ray running between commands, its workers warm, for sweeps to join (`down` stops it)"
    )
    s.add_argument("--num-cpus", type=int, help="CPUs the warm Ray offers trials (default: all of this machine's)")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="stop the warm Ray that `tune-losses up` started (nothing up: nothing to do)")
    s.set_defaults(func=cmd_down)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune-losses", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("spaces", help="list the bundled search spaces")
    s.set_defaults(func=cmd_spaces)

    _add_sweep_parser(sub)
    _add_warm_parsers(sub)

    s = sub.add_parser("sweeps", help="the sweeps in the tracking store: status, trials, best, times")
    s.add_argument("--tracking-uri", help=READ_URI_HELP)
    s.set_defaults(func=cmd_sweeps)

    s = sub.add_parser("status", help="the state of one sweep (running, interrupted, finished), from MLflow alone")
    s.add_argument("sweep", help="the sweep's name or its parent run id")
    s.add_argument("--tracking-uri", help=READ_URI_HELP)
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("train", help="one training run from a config (e.g. exported by `best`)")
    s.add_argument("config")
    s.add_argument("--name")
    s.add_argument("--tracking-uri")
    s.add_argument("--set", action="append", metavar="PATH=VALUE", help="e.g. epochs=300, dataset.name=mnist_5k")
    s.add_argument("--register", metavar="NAME", help="also register the trained model under this name")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("report", help="rebuild the papers' tables of a sweep from MLflow (also after each sweep)")
    s.add_argument("sweep", help="the sweep's name or its parent run id")
    s.add_argument("--tracking-uri", help=READ_URI_HELP)
    s.add_argument("--out", help="directory for the Markdown / CSV / Parquet / PNG files")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("best", help="the best config of a sweep, optionally exported for `train`")
    s.add_argument("sweep")
    s.add_argument("--tracking-uri", help=READ_URI_HELP)
    s.add_argument("--export", metavar="PATH", help="write a config that `tune-losses train PATH` runs")
    s.set_defaults(func=cmd_best)

    s = sub.add_parser("features", help="compute and cache a frozen backbone's features as Parquet")
    s.add_argument("dataset")
    s.add_argument("--backbone", default="vgg16", choices=["vgg16", "resnet18", "googlenet"])
    s.add_argument("--weights", help="a local .pth state dict, or 'imagenet' (downloads)")
    s.add_argument("--random-init", action="store_true", help="use a randomly initialised backbone, explicitly")
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--root")
    s.add_argument("--cache-dir")
    s.set_defaults(func=cmd_features)

    s = sub.add_parser("ui", help="start the MLflow UI for the project's store on 127.0.0.1")
    s.add_argument("sweep", nargs="?", help="print this sweep's parent run page (default: the runs table)")
    s.add_argument("--tracking-uri", help=READ_URI_HELP)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # SpaceError included: file, field, what is allowed
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):  # one not formatted where it arose: the project's form, no URL
            from tune_losses.spaces import format_validation_error

            print(f"error: {format_validation_error(exc, exc.title, 'input')}", file=sys.stderr)
            return 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a sweep's trials started, or outside a sweep: nothing half-written
        if args.func is cmd_sweep:
            print(
                "\ninterrupted before the sweep's trials started: no trial was recorded. Run the same command "
                "again (with --resume if `tune-losses sweeps` lists the sweep)",
                file=sys.stderr,
            )
            return 130
        print("\ninterrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `tune-losses` command (and ``python -m tune_losses.cli``): handed to the warm driver of `tune-losses up`
    when one takes it (tuning/warm_command.py), else :func:`main`; then an exit that skips the interpreter's teardown
    of torch, Ray and MLflow (seconds of every command; tune_losses/_internals.py)."""
    from tune_losses.tuning.warm_command import hand_over

    code = hand_over(sys.argv[1:])
    if code is None:
        code = main()
    from tune_losses._internals import exit_without_teardown

    exit_without_teardown(code)


if __name__ == "__main__":
    run()
