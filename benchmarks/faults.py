"""Kill the sweep's driver at many points, resume after each, and check that MLflow holds each trial exactly once.

    python benchmarks/faults.py --points 12          # 12 kill points spread over a 4-trial DAL grid on digits
    python benchmarks/faults.py --points 6 --tear    # and tear Ray Tune's state files as a kill mid-write does

Each point: a fresh store; `tune-losses sweep` in its own process group; SIGKILL of the driver and the local Ray
it started after a delay drawn over the length of an uninterrupted sweep (from before Ray has started to after
the last trial, before the report); optionally Ray Tune's newest state files emptied or the whole storage
directory deleted; `--resume`, itself killed once at another point and resumed again. Then the audit
(tune_losses.tracking.ledger.audit): one parent FINISHED, one FINISHED run per trial, every epoch logged once and
none missing; and trials that had finished before a kill were not trained again (their runs' end times are
unchanged). Prints one line per point and how many points left a whole record.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

GRID = [5.0, 10.0, 15.0, 20.0]


def write_space(directory: Path, name: str, epochs: int = 6) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    space = {
        "name": name,
        "train": {
            "dataset": {"name": "digits"},
            "model": {"name": "mlp"},
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "batch_size": 64,
            "epochs": epochs,
            "repeats": 1,
        },
        "params": {"loss.a": {"grid": GRID}},
        "search": {"searcher": "grid", "max_concurrent": 2, "scheduler": {"name": "fifo"}},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def command(space: Path, directory: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tune_losses.cli",
        "sweep",
        str(space),
        "--tracking-uri",
        f"sqlite:///{directory}/mlflow.db",
        "--storage",
        str(directory / "ray"),
    ]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": "", "TUNE_LOSSES_HOME": str(log.parent / "home")}
    return subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the driver's process group (the driver and the local Ray it started) after ``delay`` seconds;
    False when it had already ended by then."""
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1)  # let the raylet's children notice their parent is gone
        return True


def tear_ray_state(storage: Path) -> list[str]:
    """Empty the newest of Ray Tune's state files, as a driver killed while rewriting them in place leaves them."""
    torn = []
    for pattern in ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json"):
        files = sorted(storage.rglob(pattern), key=lambda p: p.stat().st_mtime)
        if files:
            files[-1].write_text("")
            torn.append(files[-1].name)
    return torn


def _query(uri: str, sql: str, *args) -> list[tuple]:
    """A read-only query of the SQLite store with sqlite3 itself: opening it with MLflow while the sweep creates it
    would run MLflow's schema migration twice at once."""
    import sqlite3

    db = Path(uri.removeprefix("sqlite:///"))
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # the tables are not made yet
        return []


TRIALS = """SELECT k.value, r.end_time, r.status FROM runs r
    JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'tune_losses.trial_key'
    JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'tune_losses.sweep' AND s.value = ?
    WHERE r.lifecycle_stage = 'active'"""


def finished_end_times(uri: str, name: str) -> dict[str, int]:
    """Trial key -> end time of every FINISHED trial run of the sweep."""
    return {k: end for k, end, status in _query(uri, TRIALS, name) if status == "FINISHED"}


def epochs_logged(uri: str, name: str) -> int:
    return (
        _query(
            uri,
            f"SELECT count(*) FROM metrics m WHERE m.key = 'epoch' AND m.run_uuid IN "
            f"(SELECT r.run_uuid FROM ({TRIALS.replace('k.value, r.end_time, r.status', 'r.run_uuid')}) r)",
            name,
        )[0][0]
        if Path(uri.removeprefix("sqlite:///")).exists()
        else 0
    )


def check(uri: str, name: str, epochs: int, before: dict[str, int]) -> list[str]:
    from tune_losses import tracking
    from tune_losses.tracking.ledger import audit

    c = tracking.client(uri)
    parent = tracking.find_sweep(c, name)
    if parent is None:
        return ["no parent run"]
    problems = audit(c, parent.info.run_id, parent.info.experiment_id, epochs)
    if parent.info.status != "FINISHED":
        problems.append(f"parent run {parent.info.status}")
    after = finished_end_times(uri, name)
    if len(after) != len(GRID):
        problems.append(f"{len(after)} finished trial runs for {len(GRID)} trials")
    problems += [f"trial {k} trained again after it had finished" for k, t in before.items() if after.get(k) != t]
    return problems


