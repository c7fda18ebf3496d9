"""Trial-epochs recorded per second in MLflow, with 1, 8 and 64 concurrent simulated trials, two designs side by side.

    python benchmarks/tracking_throughput.py                 # a local `mlflow server` on SQLite, 2 workers
    python benchmarks/tracking_throughput.py --epochs 20 --workers 4

- one writer: every trial's epoch goes into one in-memory queue on the driver, one thread writes them (the design
  before the ledger: what is queued is lost with the driver, and the rate is one thread's);
- each trial: every simulated trial writes its own run (tracking/ledger.py, as tuning/trial.py does).
A simulated trial reports ``--epochs`` epochs of ``--metrics`` metrics (a 4-replica trial reports about 60) as fast
as it can, so the figure is the store's rate, not training's. Both designs write the same rows through the same
ledger calls, against the same server, in one run; printed: trial-epochs per second and the ratio.
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tune_losses import tracking  # noqa: E402
from tune_losses.tracking.ledger import Ledger  # noqa: E402

from helpers import free_port, stop_server  # noqa: E402


def metrics(n: int, epoch: int) -> dict:
    return {f"m{i}": 0.5 + 1e-3 * epoch + 1e-6 * i for i in range(n)}


def one_writer(ledger: Ledger, trials: int, epochs: int, n: int) -> float:
    runs = [ledger.find_or_create(f"w{i}", f"trial {i}", {}).run_id for i in range(trials)]
    events: queue.Queue = queue.Queue()

    def writer():
        while True:
            item = events.get()
            if item is None:
                return
            run_id, epoch = item
            ledger.log_epoch(run_id, metrics(n, epoch), epoch)

    def trial(run_id):
        for epoch in range(1, epochs + 1):
            events.put((run_id, epoch))

    t0 = time.perf_counter()
    thread = threading.Thread(target=writer)
    thread.start()
    producers = [threading.Thread(target=trial, args=(r,)) for r in runs]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    events.put(None)
    thread.join()
    return trials * epochs / (time.perf_counter() - t0)


def each_trial(uri: str, exp: str, parent: str, trials: int, epochs: int, n: int) -> float:
    ledgers = [Ledger(uri, exp, parent) for _ in range(trials)]  # one client per trial, as in trial processes
    runs = [lg.find_or_create(f"e{i}", f"trial {i}", {}).run_id for i, lg in enumerate(ledgers)]

    def trial(lg, run_id):
        for epoch in range(1, epochs + 1):
            lg.log_epoch(run_id, metrics(n, epoch), epoch)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=trial, args=(lg, r)) for lg, r in zip(ledgers, runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return trials * epochs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--metrics", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    ap.add_argument(
        "--pool",
        type=int,
        default=32,
        help="the server's database connections per worker (+ as many "
        "overflow); MLflow's default, 5 + 10, refuses 64 concurrent writers",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{tmp}/mlflow.db",
                "--artifacts-destination",
                f"{tmp}/artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={
                **os.environ,
                "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(args.pool),
                "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(args.pool),
            },
        )
        _wait(port)
        try:
            uri = f"http://127.0.0.1:{port}"
            c = tracking.client(uri)
            exp = tracking.experiment_id(c)
            print(
                f"MLflow server on SQLite, {args.workers} worker(s); {args.epochs} epochs x {args.metrics} metrics "
                "per simulated trial"
            )
            print(f"{'trials':>6}  {'one writer':>14}  {'each trial':>14}  ratio")
            for n in args.trials:
                parent = c.create_run(exp).info.run_id
                before = one_writer(Ledger(c, exp, parent), n, args.epochs, args.metrics)
                parent = c.create_run(exp).info.run_id
                after = each_trial(uri, exp, parent, n, args.epochs, args.metrics)
                print(f"{n:>6}  {before:>10.1f} e/s  {after:>10.1f} e/s  {after / before:.2f}", flush=True)
        finally:
            stop_server(server)


def _wait(port: int, timeout: float = 240) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


if __name__ == "__main__":
    main()
