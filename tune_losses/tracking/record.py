"""The MLflow record of a sweep: every tag, param, metric and artifact that a parent run and a trial run carry.

This module is the one place that names them. The code that writes or reads a name imports its constant from
here, and ``FIELDS`` documents each one (the docs' "MLflow record" reference page is generated from it). A name
with ``<...>`` stands for a family (``swept.<path>``: one param per swept path).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One name of the record: on which ``run`` ("parent" or "trial"), of which ``kind`` ("tag", "param",
    "metric"), and what it holds."""

    run: str
    kind: str
    name: str
    meaning: str


# --- tags both kinds of run carry ----------------------------------------------------------------------------
SWEEP = "tune_losses.sweep"
ROLE = "tune_losses.role"  # "sweep" on a parent, "trial" on a trial
STATUS = "status"
REASON = "reason"

# --- the parent run (tracking/parent.py writes them) -----------------------------------------------------------
PLANNED = "tune_losses.planned"
DRIVER = "tune_losses.driver"
RESUME_COMMAND = "tune_losses.resume_command"
RESUMED_BY = "tune_losses.resumed_by."  # + claim number
CREATION = "tune_losses.creation"  # unique to one creating command: a retried create is found again
LAYOUT = "tune_losses.layout"  # "2": checkpoints under the parent run id (a run without it is an older sweep)
CHECKPOINTS = "tune_losses.checkpoints"
WARM_START = "tune_losses.warm_start"
HEARTBEAT = "heartbeat"
RESUMES = "resumes"
ENDED_BY = "ended_by"
BEST_CONFIG = "best_config"
REPORT_ERROR = "report_error"
GIT_COMMIT = "git_commit"
SPACE_FILE = "space_file"
STUDY = "study"
SECONDS_RUN = "tune_losses.seconds_run"  # the sweep's running time so far, under every driver it had
SPACE_SHA = "space_sha256"
TRAIN_SHA = "train_sha256"
GRID_ORDER = "grid_order"

# --- a trial run (tuning/trial.py writes them; the driver's callback writes the scheduler's decisions) ---------
TRIAL_KEY = "tune_losses.trial_key"
ATTEMPT_TOKEN = "tune_losses.attempt_token"
STOPPED_EARLY = "stopped_early"
STOPPED_AT = "stopped_at_epoch"
STOPPED_BY = "stopped_by"
RAY_STATUS = "ray_status"
RETRIES = "retries"
LAST_ERROR = "last_error"
ATTEMPTS = "attempts"
RAY_TRIAL_ID = "ray_trial_id"
RAY_NODE = "ray_node_id"
RAY_NODES = "ray_nodes"
CHECKPOINT = "checkpoint"
PARAMS_LOGGED = "params_logged"
DEVICE = "device"
RESTARTED = "restarted_from_scratch"
FROM_SWEEP = "tune_losses.from_sweep"
BASELINE = "tune_losses.baseline"  # a baseline trial (tuning/baseline.py): the baseline loss's name
SWEPT = "swept."  # + path: the trial's value of a swept path, as JSON
CONFUSION_ARTIFACT = "confusion_matrix.json"
REPLICAS_ARTIFACT = "replicas.parquet"  # every replica's own values, a row per (epoch, replica): tracking/replicas.py


def swept_param(path: str) -> str:
    """The param holding a trial's value of a swept ``path``. A joint path's comma (``loss.beta,loss.gamma``) is
    written '/', as MLflow refuses commas in a param's name (``swept.loss.beta/loss.gamma``)."""
    return SWEPT + path.replace(",", "/")


def swept_path(param: str) -> str:
    """The swept path a ``swept.*`` param holds (:func:`swept_param` read back)."""
    return param.removeprefix(SWEPT).replace("/", ",")


CONFIG_ARTIFACT = "config.json"

#: a trial run's ``status`` tag, by how the trial ended (tracking/outcome.py decides which)
TRIAL_STATUSES = ("running", "retrying", "completed", "diverged", "error", "interrupted")
#: the layout of a sweep's files that this version writes (tag ``tune_losses.layout``)
LAYOUT_VERSION = "2"

