"""The replication verdict's statistics against scipy on fixed inputs, the paper column chosen by data set, the
baseline's pairing by seed and its trial config, and the per-class diagnostics on constructed confusions."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tune_losses.reports import per_class, reference, replication
from tune_losses.reports.collect import BASELINE_TAG as REPORTS_TAG
from tune_losses.spaces import Space
from tune_losses.tuning.baseline import BASELINE_KEY, BASELINE_TAG, baseline_config, grid_points

SAMPLES = [np.array([90.0, 91.5, 89.0]), np.array([93.0, 92.0, 94.5]), np.array([88.0, 87.5, 89.5])]
PAPER = np.array([89.0, 92.0, 90.0])


def test_mean_ci_is_scipys_t_interval():
    x = np.array([0.91, 0.93, 0.90, 0.95])
    mean, low, high = replication.mean_ci(x)
    ci = stats.ttest_1samp(x, 0).confidence_interval(0.95)
    assert mean == pytest.approx(x.mean()) and (low, high) == pytest.approx((ci.low, ci.high))
    assert np.isnan(replication.mean_ci([0.5])[1])  # one replica: no interval
    assert replication.mean_ci([0.5, 0.5])[1:] == (0.5, 0.5)  # constant: the point


def test_kendall_tau_and_its_bootstrap_equal_scipys():
    tau, low, high = replication.kendall(SAMPLES, PAPER)
    assert tau == pytest.approx(stats.kendalltau([s.mean() for s in SAMPLES], PAPER).statistic)
    direct = stats.bootstrap(
        tuple(SAMPLES),
        lambda *xs: stats.kendalltau([x.mean() for x in xs], PAPER).statistic,
        vectorized=False,
        n_resamples=replication.RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(replication.SEED),
    ).confidence_interval
    assert (low, high) == pytest.approx((direct.low, direct.high))
    assert replication.kendall(SAMPLES, PAPER) == (tau, low, high)  # seeded: the same interval every time


def test_effect_size_is_best_minus_worst_with_an_interval_around_it():
    effect, low, high = replication.effect_size(SAMPLES)
    means = [s.mean() for s in SAMPLES]
    assert effect == pytest.approx(max(means) - min(means))
    assert low <= effect <= high


@pytest.mark.parametrize(
    ("study", "dataset", "paper_dataset", "column", "on_paper"),
    [
        ("cc_lambda", "mnist_5k", None, "mnist", True),
        ("cc_lambda", "mnist", None, "mnist", True),
        ("cc_lambda", "stanford_cars", None, "cars196", True),
        ("cc_lambda", "digits", None, "mnist", False),
        ("cc_lambda", "cifar100", "cifar100", "cifar100", True),
        ("dal_a", "digits", None, "LabelMe", False),
        ("dal_a", "features", "LabelMe", "LabelMe", True),
        ("beta_gamma", "fashion_mnist", None, "Fashion-MNIST", True),
        (None, "digits", None, None, False),
    ],
)
def test_the_papers_column_is_chosen_by_data_set(study, dataset, paper_dataset, column, on_paper):
    assert reference.paper_dataset_for(study, dataset, paper_dataset) == (column, on_paper)


def test_paper_curve_holds_the_tables_numbers():
    curve = reference.paper_curve("cc_lambda", "mnist")
    assert curve.to_dict() == {0.0: 97.66, 0.5: 98.04, 1.0: 98.32, 1.5: 97.95, 2.0: 97.53}
    assert reference.paper_curve("beta_gamma", "Fashion-MNIST") is None  # the text gives no number per value


def _rows(values, metric_by_seed) -> pd.DataFrame:
    rows = []
    for v in values:
        for sample in (1, 0):  # out of order: pairing must use the seed, not the row order
            for replica in (2, 0, 1):
                rows.append(
                    {"loss.a": v, "sample": sample, "replica": replica, "test_acc": metric_by_seed(v, sample, replica)}
                )
    return pd.DataFrame(rows)


def test_the_gain_over_the_baseline_is_paired_by_seed():
    seed_effect = {(s, r): 0.1 * (3 * s + r) for s in (0, 1) for r in (0, 1, 2)}  # seeds differ a lot
    df = _rows([5.0, 10.0], lambda v, s, r: seed_effect[s, r] + (0.02 if v == 5.0 else 0.01))
    base = _rows([0.0], lambda v, s, r: seed_effect[s, r]).drop(columns="loss.a").sample(frac=1, random_state=1)
    gain = replication.paired_gain(df, base, "loss.a", "test_acc").set_index("loss.a")
    assert gain.loc[5.0, "gain_%"] == pytest.approx(2.0) and gain.loc[10.0, "gain_%"] == pytest.approx(1.0)
    assert gain.loc[5.0, "gain_pairs"] == 6
    assert gain.loc[5.0, "gain_ci_low_%"] == pytest.approx(2.0)  # the seed effect cancels: no spread at all


def test_replicate_on_the_papers_data_set_sets_the_paper_beside_ours():
    lambdas = [0.0, 0.5, 1.0, 1.5, 2.0]
    acc = {0.0: 0.976, 0.5: 0.980, 1.0: 0.983, 1.5: 0.979, 2.0: 0.975}
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        [
            {
                "loss.lambda": lam,
                "test_acc": acc[lam] + rng.normal(0, 0.001),
                "status": "completed",
                "stopped_early": False,
            }
            for lam in lambdas
            for _ in range(5)
        ]
    )
    verdict = replication.replicate(df, "loss.lambda", "test_acc", "max", "cc_lambda", "mnist_5k", None)
    assert verdict.label.startswith("on the paper's data set (mnist")
    table = verdict.values.set_index("loss.lambda")
    assert table.loc[1.0, "paper_%"] == 98.32
    assert table.loc[1.0, "diff_%"] == pytest.approx(table.loc[1.0, "ours_%"] - 98.32)
    assert verdict.summary["paper_best"] == 1.0 and verdict.summary["best_verdict"] == "the paper's best is our best"
    assert verdict.summary["kendall_tau"] > 0.5


def test_replicate_elsewhere_says_it_tests_a_transfer():
    df = pd.DataFrame(
        [
            {"loss.a": a, "test_acc": 0.5 + 0.01 * i, "status": "completed", "stopped_early": a == 20.0}
            for a in (5.0, 20.0)
            for i in range(3)
        ]
    )
    verdict = replication.replicate(df, "loss.a", "test_acc", "max", "dal_a", "digits", None)
    assert verdict.label == "trend on `digits`, not the paper's LabelMe: a test of whether the finding transfers"
    assert verdict.values.set_index("loss.a")["stopped_early"].to_dict() == {5.0: False, 20.0: True}


def test_per_class_recall_and_pairs_on_constructed_confusions():
    base = np.array([[[8, 2, 0], [3, 7, 0], [0, 0, 10]], [[6, 4, 0], [3, 7, 0], [0, 1, 9]]])
    best = np.array([[[9, 1, 0], [1, 9, 0], [0, 0, 10]], [[9, 1, 0], [2, 8, 0], [0, 0, 10]]])
    np.testing.assert_allclose(per_class.recalls(base)[1], [0.6, 0.7, 0.9])
    table = per_class.per_class_recall(best, base).set_index("class")
    assert table.loc[0, "gain_%"] == pytest.approx(((90 - 80) + (90 - 60)) / 2)
    assert bool(table["paired_by_seed"].all())
    pairs = per_class.confused_pairs(best, base).set_index(["class_a", "class_b"])
    # classes 0 and 1: baseline (2+3 + 4+3)/2 = 6 errors of 20 images = 30%; best (1+1 + 1+2)/2 = 2.5 -> 12.5%
    assert pairs.loc[(0, 1), "baseline_%"] == pytest.approx(30.0)
    assert pairs.loc[(0, 1), "change_points"] == pytest.approx(12.5 - 30.0)


def test_the_baseline_is_one_more_grid_point_that_trains_the_baseline_loss():
    space = Space.model_validate(
        {
            "name": "b",
            "baseline": "focal",
            "train": {"loss": {"name": "dal", "params": {"a": 10.0}}},
            "params": {"loss.a": {"grid": [5.0, 15.0]}},
        }
    )
    assert grid_points(space) == [{"loss.a": 5.0}, {"loss.a": 15.0}, {BASELINE_KEY: "focal"}]
    cfg = baseline_config(space.train.model_dump(), "focal")
    assert cfg["loss"] == {"name": "focal", "params": {"gamma": 5.0}}
    assert baseline_config({"loss": {"name": "dal"}}, None) == {"loss": {"name": "dal"}}
    assert grid_points(Space.model_validate({"name": "n", "params": {"loss.a": {"grid": [1.0]}}})) is None
    assert BASELINE_TAG == REPORTS_TAG  # the tag the trial sets is the one the report reads


def test_a_baseline_needs_a_grid_space():
    with pytest.raises(ValueError, match="baseline: 'ce' adds one trial to a grid"):
        Space.model_validate(
            {
                "name": "b",
                "baseline": "ce",
                "params": {"loss.a": {"uniform": [1.0, 2.0]}},
                "search": {"searcher": "optuna", "num_samples": 2},
            }
        )
    with pytest.raises(ValueError, match="baseline"):
        Space.model_validate({"name": "b", "baseline": "bce"})


def test_the_best_value_verdict_uses_the_welch_bh_test():
    tight = {1.0: np.array([0.90, 0.91, 0.90]), 2.0: np.array([0.80, 0.81, 0.80]), 3.0: np.array([0.895, 0.905, 0.9])}
    assert replication.best_verdict(tight, 1.0, "max")[0] == replication.OUR_BEST
    assert replication.best_verdict(tight, 2.0, "max")[0] == replication.WORSE
    assert replication.best_verdict(tight, 3.0, "max")[0] == replication.INDISTINGUISHABLE
    assert replication.TIED.get(replication.best_verdict(tight, 9.0, "max")[0]) is None  # not run: no metric
    single = {1.0: np.array([0.9]), 2.0: np.array([0.8])}
    assert replication.TIED.get(replication.best_verdict(single, 2.0, "max")[0]) is None  # untested


def test_a_trend_on_another_data_set_compares_no_numbers_and_intervals_stay_within_0_100():
    """On another data set than the paper's, the paper's numbers are for the curve's shape only: no difference
    and no 'in our interval' (a new user read 'diff -75.66' for digits against LabelMe). A t-interval of two
    replicas can pass 0 or 100: a rate's interval is cut there."""
    import numpy as np
    import pandas as pd

    from tune_losses.reports.replication import per_value

    samples = {5.0: np.array([0.02, 0.30]), 10.0: np.array([0.97, 0.999])}
    paper = pd.Series({5.0: 88.8, 10.0: 90.1})
    trend = per_value(samples, paper, {}, "loss.a", on_paper=False)
    assert trend["paper_%"].tolist() == [88.8, 90.1]
    assert trend["diff_%"].isna().all() and trend["paper_in_ci"].isna().all()
    assert trend["ci_low_%"].min() >= 0 and trend["ci_high_%"].max() <= 100
    same = per_value(samples, paper, {}, "loss.a", on_paper=True)
    assert same["diff_%"].round(2).tolist() == [-72.8, 8.35] and same["paper_in_ci"].tolist() == [True, True]
