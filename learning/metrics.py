"""Test-set metrics for the normal/abnormal head: the original's report plus honest context.

Scores are the logit difference abnormal - normal (same ranking as the softmax probability of
"abnormal"); predictions are the argmax of the two logits, as in the original. The AUROC's 95%
confidence interval resamples *groups* (report_id / patient), not images: images of one
patient are correlated, so resampling images would give a falsely narrow interval.
"""
import numpy as np

CLASS_NAMES = ("normal", "abnormal")


def roc_auc(labels, scores):
    """AUROC, or None when only one class is present (undefined)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def grouped_bootstrap_auc(labels, scores, groups, n_resamples=1000, seed=0, level=0.95):
    """Percentile CI of the AUROC over resampled groups.

    Each resample draws len(unique groups) groups with replacement and takes all images of
    each drawn group (a group drawn twice counts twice). Resamples holding only one class are
    skipped and counted. Returns {"low", "high", "level", "n_resamples", "n_skipped",
    "resampling": "groups", "n_groups"}, with low/high None when no resample was usable.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    unique, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    values, skipped = [], 0
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(unique), size=len(unique))
        idx = np.concatenate([members[g] for g in drawn]) if len(drawn) else np.array([], int)
        if len(np.unique(labels[idx])) < 2:
            skipped += 1
            continue
        values.append(roc_auc_score(labels[idx], scores[idx]))
    alpha = (1 - level) / 2
    low = high = None
    if values:
        low, high = (float(v) for v in np.quantile(values, [alpha, 1 - alpha]))
    return {"low": low, "high": high, "level": level, "n_resamples": n_resamples,
            "n_skipped": skipped, "resampling": "groups", "n_groups": int(len(unique))}


def classification_table(labels, predictions):
    """Per-class precision/recall/F1/support and their support-weighted average (the original's
    sklearn classification_report 'avg / total' row). Zero-division gives 0, not a warning."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=[0, 1], zero_division=0)
    table = {}
    for index, name in enumerate(CLASS_NAMES):
        table[name] = {"precision": float(precision[index]), "recall": float(recall[index]),
                       "f1": float(f1[index]), "support": int(support[index])}
    total = int(support.sum())
    weights = support / total if total else np.zeros(2)
    table["avg / total"] = {"precision": float(np.dot(weights, precision)),
                            "recall": float(np.dot(weights, recall)),
                            "f1": float(np.dot(weights, f1)), "support": total}
    return table


def evaluate(labels, logits, groups, train_labels=None, n_resamples=1000, seed=0):
    """All test metrics as a JSON-ready dict. logits: (N, 2) pre-softmax [normal, abnormal]."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    assert logits.ndim == 2 and logits.shape == (len(labels), 2), logits.shape
    scores = logits[:, 1] - logits[:, 0]
    predictions = np.argmax(logits, axis=1)
    auc = roc_auc(labels, scores)
    result = {
        "n": int(len(labels)),
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else None,
        "roc_auc": auc,
        "roc_auc_ci": (grouped_bootstrap_auc(labels, scores, groups, n_resamples, seed)
                       if auc is not None else None),
        "classification": classification_table(labels, predictions),
        "confusion_matrix": {"labels": list(CLASS_NAMES), "rows": "true", "columns": "predicted",
                             "matrix": confusion_matrix(labels, predictions,
                                                        labels=[0, 1]).tolist()},
        "baseline_majority": majority_baseline(labels, train_labels),
    }
    if auc is None:
        present = CLASS_NAMES[int(labels[0])] if len(labels) else "none"
        result["note"] = (f"test set holds only one class ({present}): AUROC and its CI are "
                          f"undefined")
    return result


def majority_baseline(test_labels, train_labels=None):
    """Always predict the majority class of the training labels (the test labels when none);
    its AUROC is 0.5 by construction (a constant score ranks nothing)."""
    test_labels = np.asarray(test_labels, dtype=np.int64)
    reference = test_labels if train_labels is None else np.asarray(train_labels, np.int64)
    majority = int(np.argmax(np.bincount(reference, minlength=2)))  # ties -> "normal"
    accuracy = float(np.mean(test_labels == majority)) if len(test_labels) else None
    return {"predicts": CLASS_NAMES[majority],
            "chosen_on": "test" if train_labels is None else "training",
            "accuracy": accuracy, "roc_auc": 0.5 if len(np.unique(test_labels)) == 2 else None}


def format_report(metrics):
    """The printed report: the original's table, then accuracy, AUROC with CI, baseline."""
    lines = [f"{'':>13}{'precision':>11}{'recall':>9}{'f1-score':>10}{'support':>9}"]
    for name, row in metrics["classification"].items():
        if name == "avg / total":
            lines.append("")
        lines.append(f"{name:>13}{row['precision']:>11.3f}{row['recall']:>9.3f}"
                     f"{row['f1']:>10.3f}{row['support']:>9,}")
    lines.append("")
    lines.append(f"accuracy {metrics['accuracy']:.3f}" if metrics["accuracy"] is not None
                 else "accuracy n/a (empty test set)")
    if metrics["roc_auc"] is None:
        lines.append(f"ROC AUC n/a: {metrics.get('note', '')}")
    else:
        ci = metrics["roc_auc_ci"]
        interval = (f"{ci['level']:.0%} CI {ci['low']:.3f}-{ci['high']:.3f}"
                    if ci["low"] is not None else "CI n/a")
        lines.append(f"ROC AUC {metrics['roc_auc']:.3f} ({interval}, {ci['n_resamples']:,} "
                     f"bootstrap resamples of {ci['n_groups']:,} reports)")
    matrix = metrics["confusion_matrix"]["matrix"]
    lines.append(f"confusion (rows true, cols predicted; normal, abnormal): {matrix}")
    base = metrics["baseline_majority"]
    base_acc = f"{base['accuracy']:.3f}" if base["accuracy"] is not None else "n/a"
    base_auc = f"{base['roc_auc']:.1f}" if base["roc_auc"] is not None else "n/a"
    lines.append(f"majority baseline (always {base['predicts']!r}): accuracy {base_acc}, "
                 f"ROC AUC {base_auc}")
    return "\n".join(lines)
