"""Stage 5's figures: the test ROC curve (with the operating point the head uses) and the
training curve (loss and validation AUROC per epoch, the kept epoch marked)."""
import numpy as np

from scraper.fileio import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(figure, path):
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")


def plot_roc(labels, logits, metrics, path, title="Test-set ROC curve"):
    """roc.png: see roc_figure."""
    figure = roc_figure(labels, logits, metrics, title)
    _save_figure(figure, path)
    _pyplot().close(figure)


def roc_figure(labels, logits, metrics, title="Test-set ROC curve"):
    """ROC of the logit difference; the operating point (p(abnormal) > 0.5) as a marker."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="chance / majority baseline (AUC 0.5)")
    if metrics["roc_auc"] is not None:
        fpr, tpr, _ = roc_curve(labels, logits[:, 1] - logits[:, 0])
        ci = metrics["roc_auc_ci"]
        interval = f", 95% CI {ci['low']:.3f}-{ci['high']:.3f}" if ci["low"] is not None else ""
        axis.plot(fpr, tpr, color="C0", label=f"head: AUC {metrics['roc_auc']:.3f}{interval}")
    else:
        axis.text(0.5, 0.5, "AUROC undefined:\none class in the test set", ha="center")
    point = metrics.get("operating_point") or {}
    if point.get("sensitivity") is not None and point.get("specificity") is not None:
        axis.plot([1 - point["specificity"]], [point["sensitivity"]], "o", color="C3",
                  markersize=8, label=f"operating point, p(abnormal) > 0.5: sensitivity "
                                      f"{point['sensitivity']:.2f}, specificity "
                                      f"{point['specificity']:.2f}")
    axis.set(xlabel="false positive rate (normal called abnormal)",
             ylabel="true positive rate (abnormal detected)",
             title=f"{title} (n={metrics['n']:,})", xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right", fontsize=7)
    return figure


def plot_training_curve(info, path):
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    history = info["history"]
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, history["loss"], label="training loss (class-weighted)"
                   if info.get("class_weights") else "training loss")
    if history["val_loss"]:
        loss_axis.plot(epochs, history["val_loss"], label="validation loss")
    auc_values = [np.nan if v is None else v for v in history["val_auroc"]]
    if auc_values:
        auc_axis.plot(epochs, auc_values, color="C2", label="validation ROC AUC")
    else:
        auc_axis.text(0.5, 0.5, "no validation images", ha="center", transform=auc_axis.transAxes)
    for axis in (loss_axis, auc_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.axvline(info["best_epoch"], color="grey", linestyle=":",
                     label=f"kept epoch {info['best_epoch']}")
        axis.set_xlabel("epoch")
        axis.legend(fontsize=8)
    loss_axis.set(ylabel="cross-entropy", title="Loss per epoch")
    auc_axis.set(ylabel="ROC AUC", title="Validation ROC AUC per epoch")
    _save_figure(figure, path)
    plt.close(figure)
