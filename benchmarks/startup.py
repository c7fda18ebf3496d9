"""How long `tune-losses sweep` takes to get its first trial running, cold (its own Ray) and warm (joining the Ray
of `tune-losses up`, tuning/warm_ray.py), side by side, and where that time goes.

It runs `tune-losses up` once in a home of its own, then each round two sweeps of the real command, each in a
tracking store that exists (the researcher's next sweep): a cold one in a fresh directory, which starts its own
local Ray, and a warm one in the `up` home, which joins the warm Ray once its workers are idle:

    tune-losses sweep quickstart --tracking-uri sqlite:///<tmp>/mlflow.db --storage <tmp>/ray --name ...

It watches the store (read-only, with sqlite3) for the first trial's MLflow run (a trial creates its run as its
first act) and the first epoch it records, and the time the command printed its first line (the driver's imports
and checks done). At the moment the first trial runs it reads the CPU seconds every process of the command's
session has used so far, by kind (the driver, Ray's own processes, the worker processes; a warm Ray's processes
are not the command's), then kills the command and the Ray it started. The steps' own costs are timed apart, each
in a fresh interpreter: the driver's imports, creating the store, starting Ray. `tune-losses down` ends the run.

    .venv/bin/python benchmarks/startup.py [--rounds 3] [--space quickstart] [--trees . /path/to/old/checkout]

Its last line: `first trial: cold <s> s, warm <s> s` (medians, of the last tree given).

Goal (issue 22): the first trial running <= 3 s after the command with a warm local Ray; cold no slower than
before. Both met. On the 2-CPU development machine, quiet (load average ~1):
- `--rounds 5 --no-steps` (this code, the warm driver of `up` forking each sweep, tuning/warm_driver.py): cold
  16.12 s (rounds 14.30-16.19), warm 2.04 s (1.99, 2.04, 2.04, 2.06, 2.06): the warm sweep's header at 1.08 s, its
  first epoch recorded at 2.48 s, 1.2 CPU seconds in its processes (the command and the forked driver); `up` 5.1 s.
- `--rounds 3 --no-steps --trees <worktree of 8ee2fcd, before the warm driver> <this checkout>`, side by side:
  cold 16.17 s vs 16.41 s; warm 4.65 s (header at 3.70 s: the driver's own imports, 4.0 CPU seconds) vs 2.08 s
  (rounds 5.75, 2.02, 2.08; the first round's outlier did not come back in the 5 rounds above).
- Earlier (session 10), `--trees <worktree of 1095c04> ...`: cold 18.46 s at 1095c04.
The cold figures include ~8.6 CPU seconds of workers importing torch and the trial code, which the warm Ray
spends once, at `up` and after each sweep, while nothing else runs; and ~4.8 CPU seconds of the driver's imports,
which the warm driver spent once, at `up`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: the command as a user runs it, but through the module (what a tree on PYTHONPATH, old or new, has for sure)
CLI = [sys.executable, "-m", "tune_losses.cli"]
# How often the store is read. Not much more often: a reader of a SQLite store holds writers off while it reads,
# and polling a new store every 20 ms held a trial's first epoch back by ~30 s.
POLL_S = 0.2
TICK = os.sysconf("SC_CLK_TCK")
KINDS = [  # (kind, what its command line holds), first match wins
    ("driver", "tune_losses.tuning.warm_driver"),  # a sweep forked from the warm driver of `up`
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


def session_cpu(sid: int, forked_by: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """CPU seconds (user + system) so far of every process in session ``sid``, and their number, by kind; with
    ``forked_by`` (the warm driver's pid), also of the sessions its children lead (a forked sweep's own)."""
    out: dict[str, float] = {}
    count: dict[str, int] = {}
    stats = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stats[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    sessions = {sid} | {int(pid) for pid, fields in stats.items() if forked_by and int(fields[1]) == forked_by}
    for pid, fields in stats.items():
        if int(fields[3]) not in sessions:  # fields after the name: state ppid pgrp session ...
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
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


def store(tmp: str) -> str:
    """A tracking store that exists (its migrations run), as in a project's next sweep."""
    uri = f"sqlite:///{tmp}/mlflow.db"
    code = "import sys, tune_losses.tracking as t; t.experiment_id(t.client(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, uri], check=True, capture_output=True)
    return uri


