"""How long `tune-losses sweep` takes to get its first trial running, and where that time goes.

Each round runs the real command twice in a fresh directory, each time with a fresh local Ray on the bundled
digits: first in a new SQLite store (a project's first sweep), then another sweep in the same store (the
researcher's next sweep):

    tune-losses sweep quickstart --tracking-uri sqlite:///<tmp>/mlflow.db --storage <tmp>/ray --name first ...

It watches the store (read-only, with sqlite3) for the first trial's MLflow run (a trial creates its run as its
first act) and the first epoch it records. At the moment the first trial runs it reads the CPU seconds every
process of the command's session has used so far, by kind (the driver, Ray's own processes, the worker
processes), then kills the command and its Ray. The steps' own costs are timed apart, each in a fresh interpreter: the
driver's imports, creating the store, starting Ray.

    .venv/bin/python benchmarks/startup.py [--rounds 3] [--space quickstart] [--trees . /path/to/old/checkout]

Goal (issue 15): the first trial running <= 3 s after the command starts, on 2 CPUs, Ray's start included. Not
met: `--rounds 3 --trees <checkout of 9f3009f> .` on the idle 2-CPU development machine, twice: 15.3 and 17.7 s
before Ray started in a thread and the driver stopped importing the trial module, 12.3 and 14.1 s after (a new
store; 11.7 and 14.1 s for the next sweep in it). About 21 CPU seconds are spent before the first trial runs, ~11
of them in Ray's worker processes importing torch (with torch._dynamo, which every torch.optim step imports),
MLflow and Ray Tune, the rest in the driver's imports and Ray's own services: 10 s or more on two cores, however
it is ordered. 3 s would need trial processes kept warm between commands (Ray ends a job's workers with its
driver).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# How often the store is read. Not much more often: a reader of a SQLite store holds writers off while it reads,
# and polling a new store every 20 ms held a trial's first epoch back by ~30 s.
POLL_S = 0.2
TICK = os.sysconf("SC_CLK_TCK")
KINDS = [  # (kind, what its command line holds), first match wins
    ("driver", "tune_losses.cli"),
    ("driver", "tune-losses"),
    ("ray: python services", "ray::DashboardAgent"),
    ("ray: python services", "ray::RuntimeEnvAgent"),
    ("workers", "ray::"),
    ("workers", "default_worker.py"),
    ("ray: gcs, raylet", "gcs_server"),
    ("ray: gcs, raylet", "raylet"),
    ("ray: python services", "ray/"),
]


def session_cpu(sid: int) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds (user + system) so far of every process in session ``sid``, and their number, by kind."""
    out: dict[str, float] = {}
    count: dict[str, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) != sid:  # fields after the name: state ppid pgrp session ...
            continue
        kind = next((k for k, needle in KINDS if needle in cmd), "other")
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
        count[kind] = count.get(kind, 0) + 1
    return out, count


def kill_session(sid: int) -> None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def first_trial(db: Path, sweep: str) -> tuple[float | None, float | None]:
    """(start of the sweep's first trial run, time of the first epoch a trial of it recorded), epoch seconds."""
    if not db.exists():
        return None, None
    trials = (
        "select r.run_uuid, r.start_time from runs r join tags t on t.run_uuid = r.run_uuid "
        "join tags p on p.run_uuid = r.run_uuid join runs parent on parent.run_uuid = p.value "
        "where t.key = 'tune_losses.trial_key' and p.key = 'mlflow.parentRunId' and parent.name = ?"
    )
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            started = con.execute(f"select min(start_time) from ({trials})", (sweep,)).fetchone()[0]
            epoch = con.execute(
                f"select min(m.timestamp) from metrics m join ({trials}) t on t.run_uuid = m.run_uuid "
                "where m.key = 'epoch'",
                (sweep,),
            ).fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # the store is being created or migrated
        return None, None
    return (started / 1000 if started else None), (epoch / 1000 if epoch else None)