def kill_and_resume(
    directory: Path,
    name: str,
    delays: tuple[float, float],
    tear: bool = False,
    drop_storage: bool = False,
    epochs: int = 6,
) -> tuple[list[str], str]:
    """One kill point: sweep, kill after delays[0], (tear / drop), resume, kill after delays[1], resume again."""
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    space = write_space(directory, name, epochs)
    cmd, log, uri = command(space, directory), directory / "driver.log", f"sqlite:///{directory}/mlflow.db"
    what = []
    first = start(cmd, log)
    if not kill_after(first, delays[0]):
        return check(uri, name, epochs, {}), "ended before the kill"
    what.append(f"killed at {delays[0]:.1f} s")
    if tear:
        what.append(f"tore {','.join(tear_ray_state(directory / 'ray')) or 'nothing'}")
    if drop_storage:
        shutil.rmtree(directory / "ray", ignore_errors=True)
        what.append("deleted the storage")
    before = finished_end_times(uri, name)
    # a kill before the parent run existed leaves nothing to resume: the user starts the sweep again
    second = start(cmd + ["--resume"] if _has_parent(uri, name) else cmd, log)
    if kill_after(second, delays[1]):
        what.append(f"its resume killed at {delays[1]:.1f} s")
        before = finished_end_times(uri, name)  # every trial finished so far: none may be trained again
        with open(log, "a") as out:
            third = subprocess.run(
                cmd + ["--resume"] if _has_parent(uri, name) else cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                env={**os.environ, "RAY_ADDRESS": "", "TUNE_LOSSES_HOME": str(directory / "home")},
            )
        returncode = third.returncode
    else:
        returncode = second.returncode
    if returncode != 0:
        return [f"resume exited with {returncode} (see {log})"], "; ".join(what)
    return check(uri, name, epochs, before), "; ".join(what)


def _has_parent(uri: str, name: str) -> bool:
    return bool(
        _query(
            uri,
            "SELECT 1 FROM tags WHERE key = 'tune_losses.sweep' AND value = ? AND run_uuid IN "
            "(SELECT run_uuid FROM tags WHERE key = 'tune_losses.role' AND value = 'sweep')",
            name,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=12)
    ap.add_argument("--tear", action="store_true", help="also empty Ray Tune's newest state files at each kill")
    ap.add_argument("--drop-storage", action="store_true", help="also delete Ray's storage directory at each kill")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default="runs/faults")
    args = ap.parse_args()
    root = Path(args.dir).resolve()
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    base = subprocess.run(
        command(write_space(root / "base", "base"), root / "base"),
        capture_output=True,
        env={**os.environ, "RAY_ADDRESS": "", "TUNE_LOSSES_HOME": str(root / "base" / "home")},
    )
    length = time.perf_counter() - t0
    assert base.returncode == 0, base.stdout[-2000:]
    print(f"an uninterrupted sweep takes {length:.1f} s (start-up, 4 trials x 6 epochs, report)")
    rng = random.Random(args.seed)
    good = ended = 0
    for i in range(args.points):
        delays = ((i + rng.random()) * length / args.points, rng.uniform(0.5, length))
        problems, what = kill_and_resume(
            root / f"p{i}", f"p{i}", delays, tear=args.tear, drop_storage=args.drop_storage
        )
        missed = what == "ended before the kill"
        ended += missed
        good += not problems and not missed
        print(f"point {i + 1:2d}: {what}: {'whole' if not problems else '; '.join(problems)}", flush=True)
    print(
        f"{good} of {args.points - ended} kill points left exactly one finished run per trial, none RUNNING, every "
        f"epoch once, finished trials not retrained ({ended} sweeps ended before their kill point: the machine ran "
        "faster than when the sweep's length was measured)"
    )


if __name__ == "__main__":
    main()
