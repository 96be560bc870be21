"""Test-set metrics for the normal/abnormal head: the original's report plus honest context
(and, for a --findings model, the same per finding: `evaluate_findings`).

Scores are the logit difference abnormal - normal (same ranking as the softmax probability of
"abnormal"); predictions are the argmax of the two logits, as in the original. The AUROC's 95%
confidence interval resamples *groups* (report_id / patient), not images: images of one
patient are correlated, so resampling images would give a falsely narrow interval.
"""
import numpy as np

CLASS_NAMES = ("normal", "abnormal")
# Below this many images of a class in the test or validation set, stage 5 warns loudly.
MIN_PER_CLASS = 10


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
    """scikit-learn's classification_report as a dict, with its own key names: per class and
    "macro avg" / "weighted avg" rows of precision, recall, f1-score, support, and "accuracy".
    Zero-division gives 0, not a warning."""
    from sklearn.metrics import classification_report

    report = classification_report(labels, predictions, labels=[0, 1],
                                   target_names=list(CLASS_NAMES), zero_division=0,
                                   output_dict=True)
    table = {}
    for name, row in report.items():  # numpy scalars -> JSON-ready Python numbers
        table[name] = (float(row) if not isinstance(row, dict) else
                       {key: int(value) if key == "support" else float(value)
                        for key, value in row.items()})
    return table


def wilson_interval(successes, n, level=0.95):
    """Wilson score interval of a proportion (sensible at 0/n and n/n); None when n == 0."""
    from scipy.stats import norm

    if n == 0:
        return None
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact at the ends (0/n -> low 0, n/n -> high 1) and never excluding p itself: rounding
    # in centre - half gave low 5.6e-17 > p = 0 and negative error bars downstream
    low = 0.0 if successes == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if successes == n else max(p, min(1.0, centre + half))
    return {"low": float(low), "high": float(high),
            "level": level, "method": "Wilson score, over images"}


def operating_point(labels, predictions):
    """Sensitivity (abnormal found) and specificity (normal cleared) at the threshold the head
    uses: argmax of the two logits, i.e. p(abnormal) > 0.5. Each with a Wilson 95% CI."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    point = {"threshold": "p(abnormal) > 0.5 (argmax of the logits)"}
    for key, cls in (("sensitivity", 1), ("specificity", 0)):
        members = labels == cls
        hits = int(np.sum(predictions[members] == cls))
        point[key] = hits / int(members.sum()) if members.any() else None
        point[f"{key}_ci"] = wilson_interval(hits, int(members.sum()))
    return point


def pr_auc(labels, scores):
    """Area under the precision-recall curve for "abnormal" (average precision) and its
    no-skill baseline, the share of abnormal images; None values with one class only."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return {"pr_auc": None, "baseline_prevalence": float(labels.mean()) if len(labels)
                else None}
    return {"pr_auc": float(average_precision_score(labels, scores)),
            "baseline_prevalence": float(labels.mean())}


def evaluate(labels, logits, groups, train_labels=None, n_resamples=1000, seed=0):
    """All test metrics as a JSON-ready dict. logits: (N, 2) pre-softmax [normal, abnormal]."""
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    assert logits.ndim == 2 and logits.shape == (len(labels), 2), logits.shape
    scores = logits[:, 1] - logits[:, 0]
    predictions = np.argmax(logits, axis=1)
    auc = roc_auc(labels, scores)
    precision_recall = pr_auc(labels, scores)
    result = {
        "n": int(len(labels)),
        "n_per_class": {name: int(np.sum(labels == c)) for c, name in enumerate(CLASS_NAMES)},
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else None,
        "roc_auc": auc,
        "roc_auc_ci": (grouped_bootstrap_auc(labels, scores, groups, n_resamples, seed)
                       if auc is not None else None),
        "pr_auc": precision_recall["pr_auc"],
        "pr_auc_baseline": precision_recall["baseline_prevalence"],
        "operating_point": operating_point(labels, predictions),
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


def evaluate_findings(target_rows, logits, groups, names, n_resamples=1000, seed=0):
    """Per finding of a --findings model (learning/train/findings.py): {name: {"n" (images
    whose finding is known), "n_positive", "roc_auc" of its sigmoid logit with the grouped
    bootstrap CI, "pr_auc" next to its prevalence, "operating_point" at p > 0.5}}.
    target_rows (N, 1 + K) [label, y_1..y_K] with -1 = not known; logits (N, 2 + K)."""
    target_rows, logits = np.asarray(target_rows), np.asarray(logits, np.float64)
    groups = np.asarray(groups, dtype=object)
    result = {}
    for k, name in enumerate(names):
        known = target_rows[:, 1 + k] >= 0
        y, z = target_rows[known, 1 + k].astype(np.int64), logits[known, 2 + k]
        auc = roc_auc(y, z)
        precision_recall = pr_auc(y, z)
        point = operating_point(y, (z > 0).astype(np.int64))
        point["threshold"] = f"p({name}) > 0.5 (sigmoid logit > 0)"
        result[name] = {
            "n": int(known.sum()), "n_positive": int(y.sum()), "roc_auc": auc,
            "roc_auc_ci": (grouped_bootstrap_auc(y, z, groups[known], n_resamples, seed)
                           if auc is not None else None),
            "pr_auc": precision_recall["pr_auc"],
            "pr_auc_baseline": precision_recall["baseline_prevalence"],
            "operating_point": point}
        if auc is None:
            result[name]["note"] = "one class only among the test images: AUROC undefined"
    return result


def format_findings(findings):
    """One printed line per finding: AUROC with its CI, positives among the known images."""
    lines = []
    for name, block in findings.items():
        ci = block["roc_auc_ci"]
        auc = ("AUROC n/a (one class)" if block["roc_auc"] is None else
               f"AUROC {block['roc_auc']:.3f}" + (f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})"
                                                   if ci and ci["low"] is not None else ""))
        lines.append(f"finding {name}: {auc}; {block['n_positive']:,} positive of "
                     f"{block['n']:,} test images with known findings")
    return lines


