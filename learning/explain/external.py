"""External validation of a trained model on labelled new X-rays (cxr-explain --labels).

Used by learning/apply.py. The numbers are those of stage 5's test report (learning/metrics.py:
AUROC with a 95% CI that resamples PATIENTS, sensitivity and specificity at the model's
threshold with Wilson CIs, accuracy next to the majority baseline) plus calibration, and they
are set beside the same numbers of the model's own test set (its metrics.json and
test_predictions.csv), so a drop from the model's own test set to new data is read at a glance.

Calibration: does p(abnormal) = 0.8 mean "8 in 10 are abnormal"?
* reliability bins: 10 equal-width bins of p(abnormal); per bin the images, the mean predicted
  p and the observed share of abnormal images (Wilson 95% CI).
* Brier score = mean (p - y)^2 (0 is perfect); its baseline is the Brier score of always
  predicting the set's own prevalence, prevalence * (1 - prevalence): a model below it knows
  more than the base rate.
* ECE (expected calibration error) = sum over bins of (bin share of images) * |mean p - observed
  share|. ECE is biased upwards on small sets, so it stands next to what a PERFECTLY calibrated
  model would show on these very p values by chance alone (labels drawn as Bernoulli(p), 1,000
  draws: mean and 95th percentile). An ECE inside that range is no evidence of miscalibration.
Brier score and ECE carry 95% CIs that resample patients, as the AUROC's does.
"""
import csv
import io
import os

import numpy as np

from learning import metrics as test_metrics
from scraper.cli import UserError, log
from scraper.fileio import read_regular

BINS = 10
N_RESAMPLES = 1000
OWN_PREDICTIONS = "test_predictions.csv"   # stage 5's per-image test predictions
MAX_PREDICTIONS_BYTES = 256 << 20
DESCRIPTION = {
    "external": "the labelled new images (cxr-explain --labels): the same fields as the "
                "model's metrics.json 'test' block (learning/metrics.py), plus 'calibration'",
    "model_test": "the model's own test set: metrics.json 'test' as stage 5 wrote it, plus "
                  "'calibration' computed from the model folder's test_predictions.csv (absent "
                  "when that file is missing)",
    "n / n_per_class": "labelled images; images without a label are counted in "
                       "'unlabelled' and left out of every number",
    "roc_auc, roc_auc_ci": "AUROC of p(abnormal); 95% percentile CI over bootstrap resamples "
                           "of patients (groups: the labels CSV's group column, the DICOM "
                           "PatientID, --group-pattern, else each image alone)",
    "operating_point": "sensitivity and specificity at the model's threshold p(abnormal) > "
                       "0.5 (the argmax of its two logits), Wilson 95% CIs over images",
    "baseline_majority": "always predicting the set's majority class (chosen on this set)",
    "calibration.bins": "10 equal-width bins of p(abnormal): low, high, n, mean_p (mean "
                        "predicted), observed (share abnormal), observed_ci (Wilson 95%)",
    "calibration.brier, brier_ci": "mean (p - y)^2, 0 = perfect; 95% CI over patients",
    "calibration.brier_baseline": "Brier score of always predicting this set's prevalence",
    "calibration.ece, ece_ci": "expected calibration error over the 10 bins; 95% CI over "
                               "patients",
    "calibration.ece_if_calibrated": "ECE a perfectly calibrated model would show on these p "
                                     "values by chance (labels drawn as Bernoulli(p), 1,000 "
                                     "draws): mean and 95th percentile",
    "calibration.mean_p, prevalence": "mean predicted p(abnormal) and the observed share of "
                                      "abnormal images (calibration in the large)",
}


# ----------------------------------------------------------------------------- calibration

def _bin_index(p, bins=BINS):
    """Bin of each p in [0, 1]: equal widths, p = 1 in the last bin."""
    return np.minimum((np.asarray(p, np.float64) * bins).astype(np.int64), bins - 1)


def brier(y, p):
    return float(np.mean((np.asarray(p, np.float64) - y) ** 2))


