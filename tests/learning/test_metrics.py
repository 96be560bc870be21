"""Test metrics: hand-computed values, grouped bootstrap, single-class handling."""
import numpy as np
import pytest

from learning.metrics import (classification_table, evaluate, format_report,
                              grouped_bootstrap_auc, majority_baseline, roc_auc,
                              small_set_warnings)


def test_auc_and_table_on_a_hand_computed_example():
    labels = np.array([0, 0, 0, 1, 1])
    # logits [normal, abnormal]; scores = abnormal - normal = [-2, 1, -1, 2, 0.5]
    logits = np.array([[2, 0], [0, 1], [1, 0], [0, 2], [0, 0.5]], dtype=float)
    # Pairs (abnormal, normal) ranked right: 2 > all three (3), 0.5 > -2 and -1 (2) -> 5 / 6.
    assert roc_auc(labels, logits[:, 1] - logits[:, 0]) == pytest.approx(5 / 6)
    result = evaluate(labels, logits, groups=["a", "b", "c", "d", "e"], n_resamples=200)
    # predictions argmax: [0, 1, 0, 1, 1] -> TN 2, FP 1, FN 0, TP 2
    assert result["confusion_matrix"]["matrix"] == [[2, 1], [0, 2]]
    assert result["accuracy"] == pytest.approx(0.8)
    table = result["classification"]
    assert table["normal"] == pytest.approx({"precision": 1.0, "recall": 2 / 3,
                                             "f1-score": 0.8, "support": 3})
    assert table["abnormal"] == pytest.approx({"precision": 2 / 3, "recall": 1.0,
                                               "f1-score": 0.8, "support": 2})
    # scikit-learn's names: "weighted avg" weights by support: 3/5 * 1 + 2/5 * 2/3 = 13/15.
    assert table["weighted avg"]["precision"] == pytest.approx(13 / 15)
    assert table["weighted avg"]["support"] == 5
    assert table["macro avg"]["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert table["accuracy"] == pytest.approx(0.8)
    # Operating point (argmax): abnormal found 2 of 2, normal cleared 2 of 3.
    point = result["operating_point"]
    assert (point["sensitivity"], point["specificity"]) == (1.0, pytest.approx(2 / 3))
    # Wilson 95% for 2/3: centre (2/3 + z^2/6) / (1 + z^2/3), z = 1.95996.
    assert point["specificity_ci"]["low"] == pytest.approx(0.2077, abs=1e-4)
    assert point["specificity_ci"]["high"] == pytest.approx(0.9385, abs=1e-4)
    # Average precision by hand: ranked scores 2 (abn), 1 (norm), 0.5 (abn), ...:
    # recall steps at ranks 1 and 3 with precision 1 and 2/3 -> (1 + 2/3) / 2 = 5/6.
    assert result["pr_auc"] == pytest.approx(5 / 6) and result["pr_auc_baseline"] == 0.4
    ci = result["roc_auc_ci"]
    assert ci["low"] <= result["roc_auc"] <= ci["high"] and ci["n_groups"] == 5
    text = format_report(result)
    assert "ROC AUC 0.833" in text and "weighted avg" in text and "majority baseline" in text
    assert "PR AUC (average precision) 0.833" in text
    skipped = ci["n_skipped"]
    assert skipped > 0 and f"{skipped:,} of 200 resamples skipped" in text


def test_bootstrap_resamples_groups_not_images():
    rng = np.random.default_rng(0)
    # 20 patients with 10 near-identical images each: resampling images would give a far
    # narrower interval than resampling the 20 patients.
    patient_labels = np.array([0, 1] * 10)
    patient_scores = patient_labels + rng.normal(0, 0.8, 20)
    labels = np.repeat(patient_labels, 10)
    scores = np.repeat(patient_scores, 10) + rng.normal(0, 1e-3, 200)
    grouped = grouped_bootstrap_auc(labels, scores, np.repeat(np.arange(20), 10), 500, seed=1)
    per_image = grouped_bootstrap_auc(labels, scores, np.arange(200), 500, seed=1)
    point = roc_auc(labels, scores)
    assert grouped["low"] <= point <= grouped["high"]
    assert grouped["n_groups"] == 20 and per_image["n_groups"] == 200
    assert (grouped["high"] - grouped["low"]) > 2 * (per_image["high"] - per_image["low"])
    # Seeded: the same seed gives the same interval.
    assert grouped_bootstrap_auc(labels, scores, np.repeat(np.arange(20), 10), 500,
                                 seed=1) == grouped


def test_single_class_test_set_is_handled():
    labels = np.array([1, 1, 1])
    logits = np.array([[0, 1], [1, 0], [0, 2]], dtype=float)
    result = evaluate(labels, logits, ["a", "b", "c"], train_labels=np.array([0, 0, 1]))
    assert result["roc_auc"] is None and result["roc_auc_ci"] is None
    assert "only one class (abnormal)" in result["note"]
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["baseline_majority"] == {"predicts": "normal", "chosen_on": "training",
                                           "accuracy": 0.0, "roc_auc": None}
    assert "ROC AUC n/a" in format_report(result)


def test_majority_baseline_uses_training_labels():
    base = majority_baseline(np.array([0, 1, 1, 1]), train_labels=np.array([1, 1, 0]))
    assert base == {"predicts": "abnormal", "chosen_on": "training", "accuracy": 0.75,
                    "roc_auc": 0.5}


def test_zero_division_gives_zero_precision():
    table = classification_table(np.array([0, 1]), np.array([0, 0]))
    assert table["abnormal"]["precision"] == 0.0 and table["normal"]["recall"] == 1.0


def test_small_set_warnings_name_the_counts():
    assert small_set_warnings("test", np.array([0, 1] * 10)) == []
    (line,) = small_set_warnings("validation", np.array([0] * 30 + [1] * 3))
    assert "tiny validation set: 33 images (30 normal, 3 abnormal)" in line
    assert "fewer than 10 of a class" in line


def test_wilson_interval_holds_its_own_proportion_exactly_at_the_ends():
    from learning.metrics import wilson_interval

    # before: 0 of 7 gave low 5.6e-17 > 0 and 10 of 10 high 0.9999999999999999 < 1, so a
    # reliability diagram's error bar came out negative and cxr-explain stopped in matplotlib
    for n in range(1, 300):
        for hits in (0, 1, n // 2, n - 1, n):
            ci = wilson_interval(hits, n)
            assert 0.0 <= ci["low"] <= hits / n <= ci["high"] <= 1.0, (hits, n)
        assert wilson_interval(0, n)["low"] == 0.0 and wilson_interval(n, n)["high"] == 1.0
    assert wilson_interval(1, 3)["low"] == pytest.approx(0.0615, abs=1e-4)
    assert wilson_interval(1, 3)["high"] == pytest.approx(0.7923, abs=1e-4)