def small_set_warnings(name, labels, minimum=MIN_PER_CLASS):
    """Loud lines when a set has fewer than `minimum` images of a class: its AUROC, CI and
    early stopping then rest on a handful of images. [] when the set is large enough."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=2)
    if counts.min() >= minimum:
        return []
    return [f"WARNING: tiny {name} set: {fmt_counts(counts)} (fewer than {minimum} of a "
            f"class); its numbers are anecdotes, not estimates: read the intervals, or give "
            f"more images / a larger --test-fraction / --validation-fraction"]


def fmt_counts(counts):
    return f"{int(counts.sum()):,} images ({int(counts[0]):,} normal, {int(counts[1]):,} abnormal)"


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
    """The printed report: scikit-learn's table, then accuracy, AUROC with its CI (and the
    resamples it skipped), PR AUC, the operating point, the confusion matrix, the baseline."""
    table = metrics["classification"]
    lines = [f"{'':>13}{'precision':>11}{'recall':>9}{'f1-score':>10}{'support':>9}"]
    for name, row in table.items():
        if name == "accuracy":
            continue
        if name == "macro avg":
            lines.append("")
        lines.append(f"{name:>13}{row['precision']:>11.3f}{row['recall']:>9.3f}"
                     f"{row['f1-score']:>10.3f}{row['support']:>9,}")
    lines.append("")
    lines.append(f"accuracy {metrics['accuracy']:.3f}" if metrics["accuracy"] is not None
                 else "accuracy n/a (empty test set)")
    if metrics["roc_auc"] is None:
        lines.append(f"ROC AUC n/a: {metrics.get('note', '')}")
    else:
        ci = metrics["roc_auc_ci"]
        interval = (f"{ci['level']:.0%} CI {ci['low']:.3f}-{ci['high']:.3f}"
                    if ci["low"] is not None else "CI n/a")
        skipped = (f"; {ci['n_skipped']:,} of {ci['n_resamples']:,} resamples skipped: they "
                   f"held one class only" if ci["n_skipped"] else "")
        lines.append(f"ROC AUC {metrics['roc_auc']:.3f} ({interval}, {ci['n_resamples']:,} "
                     f"bootstrap resamples of {ci['n_groups']:,} reports{skipped})")
    if metrics.get("pr_auc") is not None:
        lines.append(f"PR AUC (average precision) {metrics['pr_auc']:.3f} (no-skill baseline "
                     f"= share of abnormal {metrics['pr_auc_baseline']:.3f})")
    point = metrics.get("operating_point")
    if point:
        lines.append(f"at {point['threshold']}: " + ", ".join(
            f"{key} {_rate(point[key], point[key + '_ci'])}"
            for key in ("sensitivity", "specificity")))
    matrix = metrics["confusion_matrix"]["matrix"]
    lines.append(f"confusion (rows true, cols predicted; normal, abnormal): {matrix}")
    base = metrics["baseline_majority"]
    base_acc = f"{base['accuracy']:.3f}" if base["accuracy"] is not None else "n/a"
    base_auc = f"{base['roc_auc']:.1f}" if base["roc_auc"] is not None else "n/a"
    lines.append(f"majority baseline (always {base['predicts']!r}): accuracy {base_acc}, "
                 f"ROC AUC {base_auc}")
    return "\n".join(lines)


def _rate(value, ci):
    if value is None:
        return "n/a"
    return f"{value:.3f} ({ci['level']:.0%} CI {ci['low']:.3f}-{ci['high']:.3f})"