def ece(y, p, bins=BINS):
    """Expected calibration error: sum_b (n_b / N) |mean p_b - mean y_b|."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    index = _bin_index(p, bins)
    sum_p = np.bincount(index, p, minlength=bins)
    sum_y = np.bincount(index, y, minlength=bins)
    return float(np.abs(sum_p - sum_y).sum() / len(p))


def reliability_bins(y, p, bins=BINS):
    """The non-empty bins: {low, high, n, mean_p, observed, observed_ci}."""
    y, p = np.asarray(y, np.int64), np.asarray(p, np.float64)
    index = _bin_index(p, bins)
    rows = []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        if n:
            hits = int(y[members].sum())
            rows.append({"low": b / bins, "high": (b + 1) / bins, "n": n,
                         "mean_p": float(p[members].mean()), "observed": hits / n,
                         "observed_ci": test_metrics.wilson_interval(hits, n)})
    return rows


def grouped_bootstrap(statistic, y, p, groups, n_resamples=N_RESAMPLES, seed=0, level=0.95):
    """Percentile CI of statistic(y, p) over resamples of groups (patients), as
    learning/metrics.grouped_bootstrap_auc resamples them for the AUROC."""
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        values.append(statistic(y[idx], p[idx]))
    alpha = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(values, [alpha, 1 - alpha]))
    return {"low": low, "high": high, "level": level, "n_resamples": n_resamples,
            "resampling": "groups", "n_groups": len(members)}


def ece_if_calibrated(p, n_draws=N_RESAMPLES, seed=0):
    """ECE of a perfectly calibrated model on these p values: labels drawn as Bernoulli(p)."""
    p = np.asarray(p, np.float64)
    rng = np.random.default_rng(seed)
    values = [ece((rng.random(len(p)) < p).astype(np.float64), p) for _ in range(n_draws)]
    return {"mean": float(np.mean(values)), "p95": float(np.quantile(values, 0.95)),
            "draws": n_draws}


def calibration(y, p, groups, seed=0, n_resamples=N_RESAMPLES):
    """Every calibration number of one labelled set (see the module docstring)."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    prevalence = float(y.mean())
    return {"bins": reliability_bins(y, p), "brier": brier(y, p),
            "brier_ci": grouped_bootstrap(brier, y, p, groups, n_resamples, seed),
            "brier_baseline": prevalence * (1 - prevalence),
            "ece": ece(y, p), "ece_ci": grouped_bootstrap(ece, y, p, groups, n_resamples, seed),
            "ece_if_calibrated": ece_if_calibrated(p, n_resamples, seed),
            "mean_p": float(p.mean()), "prevalence": prevalence}


# ----------------------------------------------------------------------------- the two sets

def pseudo_logits(p_normal, p_abnormal):
    """(N, 2) log-probabilities: the same ranking and argmax as the model's logits (a softmax
    is unchanged by a constant shift), for learning/metrics.evaluate."""
    with np.errstate(divide="ignore"):
        return np.log(np.maximum(np.stack([p_normal, p_abnormal], axis=1), 1e-300))


def evaluate_set(labels, p_normal, p_abnormal, groups, seed=0, n_resamples=N_RESAMPLES):
    """stage 5's test report (learning/metrics.evaluate) + calibration, for labels 0/1."""
    labels = np.asarray(labels, np.int64)
    p_normal, p_abnormal = np.asarray(p_normal, np.float64), np.asarray(p_abnormal, np.float64)
    report = test_metrics.evaluate(labels, pseudo_logits(p_normal, p_abnormal), groups,
                                   None, n_resamples, seed)
    report["calibration"] = calibration(labels, p_abnormal, groups, seed, n_resamples)
    return report


def labelled_arrays(entries, records):
    """(labels 0/1, p_normal, p_abnormal, groups) of the entries with a label, or None when
    none has one; the group is the record's report_id (patient), else the image itself."""
    labels, p_normal, p_abnormal, groups = [], [], [], []
    for e in entries:          # one pass, keeping four numbers a labelled image, not its entry
        if e["label"] in test_metrics.CLASS_NAMES:
            labels.append(test_metrics.CLASS_NAMES.index(e["label"]))
            p_normal.append(e["p_normal"])
            p_abnormal.append(e["p_abnormal"])
            groups.append((records.get(e["name"]) or {}).get("report_id") or e["name"])
    if not labels:
        return None
    return (np.array(labels, np.int64), np.array(p_normal, np.float64),
            np.array(p_abnormal, np.float64), groups)


def read_own_predictions(model_dir):
    """(labels 0/1, p_abnormal, groups) of the model's test_predictions.csv, or None (a note)
    when it is missing or unreadable."""
    path = os.path.join(model_dir, OWN_PREDICTIONS)
    if not os.path.isfile(path):
        return None
    try:
        rows = list(csv.DictReader(io.StringIO(
            read_regular(path, MAX_PREDICTIONS_BYTES, "test predictions").decode("utf-8"))))
        labels = np.array([test_metrics.CLASS_NAMES.index(r["label"]) for r in rows], np.int64)
        p = np.array([float(r["p_abnormal"]) for r in rows], np.float64)
        groups = [r.get("group") or r["name"] for r in rows]
    except (UserError, UnicodeDecodeError, csv.Error, KeyError, ValueError, TypeError) as error:
        log(f"note: {path} is unreadable ({type(error).__name__}); the model's own test set "
            f"is shown without calibration")
        return None
    if not len(labels) or not np.all((p >= 0) & (p <= 1)):
        return None
    return labels, p, groups


