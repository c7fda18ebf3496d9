"""Shared by the sweep tests: a small valid search space on digits, with fields overridden per test."""

import yaml


def write_space(path, **over):
    """Write a 2-trial DAL grid on digits to ``path``; top-level mappings in ``over`` are merged one level."""
    space = {"name": "t", "train": {"dataset": {"name": "digits"}, "model": {"name": "mlp"},
                                    "loss": {"name": "dal", "params": {"a": 10.0}},
                                    "optimizer": {"name": "sgd", "lr": 0.05}, "batch_size": 64, "epochs": 3,
                                    "repeats": 2},
             "params": {"loss.a": {"grid": [5.0, 15.0]}},
             "search": {"searcher": "grid", "scheduler": {"name": "fifo"}, "max_concurrent": 2}}
    for k, v in over.items():
        space[k] = v if not isinstance(v, dict) or k not in space else {**space[k], **v}
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path