def one_sweep(tmp: str, name: str, space: str, sets: list[str], timeout: float, tree: str | None) -> dict:
    """One `tune-losses sweep` in ``tmp``, of the package in ``tree`` (a checkout, e.g. a git worktree of an
    earlier commit; None: the installed one)."""
    db = Path(tmp) / "mlflow.db"
    cmd = [str(VENV_BIN / "tune-losses"), "sweep", space, "--tracking-uri", f"sqlite:///{db}"]
    cmd += ["--storage", f"{tmp}/ray", "--name", name] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    start = time.time()
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    running = epoch = None
    cpu: dict[str, float] = {}
    count: dict[str, int] = {}
    try:
        while time.time() - start < timeout and proc.poll() is None:
            if running is None:
                running, _ = first_trial(db, name)
                if running is not None:
                    cpu, count = session_cpu(proc.pid)
            else:
                _, epoch = first_trial(db, name)
                if epoch is not None:
                    break
            time.sleep(POLL_S)
    finally:
        kill_session(proc.pid)
        err = proc.communicate()[1].decode(errors="replace")
    if running is None:
        raise SystemExit(f"no trial ran within {timeout:.0f} s; the command's stderr:\n{err[-3000:]}")
    return {"running": running - start, "epoch": (epoch - start) if epoch else float("nan"), "cpu": cpu, "n": count}


def timed(code: str, env: dict | None = None) -> float:
    """Seconds a fresh interpreter takes to run ``code`` (which sets ``t`` to its own measurement)."""
    out = subprocess.run(
        [sys.executable, "-c", f"import time; t0 = time.perf_counter()\n{code}\nprint(t)"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return float(out.stdout.strip().splitlines()[-1])


STEPS = {
    "python + the CLI's own imports": "import tune_losses.cli\nt = time.perf_counter() - t0",
    "import tune_losses.spaces (torch, pydantic)": "import tune_losses.spaces\nt = time.perf_counter() - t0",
    "import the runner (mlflow, ray)": "import tune_losses.tuning.runner\nt = time.perf_counter() - t0",
    "import ray.tune": "import ray.tune\nt = time.perf_counter() - t0",
    "a new SQLite store (MLflow's migrations)": (
        "import tempfile, tune_losses.tracking as tr\nd = tempfile.mkdtemp()\nt1 = time.perf_counter()\n"
        "tr.client(f'sqlite:///{d}/m.db'); tr.experiment_id(tr.client(f'sqlite:///{d}/m.db'))\n"
        "t = time.perf_counter() - t1"
    ),
    "ray.init (local, 2 CPUs, workers preloading)": (
        "from tune_losses.tuning.ray_runtime import init_ray\nt1 = time.perf_counter()\n"
        "init_ray(num_cpus=2, verbose=0)\nt = time.perf_counter() - t1\nimport ray; ray.shutdown()"
    ),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each sweep timed once per round); medians")
    parser.add_argument("--space", default="quickstart", help="the space the sweeps run (bundled name or path)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a sweep may take to start a trial")
    parser.add_argument(
        "--trees",
        nargs="+",
        default=[None],
        help="checkouts to compare, each round alternating (e.g. a `git worktree` of an earlier commit); "
        "default: the installed package",
    )
    args = parser.parse_args()
    sets = ["train.epochs=2", "search.scheduler.name=fifo"]
    labels = ("a new store (a project's first sweep)", "the store exists (the next sweep)")
    cases: dict[tuple, list[dict]] = {(tree, label): [] for tree in args.trees for label in labels}
    for _ in range(args.rounds):
        for tree in args.trees:
            with tempfile.TemporaryDirectory() as tmp:
                for label, name in zip(labels, ("first", "next")):
                    cases[tree, label].append(one_sweep(tmp, name, args.space, sets, args.timeout, tree))
    med = statistics.median
    print(
        f"`tune-losses sweep {args.space}`, a fresh local Ray each time, {os.cpu_count()} CPUs, median of {args.rounds}"
    )
    for (tree, label), runs in cases.items():
        print(f"{tree or 'installed package'}, {label}:")
        print(
            f"  first trial running {med(r['running'] for r in runs):.2f} s after the command started (goal <= 3 s; "
            f"rounds: {', '.join(format(r['running'], '.2f') for r in runs)}); its first epoch recorded "
            f"{med(r['epoch'] for r in runs):.2f} s"
        )
        kinds = sorted({k for r in runs for k in r["cpu"]})
        total = med(sum(r["cpu"].values()) for r in runs)
        print(f"  CPU seconds used until then, by process ({total:.1f} s in all):")
        for k in kinds:
            n = med(r["n"].get(k, 0) for r in runs)
            print(f"    {k:<22} {med(r['cpu'].get(k, 0.0) for r in runs):6.2f} s   ({n:g} processes)")
    print("each step alone, in a fresh interpreter (median):")
    for label, code in STEPS.items():
        print(f"  {label:<45} {med(timed(code) for _ in range(args.rounds)):6.2f} s")


if __name__ == "__main__":
    main()