def model_test_block(model_metrics, model_dir, seed=0, n_resamples=N_RESAMPLES):
    """The model's own test numbers: metrics.json's 'test' (+ calibration from its
    test_predictions.csv); None without metrics.json."""
    test = (model_metrics or {}).get("test")
    if not isinstance(test, dict):
        return None
    block = dict(test)
    own = read_own_predictions(model_dir)
    if own is not None:
        block["calibration"] = calibration(own[0], own[1], own[2], seed, n_resamples)
    return block


# ----------------------------------------------------------------------------- in words

def _ci(value, ci, digits=3):
    if value is None:
        return "n/a"
    if not isinstance(ci, dict) or ci.get("low") is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def _column(block):
    """The printed values of one set, in ROWS order ('-' where the set lacks the number)."""
    if not block:
        return ["-"] * len(ROWS)
    point = block.get("operating_point") or {}
    base = block.get("baseline_majority") or {}
    cal = block.get("calibration")
    n_groups = (block.get("roc_auc_ci") or {}).get("n_groups")
    majority = base.get("accuracy")
    return [
        f"{block.get('n', 0):,}" + (f" ({n_groups:,} patients)" if n_groups else ""),
        _ci(block.get("roc_auc"), block.get("roc_auc_ci")),
        _ci(point.get("sensitivity"), point.get("sensitivity_ci")),
        _ci(point.get("specificity"), point.get("specificity_ci")),
        (f"{block['accuracy']:.3f}" if block.get("accuracy") is not None else "n/a")
        + (f" (majority {majority:.3f})" if majority is not None else ""),
        (f"{_ci(cal['brier'], cal['brier_ci'])} (base rate {cal['brier_baseline']:.3f})"
         if cal else "-"),
        (f"{_ci(cal['ece'], cal['ece_ci'])} (if calibrated {cal['ece_if_calibrated']['mean']:.3f},"
         f" 95th pct {cal['ece_if_calibrated']['p95']:.3f})" if cal else "-"),
        f"{cal['mean_p']:.3f} vs {cal['prevalence']:.3f}" if cal else "-"]


ROWS = ("images", "AUROC [95% CI]", "sensitivity", "specificity", "accuracy",
        "Brier score", "ECE", "mean p vs share abnormal")


def format_table(report):
    """The printed comparison: one row per number, the new images next to the model's test."""
    left, right = _column(report["external"]), _column(report.get("model_test"))
    width = max(len(v) for v in left + ["new images (external)"]) + 2
    lines = [f"  {'':<25}{'new images (external)':<{width}}model's own test set",
             *(f"  {name:<25}{a:<{width}}{b}" for name, a, b in zip(ROWS, left, right))]
    if report["unlabelled"]:
        lines.append(f"  ({report['unlabelled']:,} of {report['n_images']:,} new images have "
                     f"no label: left out of these numbers)")
    return lines


def summary_line(report):
    """One line for the gallery header, every number with its 95% CI."""
    ext = report["external"]
    cal, point = ext["calibration"], ext["operating_point"]
    return (f"external validation on {ext['n']:,} labelled new images: AUROC "
            f"{_ci(ext['roc_auc'], ext['roc_auc_ci'], 2)}; at p(abnormal) > 0.5 sensitivity "
            f"{_ci(point['sensitivity'], point['sensitivity_ci'], 2)}, specificity "
            f"{_ci(point['specificity'], point['specificity_ci'], 2)}; Brier "
            f"{_ci(cal['brier'], cal['brier_ci'])} (base rate {cal['brier_baseline']:.3f}), "
            f"ECE {_ci(cal['ece'], cal['ece_ci'])} (a calibrated model: "
            f"{cal['ece_if_calibrated']['mean']:.3f}); the Classifier block below is the "
            f"model's own test set (external_metrics.json holds both)")


def plot_calibration(report, path):
    """calibration.png: reliability diagram of the new images (and of the model's test set)."""
    from learning.train.plots import _pyplot, _save_figure

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for key, colour, name in (("external", "C3", "new images"),
                              ("model_test", "C0", "model's test set")):
        cal = (report.get(key) or {}).get("calibration")
        if not cal:
            continue
        bins = cal["bins"]
        x = [b["mean_p"] for b in bins]
        y = [b["observed"] for b in bins]
        errors = [[b["observed"] - b["observed_ci"]["low"] for b in bins],
                  [b["observed_ci"]["high"] - b["observed"] for b in bins]]
        axis.errorbar(x, y, yerr=errors, fmt="o-", color=colour, capsize=3,
                      label=f"{name}: ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}")
    axis.set(xlabel="predicted p(abnormal) (bin mean)", ylabel="observed share abnormal",
             title="Reliability diagram (10 bins, Wilson 95% CIs)", xlim=(0, 1),
             ylim=(-0.02, 1.02))
    axis.legend(loc="upper left", fontsize=7)
    _save_figure(figure, path)
    plt.close(figure)
