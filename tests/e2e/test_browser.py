"""The MLflow UI in a real browser: a small sweep against an MLflow server, then headless Chromium (Debian's,
driven by Playwright) checks what a user sees: the sweep's parent run, its nested trial runs under their
readable names, a trial's metric chart, the report artifacts and the self-contained report.html. Screenshots go
to the test's directory (and to $TUNE_LOSSES_SCREENSHOTS when set). `make test` installs Debian's chromium and
Playwright; without them the test is skipped, except under CI, where that is a failure."""

import os
import shutil
from pathlib import Path

import pytest

from tune_losses import tracking
from tune_losses.tuning.runner import run_sweep

from helpers import free_port, start_mlflow_server, stop_server, write_space

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = "/usr/bin/chromium"
# Chromium on these machines: no sandbox as root, no GPU, and none of its own network traffic.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ML = "workflowType=machine_learning"  # MLflow 3's UI shows runs tables (not GenAI traces) with it


@pytest.fixture(scope="module")
def browser_ready():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        playwright_missing = True
    else:
        playwright_missing = False
    if playwright_missing or not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium or Playwright is missing (make setup installs both)")
        pytest.skip("needs Debian's chromium and the playwright package")


def test_mlflow_ui_shows_the_sweep_its_trials_a_chart_and_the_report(browser_ready, tmp_path, ray_local):
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_mlflow_server(f"sqlite:///{tmp_path}/server.db", port, tmp_path / "artifacts")
    base = f"http://127.0.0.1:{port}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        space = write_space(tmp_path / "ui.yaml", name="browser_e2e")
        run_sweep(space, tracking_uri=base, storage=str(tmp_path / "ray"), verbose=0)
        c = tracking.client(base)
        parent = tracking.find_sweep(c, "browser_e2e")
        exp = parent.info.experiment_id
        trial = next(r for r in tracking.trial_runs(c, parent.info.run_id, exp) if r.info.run_name == "dal a=5")
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 1600, "height": 1000},
            )
            page = context.new_page()
            page.set_default_timeout(60_000)

            # the runs table: the sweep's parent run, expanded to its nested trials
            page.goto(f"{base}/#/experiments/{exp}/runs?{ML}")
            page.get_by_text("browser_e2e", exact=True).wait_for()
            assert page.get_by_text("dal a=5", exact=True).count() == 0  # nested: hidden until expanded
            page.get_by_role("row").filter(has_text="browser_e2e").get_by_role("button").first.click()
            for name in ("dal a=5", "dal a=15"):
                page.get_by_text(name, exact=True).wait_for()
            page.screenshot(path=shots / "runs.png")

            # a trial's metric charts: val_acc over the epochs
            page.goto(f"{base}/#/experiments/{exp}/runs/{trial.info.run_id}/model-metrics?{ML}")
            page.get_by_placeholder("Search metric charts").fill("val_acc")  # as a user finds one chart
            page.get_by_text("dal a=5 (val_acc)", exact=True).first.wait_for()  # its legend: this run's series
            assert page.get_by_text("test_acc", exact=True).count() == 0  # filtered to val_acc's charts
            page.locator(".js-plotly-plot svg").first.wait_for()  # drawn (it follows its legend)
            page.screenshot(path=shots / "trial_metrics.png")

            # the report, logged as artifacts of the parent run
            page.goto(f"{base}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts?{ML}")
            page.get_by_text("report", exact=True).first.click()
            logged = [Path(a.path).name for a in c.list_artifacts(parent.info.run_id, "report")]
            assert "report.md" in logged and any(n.endswith(".png") for n in logged)
            for name in logged:  # every file of the report is there to open
                page.get_by_text(name, exact=True).first.wait_for()
            page.get_by_text("report.md", exact=True).first.click()
            page.get_by_text("Report of sweep").first.wait_for()
            page.screenshot(path=shots / "report.png")

            # report.html, as downloaded from the run: its table and its embedded figures render, offline
            (tmp_path / "dl").mkdir()
            local = Path(c.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path / "dl")))
            page.goto(local.as_uri())
            page.get_by_role("heading", name="Report of sweep browser_e2e").wait_for()
            assert page.locator("table tbody tr").count() >= 2  # one row per swept value
            images = page.locator("img")
            assert images.count() == sum(n.endswith(".png") for n in logged)
            for i in range(images.count()):  # decoded and drawn: a broken data: URL has no natural size
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 100")
            page.screenshot(path=shots / "report_html.png", full_page=True)
            context.close()
    finally:
        stop_server(server)
    for name in ("runs.png", "trial_metrics.png", "report.png", "report_html.png"):
        assert (shots / name).stat().st_size > 10_000
    if os.environ.get("TUNE_LOSSES_SCREENSHOTS"):
        shutil.copytree(shots, os.environ["TUNE_LOSSES_SCREENSHOTS"], dirs_exist_ok=True)