def environment(tmp: str, tree: str | None) -> dict:
    env = {**os.environ, "TUNE_LOSSES_HOME": tmp}
    env.pop("RAY_ADDRESS", None)
    return {**env, "PYTHONPATH": tree} if tree else env


def one_sweep(tmp: str, name: str, space: str, sets: list[str], timeout: float, tree: str | None) -> dict:
    """One `tune-losses sweep` with its home in ``tmp`` (a warm Ray recorded there is joined), of the package in
    ``tree`` (a checkout, e.g. a git worktree of an earlier commit; None: the installed one)."""
    db = Path(tmp) / "mlflow.db"
    cmd = [*CLI, "sweep", space, "--tracking-uri", f"sqlite:///{db}"]
    cmd += ["--storage", f"{tmp}/ray", "--name", name] + [a for s in sets for a in ("--set", s)]
    start = time.time()
    proc = subprocess.Popen(
        cmd,
        cwd=tmp,
        env=environment(tmp, tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    header: list[float] = []  # when the sweep printed its first line: the driver's imports and checks done
    threading.Thread(target=lambda: header.extend(time.time() for _ in proc.stdout), daemon=True).start()
    running = epoch = None
    cpu: dict[str, float] = {}
    count: dict[str, int] = {}
    try:
        while time.time() - start < timeout and proc.poll() is None:
            if running is None:
                running, _ = first_trial(db, name)
                if running is not None:
                    cpu, count = session_cpu(proc.pid, warm_driver_pid(tmp))
            else:
                _, epoch = first_trial(db, name)
                if epoch is not None:
                    break
            time.sleep(POLL_S)
    finally:
        kill_session(proc.pid)  # the driver (and a Ray it started); a warm Ray lives in a session of its own
        err = proc.communicate()[1].decode(errors="replace")
    if running is None:
        raise SystemExit(f"no trial ran within {timeout:.0f} s; the command's stderr:\n{err[-3000:]}")
    return {
        "running": running - start,
        "epoch": (epoch - start) if epoch else float("nan"),
        "header": (header[0] - start) if header else float("nan"),
        "cpu": cpu,
        "n": count,
    }


def warm_driver_pid(tmp: str) -> int:
    """The pid of the warm driver of the `up` in ``tmp`` (0: none): a warm sweep's driver is its child."""
    try:
        return int(json.loads((Path(tmp) / "warm-ray.json").read_text()).get("driver_pid", 0))
    except (OSError, ValueError):
        return 0


def warm_up(tmp: str, tree: str | None) -> float:
    """`tune-losses up` in ``tmp``; the seconds it took."""
    start = time.time()
    subprocess.run([*CLI, "up"], cwd=tmp, env=environment(tmp, tree), check=True)
    return time.time() - start


def wait_warm(tmp: str, timeout: float = 180) -> None:
    """Until the warm Ray's workers are idle and done importing (its session quiet for a second): a sweep then
    finds them warm, as one started a while after `up` (or after the last sweep) does."""
    pid = json.loads((Path(tmp) / "warm-ray.json").read_text())["pid"]
    deadline = time.time() + timeout
    before = sum(session_cpu(pid)[0].values())
    while time.time() < deadline:
        time.sleep(1.0)
        now = sum(session_cpu(pid)[0].values())
        if now - before < 0.1:
            return
        before = now
    print(f"note: the warm Ray's workers were still busy after {timeout:g} s", file=sys.stderr)


def warm_down(tmp: str, tree: str | None) -> None:
    subprocess.run([*CLI, "down"], cwd=tmp, env=environment(tmp, tree), check=True)


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


def has_warm_ray(tree: str | None) -> bool:
    """Whether the checkout (None: the installed package) has `tune-losses up` (an older one is timed cold only)."""
    import importlib.util

    root = Path(tree) / "tune_losses" if tree else Path(importlib.util.find_spec("tune_losses").origin).parent
    return (root / "tuning" / "warm_ray.py").is_file()


def run_rounds(args, sets: list[str]) -> dict[tuple, list[dict]]:
    """Each round, per tree: a cold sweep (its own Ray) in a fresh home, then a warm one in the home of one
    `tune-losses up` kept for all rounds; both in a store that exists. Cold and warm alternate, so that a change
    of the machine's load falls on both."""
    cases: dict[tuple, list[dict]] = {(tree, kind): [] for tree in args.trees for kind in ("cold", "warm")}
    homes = {tree: tempfile.mkdtemp(prefix="startup-warm-") for tree in args.trees if has_warm_ray(tree)}
    try:
        for tree, home in homes.items():
            store(home)
            cases[tree, "up"] = [{"s": warm_up(home, tree)}]
        for i in range(args.rounds):
            for tree in args.trees:
                with tempfile.TemporaryDirectory() as tmp:
                    store(tmp)
                    cases[tree, "cold"].append(one_sweep(tmp, "cold", args.space, sets, args.timeout, tree))
                home = homes.get(tree)
                if home is None:
                    continue
                wait_warm(home)
                cases[tree, "warm"].append(one_sweep(home, f"warm{i}", args.space, sets, args.timeout, tree))
    finally:
        for tree, home in homes.items():
            warm_down(home, tree)
            shutil.rmtree(home, ignore_errors=True)
    return cases


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
    parser.add_argument("--no-steps", action="store_true", help="skip timing each step alone")
    args = parser.parse_args()
    sets = ["train.epochs=2", "search.scheduler.name=fifo"]
    cases = run_rounds(args, sets)
    med = statistics.median
    print(f"`tune-losses sweep {args.space}` in a store that exists, {os.cpu_count()} CPUs, median of {args.rounds}")
    for tree in args.trees:
        up = cases.get((tree, "up"))
        print(f"{tree or 'installed package'}: " + (f"`tune-losses up` took {up[0]['s']:.1f} s" if up else "no `up`"))
        for kind, what in (("cold", "its own Ray"), ("warm", "the warm Ray of `tune-losses up`")):
            runs = cases[tree, kind]
            if not runs:
                continue
            print(
                f"  {kind} ({what}): first trial running {med(r['running'] for r in runs):.2f} s after the command "
                f"started (goal <= 3 s warm; rounds: {', '.join(format(r['running'], '.2f') for r in runs)}); "
                f"its header printed at {med(r['header'] for r in runs):.2f} s, its first epoch recorded at "
                f"{med(r['epoch'] for r in runs):.2f} s"
            )
            kinds = sorted({k for r in runs for k in r["cpu"]})
            total = med(sum(r["cpu"].values()) for r in runs)
            print(f"    CPU seconds the command's own processes used until then ({total:.1f} s in all):")
            for k in kinds:
                n = med(r["n"].get(k, 0) for r in runs)
                print(f"      {k:<22} {med(r['cpu'].get(k, 0.0) for r in runs):6.2f} s   ({n:g} processes)")
    if not args.no_steps:
        print("each step alone, in a fresh interpreter (median):")
        for label, code in STEPS.items():
            print(f"  {label:<45} {med(timed(code) for _ in range(args.rounds)):6.2f} s")
    last = args.trees[-1]
    cold = med(r["running"] for r in cases[last, "cold"])
    warm = f"{med(r['running'] for r in cases[last, 'warm']):.2f} s" if cases[last, "warm"] else "none (no `up`)"
    print(f"first trial: cold {cold:.2f} s, warm {warm}")


if __name__ == "__main__":
    main()
