"""A shared MLflow server on PostgreSQL: a real PostgreSQL server on 127.0.0.1 (a throwaway cluster made by
initdb), `mlflow server --workers 1` on it, a small sweep against the server, and the runs and a report read
back over HTTP. `make test` (what `.ci/run` calls) installs Debian's postgresql where apt is there; elsewhere
the test is skipped, except under CI, where a missing PostgreSQL is a failure."""

import os
import shutil
import tempfile

import pytest

from tune_losses import tracking
from tune_losses.reports.build import build_report
from tune_losses.tuning.runner import run_sweep

from helpers import (
    free_port,
    postgres_bin,
    start_mlflow_server,
    start_postgres,
    stop_postgres,
    stop_server,
    write_space,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin("initdb") is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (make setup installs Debian's postgresql)")
        pytest.skip("PostgreSQL is not installed")
    directory = tempfile.mkdtemp(prefix="pg", dir="/tmp")  # the postgres user must reach it
    try:
        yield start_postgres(directory, free_port())
    finally:
        stop_postgres(directory)
        shutil.rmtree(directory, ignore_errors=True)


def test_sweep_against_an_mlflow_server_on_postgresql(postgres, tmp_path, ray_local):
    import sqlalchemy

    port = free_port()
    server = start_mlflow_server(postgres, port, tmp_path / "artifacts")
    uri = f"http://127.0.0.1:{port}"
    try:
        space = write_space(tmp_path / "pg.yaml", name="pg_e2e")
        # credentials in the URI (a server behind basic auth): used to connect, never recorded
        with_secret = f"http://alice:s3cret@127.0.0.1:{port}"
        result = run_sweep(space, tracking_uri=with_secret, storage=str(tmp_path / "ray"), verbose=0)
        assert result.summary["completed"] == 2
        c = tracking.client(uri)  # everything below is read back over HTTP
        parent = tracking.find_sweep(c, "pg_e2e")
        runs = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
        assert parent.info.status == "FINISHED" and sorted(r.info.run_name for r in runs) == ["dal a=15", "dal a=5"]
        assert parent.data.params["tracking_uri"] == f"http://***@127.0.0.1:{port}"
        for r in [parent, *runs]:
            recorded = {**r.data.params, **r.data.tags}
            assert not [k for k, v in recorded.items() if "s3cret" in v], "a credential was recorded"
        for r in runs:
            assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc")) == [1, 2, 3]
            assert {"confusion_matrix.json", "learning_curves.png"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
        report = build_report("pg_e2e", tracking_uri=uri, out_dir=tmp_path / "report", log=False)
        assert report.trials["run_id"].nunique() == 2 and "2 trials: 2 completed," in report.markdown
        assert "report" in {a.path for a in c.list_artifacts(parent.info.run_id)}  # logged by the sweep
        # and the runs are in PostgreSQL itself, not in a file beside the server
        with sqlalchemy.create_engine(postgres).connect() as db:
            names = {row[0] for row in db.execute(sqlalchemy.text("SELECT name FROM runs"))}
        assert {"pg_e2e", "dal a=5", "dal a=15"} <= names
    finally:
        stop_server(server)
