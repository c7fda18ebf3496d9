"""Which protocol and which split produced each number of a sweep, and how its trials ended: one set of facts,
recorded on the sweep's parent run, and the same sentences for the summary printed after a sweep, every report
and `tune-losses best`."""

from __future__ import annotations


def split_of(metric: str) -> str:
    """The split a metric is measured on: 'validation', 'test' or 'training' (as spaces.metric_split: reports
    read MLflow alone and do not import the space schema)."""
    return {"val": "validation", "test": "test", "train": "training"}[metric.split("_")[0]]


SIZE_OF = {"validation": "data.n_val", "test": "data.n_test", "training": "data.n_train"}


def chosen_on(space: dict) -> str | None:
    """The metric a space (a dict, as the parent run stores it) chooses its best config on; None: it chooses
    nothing (protocol paper, no validation split, no select_on_test). As Space.selection_metric, for a dict."""
    search = space["search"]
    if space.get("protocol", "standard") == "paper" and not search.get("select_on_test"):
        return None
    return search["metric"]


def table_metrics(space: dict) -> list[str]:
    """The metrics a report's tables give per value: the papers' own (test accuracy; beta/gamma: test F1 and
    NMI), else the search metric."""
    study = space.get("study")
    if study == "beta_gamma":
        return ["test_f1", "test_nmi"]
    if study in ("dal_a", "cc_lambda", "cc_batch"):
        return ["test_acc"]
    return [space["search"]["metric"]]


def parent_params(space: dict, sizes: dict[str, str] | None = None) -> dict[str, str]:
    """What the parent run records about protocol and selection (params), from the space and its splits' sizes
    (``data.splits.describe``; None when the data set is swept: each trial then has its own)."""
    search, metric = space["search"], chosen_on(space)
    out = {
        "protocol": space.get("protocol", "standard"),
        "selection.metric": metric or "none",
        "selection.split": split_of(metric) if metric else "none",
        "select_on_test": str(bool(search.get("select_on_test"))).lower(),
    }
    if search.get("select_on_test"):
        out["select_on_test_reason"] = search["select_on_test_reason"]
    out.update(
        sizes
        if sizes is not None
        else {
            "data.n_train": "per trial",
            "data.n_val": "per trial",
            "data.n_test": "per trial",
            "data.split": "per trial (the data set is swept)",
        }
    )
    return out


def _n(params: dict, split: str) -> str:
    n = params.get(SIZE_OF[split], "size not recorded")
    return f"{n} images" if n.isdigit() else n


def statement(space: dict, params: dict) -> list[str]:
    """The protocol and selection lines of a sweep (Markdown), from its space and its parent run's params."""
    protocol = params.get("protocol") or space.get("protocol", "standard")
    metric = chosen_on(space)
    sizes = ", ".join(f"{name} {_n(params, name)}" for name in ("training", "validation", "test"))
    lines = [
        f"- Protocol `{protocol}`: "
        + (
            "the paper's train / test split with nothing held out: the models train on the whole training part "
            "(on the paper's data set, exactly the paper's training set); there is no validation split."
            if protocol == "paper"
            else "validation data is held out of the training part."
        ),
        f"- Data: {sizes}; split: {params.get('data.split', 'not recorded')}.",
    ]
    if metric is None:
        lines.append(
            "- Selection: none. This sweep has no validation split, so it chooses no config (no "
            "`best_config`, `tune-losses best` refuses); to choose one, run the space with "
            "`protocol: standard` and a validation metric."
        )
    else:
        split = split_of(metric)
        line = f"- Selection: the best config is chosen on `{metric}` ({split} split, {_n(params, split)})"
        if split == "test":
            reason = space["search"].get("select_on_test_reason")
            line += (
                f", by explicit opt-in (`search.select_on_test`): {reason}"
                if reason
                else ", without the opt-in (a sweep recorded before selection on test data needed one)"
            )
            line += ". A config chosen on the test split has seen the data its test numbers come from"
        lines.append(line + ".")
    tables = ", ".join(f"`{m}`" for m in table_metrics(space))
    kinds = sorted({split_of(m) for m in table_metrics(space)})
    lines.append(
        f"- Tables: {tables} per value on the {' and '.join(kinds)} split "
        f"({', '.join(_n(params, k) for k in kinds)}); no selection is involved in a table."
    )
    return lines


def count_trials(rows) -> dict[str, int]:
    """How trials ended, from (status, stopped_early) pairs as the trial runs' tags give them (status
    completed / diverged / error; stopped_early for a completed trial that ASHA stopped before its last epoch)."""
    counts = {"trials": 0, "completed": 0, "stopped_early": 0, "diverged": 0, "failed": 0, "unfinished": 0}
    for status, stopped_early in rows:
        counts["trials"] += 1
        if status == "completed":
            counts["stopped_early" if stopped_early else "completed"] += 1
        elif status == "diverged":
            counts["diverged"] += 1
        elif status == "error":
            counts["failed"] += 1
        else:
            counts["unfinished"] += 1
    return counts


def trial_outcomes(runs) -> list[tuple[str, bool]]:
    """(status, stopped_early) of each trial run, from its tags."""
    return [(r.data.tags.get("status", ""), r.data.tags.get("stopped_early") == "true") for r in runs]


def describe_trials(counts: dict) -> str:
    text = (
        f"{counts['trials']} trials: {counts['completed']} completed, {counts['stopped_early']} stopped early "
        f"by the scheduler, {counts['diverged']} diverged, {counts['failed']} failed"
    )
    return text + (f", {counts['unfinished']} unfinished" if counts.get("unfinished") else "")
