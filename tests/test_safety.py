"""Safety: search spaces are safe-loaded (a YAML tag cannot run code), checkpoints load with weights_only (a
pickled object cannot run code), credentials in a tracking URI are redacted, the UI binds to 127.0.0.1."""

import pickle

import pytest
import torch

from tune_losses import tracking
from tune_losses.spaces import SpaceError, load_space
from tune_losses.training import load_checkpoint
from tune_losses.training.checkpoint import FILENAME


class Boom:
    def __reduce__(self):  # what a malicious pickle does: call something on load
        import os

        return (os.system, ("touch /tmp/tune_losses_pwned",))


def test_yaml_tags_do_not_run_code(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: evil\ndescription: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpaceError, match="malformed YAML"):
        load_space(path)
    assert not marker.exists()


def test_checkpoints_refuse_pickled_objects(tmp_path):
    torch.save({"epoch": 1, "payload": Boom()}, tmp_path / FILENAME, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "uri,shown",
    [
        ("http://alice:s3cret@mlflow.example:5000", "http://***@mlflow.example:5000"),
        ("postgresql+psycopg2://mlflow:s3cret@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
        ("sqlite:////tmp/runs/mlflow.db", "sqlite:////tmp/runs/mlflow.db"),
    ],
)
def test_credentials_in_tracking_uris_are_redacted(uri, shown):
    assert tracking.redact(uri) == shown


def test_ui_defaults_to_localhost():
    from tune_losses.cli import build_parser

    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"