FIELDS: list[Field] = [
    Field("parent", "tag", SWEEP, "the sweep's name (also on every trial run)"),
    Field("parent", "tag", ROLE, "`sweep` (a trial run: `trial`)"),
    Field("parent", "tag", STATUS, "running, completed or interrupted"),
    Field("parent", "tag", ENDED_BY, "what ended the sweep: completed, time_budget, plateau, interrupted or error"),
    Field("parent", "tag", PLANNED, "the number of trials planned, written with the run itself"),
    Field("parent", "tag", HEARTBEAT, "unix time of the driver's last beat (a stale one: no live driver)"),
    Field("parent", "tag", DRIVER, "the driving process: host, boot id, pid namespace, pid and start time"),
    Field("parent", "tag", RESUME_COMMAND, "the command that continues the sweep (`tune-losses status` prints it)"),
    Field("parent", "tag", RESUMED_BY + "<n>", "the n-th resume's claim (driver, time, nonce); the first kept wins"),
    Field("parent", "tag", CREATION, "a nonce of the creating command, so that a retried create is found again"),
    Field("parent", "tag", CHECKPOINTS, "where this sweep's checkpoints live (under its parent run id)"),
    Field("parent", "tag", LAYOUT, "2: the checkpoints live under the parent run id (written with the run itself)"),
    Field("parent", "tag", SECONDS_RUN, "seconds the sweep has run, under every driver it had (budgets count them)"),
    Field("parent", "tag", RESUMES, "how many times the sweep was resumed"),
    Field("parent", "tag", WARM_START, "the earlier sweep an Optuna search was warm-started from"),
    Field("parent", "tag", BEST_CONFIG, "the best config, as JSON (chosen on the selection data)"),
    Field("parent", "tag", REPORT_ERROR, "why the report could not be built, if it could not"),
    Field("parent", "tag", GIT_COMMIT, "the commit of tune_losses that ran the sweep"),
    Field("parent", "tag", SPACE_FILE, "the search space's file"),
    Field("parent", "tag", STUDY, "the paper study the space repeats (reports compare with the paper)"),
    Field("parent", "param", "searcher, scheduler, metric, mode, ...", "the search's settings, one param each"),
    Field("parent", "param", "<asha|halving>.max_t, .grace_period, .reduction_factor", "the scheduler's rungs"),
    Field("parent", "param", TRAIN_SHA, "hash of the fixed training config (a resume compares it)"),
    Field("parent", "param", SPACE_SHA, "hash of the resolved space less what a resume may change"),
    Field("parent", "param", GRID_ORDER, "the order in which ASHA visits an all-grid space"),
    Field("parent", "param", "protocol, selection.*, split sizes", "what selects and what is reported"),
    Field("parent", "metric", "sweep.<count>", "how the trials ended (completed, stopped_early, ...) and epochs run"),
    Field("parent", "metric", "best_<metric>", "the best trial's value of the search metric"),
    Field("trial", "tag", TRIAL_KEY, "the trial's key: a hash of its swept values and sample index"),
    Field("trial", "tag", ATTEMPT_TOKEN, "the attempt that owns the run; a superseded attempt stops writing"),
    Field("trial", "tag", STATUS, "running, retrying, completed, diverged, error or interrupted"),
    Field("trial", "tag", STOPPED_EARLY, "true when a scheduler or budget stopped it before its last epoch"),
    Field("trial", "tag", STOPPED_AT, "the last epoch of a trial stopped early"),
    Field("trial", "tag", STOPPED_BY, "asha, halving, time_budget or plateau"),
    Field("trial", "tag", REASON, "why it diverged or failed"),
    Field("trial", "tag", RAY_STATUS, "Ray Tune's final state: TERMINATED or ERROR"),
    Field("trial", "tag", RETRIES, "how many times Ray retried it after an error"),
    Field("trial", "tag", LAST_ERROR, "the end of the last retried error's traceback"),
    Field("trial", "tag", ATTEMPTS, "how many processes trained it (retries, resumes, moves)"),
    Field("trial", "tag", RAY_TRIAL_ID, "Ray Tune's id of the latest attempt"),
    Field("trial", "tag", RAY_NODE, "the node of the latest attempt"),
    Field("trial", "tag", RAY_NODES, "every node that trained it"),
    Field("trial", "tag", CHECKPOINT, "its checkpoint file"),
    Field("trial", "tag", PARAMS_LOGGED, "true once its params are recorded"),
    Field("trial", "tag", DEVICE, "the device it trained on"),
    Field("trial", "tag", RESTARTED, "true when its checkpoint was lost and it started again from epoch 1"),
    Field("trial", "tag", FROM_SWEEP, "a warm-start trial: the sweep it was read from"),
    Field("trial", "tag", BASELINE, "a baseline trial (space `baseline:`): the baseline loss, ce or focal"),
    Field("trial", "param", "<train config, flattened>", "the whole training config (loss.a, batch_size, ...)"),
    Field("trial", "param", SWEPT + "<path>", "the swept values, as JSON (a joint path's ',' written '/')"),
    Field("trial", "param", "sample", "which repeat of a repeated grid point"),
    Field("trial", "metric", "epoch", "the last epoch recorded (step = epoch)"),
    Field("trial", "metric", "<split>_<metric>", "val/test acc, f1, nmi: the mean over replicas, per epoch"),
    Field("trial", "metric", "<split>_<metric>_<std|min|max>", "their spread over replicas, per epoch"),
    Field("trial", "metric", "train_loss", "the training loss, mean over replicas, per epoch"),
    Field("trial", "metric", "seconds_<part>", "where the attempt's time went: trial, train, tracking, checkpoint"),
    Field("trial", "artifact", CONFIG_ARTIFACT, "the trial's whole training config"),
    Field("trial", "artifact", CONFUSION_ARTIFACT, "every replica's test confusion matrix at the last epoch"),
    Field(
        "trial",
        "artifact",
        REPLICAS_ARTIFACT,
        "every replica's own values (train_loss, val/test acc, f1, nmi), a row per epoch and replica, with more "
        "than one replica; rewritten whole as the trial goes, complete when it ends (sweeps before it: metrics "
        "`<metric>_r<i>`, which reports still read)",
    ),
]
