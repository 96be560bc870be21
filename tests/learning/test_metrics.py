"""Test metrics: hand-computed values, grouped bootstrap, single-class handling."""
import numpy as np
import pytest

from learning.metrics import (classification_table, evaluate, format_report,
                              grouped_bootstrap_auc, majority_baseline, roc_auc)


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
    assert table["normal"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8,
                                             "support": 3})
    assert table["abnormal"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                               "support": 2})
    # avg / total weights by support: precision 3/5 * 1 + 2/5 * 2/3 = 13/15.
    assert table["avg / total"]["precision"] == pytest.approx(13 / 15)
    assert table["avg / total"]["support"] == 5
    ci = result["roc_auc_ci"]
    assert ci["low"] <= result["roc_auc"] <= ci["high"] and ci["n_groups"] == 5
    text = format_report(result)
    assert "ROC AUC 0.833" in text and "avg / total" in text and "majority baseline" in text


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
