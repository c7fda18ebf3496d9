"""`tune-losses up` -> sweeps -> `down` through the real CLI and a real Ray (tuning/warm_ray.py): sweeps with no
--address join the warm Ray and are forked from its warm driver (their header says both) with a local SQLite
store, a Ctrl-C (passed on to the forked driver) stops a sweep's trials and
leaves the warm Ray up, and a warm Ray killed without `down` (a reboot) leaves a file that is found stale."""

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import write_space

WARM_HEADER = "Ray: warm local runtime from `tune-losses up`"


def cli(home, *args, timeout=600):
    env = {**os.environ, "TUNE_LOSSES_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "tune_losses.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def interrupt_once_started(home, space):
    """A sweep sent SIGINT (what Ctrl-C sends) once its first trial has started: (exit code, its output)."""
    env = {**os.environ, "TUNE_LOSSES_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_losses.cli", "sweep", str(space), "--name", "stopped"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if ": started" in line:
            proc.send_signal(signal.SIGINT)
            break
    lines += proc.communicate(timeout=300)[0].splitlines(keepends=True)
    return proc.returncode, "".join(lines)


@pytest.fixture
def home(tmp_path):
    yield tmp_path
    from tune_losses.tuning import warm_ray

    os.environ["TUNE_LOSSES_HOME"] = str(tmp_path)
    try:
        info = warm_ray.read()
        if info is not None and warm_ray.keeper_alive(info.pid):  # a failed test must not leave its Ray running
            os.killpg(info.pid, signal.SIGKILL)
    finally:
        os.environ.pop("TUNE_LOSSES_HOME")


def test_up_sweeps_ctrl_c_and_down(home):
    from tune_losses.tuning import warm_ray

    space = write_space(home / "s.yaml", train={"epochs": 1, "repeats": 1})
    first = cli(home, "up", "--num-cpus", "2")
    assert first.returncode == 0 and "A warm Ray is up: address " in first.stdout, first.stderr[-3000:]
    assert "tune_losses.tuning.trial" in first.stdout and "tune-losses down" in first.stdout
    again = cli(home, "up")
    assert again.returncode == 0 and "A warm Ray is already up" in again.stdout
    os.environ["TUNE_LOSSES_HOME"] = str(home)
    info = warm_ray.read()
    for name in ("one", "two"):  # the second joins the workers the keeper started again after the first
        out = cli(home, "sweep", str(space), "--name", name)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"{WARM_HEADER} (address {info.address}" in out.stdout
        assert f"driver: forked from the warm driver of `tune-losses up` (pid {info.driver_pid})" in out.stdout
        assert "at a time). Joining the warm Ray..." in out.stdout
        assert "Sweep '" + name + "': 2 trials: 2 completed" in out.stdout
        assert len(list((home / "ray" / name).glob("*/tune"))) == 1  # Ray Tune's files under its parent run id
    long = write_space(home / "long.yaml", train={"epochs": 200, "repeats": 1})
    code, output = interrupt_once_started(home, long)
    assert code == 130 and "interrupted" in output and WARM_HEADER in output, output[-3000:]
    assert warm_ray.find() == info and warm_ray.keeper_alive(info.pid)  # the warm Ray stays up
    after = cli(home, "sweep", str(space), "--name", "after")
    assert after.returncode == 0 and WARM_HEADER in after.stdout, after.stdout[-3000:] + after.stderr[-3000:]
    down = cli(home, "down")
    assert down.returncode == 0 and "Stopped the warm Ray" in down.stdout
    assert not warm_ray.keeper_alive(info.pid) and not warm_ray.state_file().exists()
    assert not os.path.exists(f"/proc/{info.driver_pid}") and not os.path.exists(info.driver_socket)
    assert "No warm Ray is up (nothing to stop)" in cli(home, "down").stdout


JOB = """
import os, sys, ray
from tune_losses.tuning import warm_ray
info = warm_ray.find()
info.join_env()
ray.init(address=info.address)
print("PID", ray.get(ray.remote(num_cpus=1)(lambda: os.getpid()).remote(), timeout=120))
"""


def warm_pids(session: int) -> set[int]:
    return {
        int(pid)
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if _in(session, pid) and open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::IDLE")
    }


def _in(session: int, pid: str) -> bool:
    try:
        return os.getsid(int(pid)) == session
    except OSError:
        return False


def one_new_waits(session: int, ended: set[int]) -> bool:
    pids = warm_pids(session)
    return len(pids) == 1 and not pids & ended


def wait_for(what, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not what() and time.monotonic() < deadline:
        time.sleep(0.5)
    return what()


def test_the_keeper_starts_warm_workers_again_after_a_job_ends(home):
    """Ray ends a job's workers with its driver; the keeper asks for new ones, so the next job finds one warm."""
    from tune_losses.tuning import warm_ray

    assert cli(home, "up", "--num-cpus", "1").returncode == 0
    os.environ["TUNE_LOSSES_HOME"] = str(home)
    info = warm_ray.read()
    env = {**os.environ, "TUNE_LOSSES_HOME": str(home)}
    seen: list[tuple[int, int]] = []
    for _ in range(2):
        ran = {r for _, r in seen}  # the last job's worker ends with it; a new one must wait instead
        assert wait_for(lambda ran=ran: one_new_waits(info.pid, ran)), f"no new warm worker waits ({ran} ended)"
        (warm,) = warm_pids(info.pid)
        out = subprocess.run([sys.executable, "-c", JOB], capture_output=True, text=True, timeout=300, env=env)
        line = next((x for x in out.stdout.splitlines() if x.startswith("PID")), None)
        assert line, out.stderr[-3000:]
        seen.append((warm, int(line.split()[1])))
    assert [ran for warm, ran in seen] == [warm for warm, ran in seen]  # each job ran in the waiting warm worker
    assert seen[0][0] != seen[1][0]  # a new one, started after the first job ended
    assert "Stopped the warm Ray" in cli(home, "down").stdout


def test_a_warm_ray_killed_without_down_is_found_stale(home):
    from tune_losses.tuning import warm_ray

    assert cli(home, "up", "--num-cpus", "1").returncode == 0
    os.environ["TUNE_LOSSES_HOME"] = str(home)
    info = warm_ray.read()
    os.killpg(info.pid, signal.SIGKILL)  # the keeper's session: its Ray too, as a reboot would
    deadline = time.monotonic() + 30
    while warm_ray.keeper_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert warm_ray.state_file().exists()
    down = cli(home, "down")
    assert down.returncode == 0 and "is gone; its stale file is removed" in down.stdout
    assert not warm_ray.state_file().exists()
