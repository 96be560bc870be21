"""One output per finding: the finding labels from stage 2 to stage 4's split, stage 5's targets
and loss, and the check that the asked findings exist in the data.

Stage 4 (learning_examples_preparing.py) carries each image's "finding_labels" (scraper/
findings.py's vocabulary) into training.pickle / testing.pickle as references do: two keys,
    "finding_names"   the vocabulary, in order (list of str, K = 14)
    "finding_labels"  int8 (n, K): 1 = the image has the finding, 0 = it has not (a normal image
                      never has one), -1 = not known (its record has no finding_labels)
(`finding_matrix`). Old split files without them read as "no finding labels".

Stage 5 with `--findings all|A,B,...` (`resolve_findings`) trains one sigmoid output per finding
besides the two softmax logits [normal, abnormal] ("abnormal = any": the binary output stays,
trained as before). The model's output is ONE tensor of 2 + K logits [normal, abnormal, f_1,
.., f_K]: the first two are softmax logits exactly as a binary model's, each further one a
sigmoid logit, so every consumer that reads p(abnormal) takes the first two columns. The
targets are an (n, 1 + K) float array [label, y_1, .., y_K] (`targets`) and the loss
(`findings_loss`) the sum of the softmax cross-entropy of the first two logits and the mean
over findings of each output's binary cross-entropy; a finding that is not known for an image
(-1) adds nothing for that image. With class weights (every preset but "original"), each
finding's positives and negatives are weighted n / (2 n_c) as the two classes are.
"""
import numpy as np

from scraper.cli import UserError, fmt_count, log
from scraper.findings import ALL, FINDINGS

UNKNOWN = -1


def finding_matrix(records, names):
    """(len(names), K) int8 matrix of the images `names` (1 / 0 / -1 unknown) from the records
    of images-description.json (an iterable, e.g. streamed by learning.store.descriptions)."""
    position = {name: i for i, name in enumerate(names)}
    matrix = np.full((len(names), len(FINDINGS)), UNKNOWN, dtype=np.int8)
    column = {name: k for k, name in enumerate(FINDINGS)}
    for record in records:
        i = position.get(record["name"])
        if i is None:
            continue
        if "finding_labels" in record or record["label"] == "normal":
            matrix[i] = 0
            for name in record.get("finding_labels") or ():
                matrix[i, column[name]] = 1
    return matrix


def count_line(matrix, prog):
    """Stage 4's line on the finding labels it carried; None when no image names a finding
    (a normal/abnormal data set: its normal images alone are "known")."""
    known = (matrix >= 0).all(axis=1)
    counts = (matrix == 1).sum(axis=0)
    if not counts.any():
        return None
    shown = ", ".join(f"{FINDINGS[k]} {fmt_count(int(counts[k]))}"
                      for k in np.argsort(-counts, kind="stable") if counts[k])
    return (f"{prog}: finding labels known for {fmt_count(int(known.sum()))} of "
            f"{fmt_count(len(matrix))} images: {shown}")


def check_split_findings(data, path, n):
    """load_split's check of the two keys (None, None when absent: an older split)."""
    from learning import safe_pickle

    names, matrix = data.get("finding_names"), data.get("finding_labels")
    if names is None and matrix is None:
        return None, None
    names = safe_pickle.check_str_list(names, "finding_names", path)
    matrix = safe_pickle.check_array(matrix, "finding_labels", path, ndims=(2,))
    if matrix.shape != (n, len(names)) or (matrix.size and not np.isin(matrix, (-1, 0, 1)).all()):
        raise UserError(f"{path}: 'finding_labels' must be -1/0/1 of shape ({n:,}, "
                        f"{len(names)}), found shape {matrix.shape}; re-run stage 4")
    return names, matrix.astype(np.int8, copy=False)


# ----------------------------------------------------------------------------- stage 5

def resolve_findings(asked, training):
    """The findings stage 5 trains (a tuple of vocabulary names) for --findings `asked` ("all"
    or names), checked on the training split; UserError (one line) when the data cannot give
    them: no finding labels at all, a named finding no training image carries, none left."""
    names, matrix = training.get("finding_names"), training.get("finding_labels")
    if matrix is None or not (matrix == 1).any():
        raise UserError("--findings: the training images carry no finding labels (stage 2 "
                        "reads them from a labels CSV's finding_labels column or Open-i's MeSH "
                        "terms; re-run stages 2 and 4), or drop --findings to train normal vs "
                        "abnormal")
    subset = np.asarray(training["subset"], dtype=object)
    positives = {name: int((matrix[subset == "train", k] == 1).sum())
                 for k, name in enumerate(names)}
    carried = ", ".join(f"{name} {count:,}" for name, count in
                        sorted(positives.items(), key=lambda item: -item[1]) if count)
    if asked == ALL:
        chosen = tuple(name for name in names if positives[name])
        if not chosen:
            raise UserError("--findings all: no training image carries any finding of the "
                            "vocabulary (every finding_labels is empty)")
        skipped = [name for name in names if not positives[name]]
        if skipped:
            log(f"cxr-train: --findings all: {', '.join(skipped)} left out (no training image "
                f"carries them)")
        return chosen
    missing = [name for name in asked if name not in positives or not positives[name]]
    if missing:
        raise UserError(f"--findings: no training image carries {', '.join(missing)}; the "
                        f"training images carry: {carried or 'no finding'}")
    return tuple(asked)


def targets(labels, training, chosen):
    """(n, 1 + K) float32 targets [label, y_1, .., y_K] (-1: not known) of the chosen
    findings; `labels` (n,) 0/1."""
    names = list(training["finding_names"])
    columns = [names.index(name) for name in chosen]
    matrix = np.asarray(training["finding_labels"])[:, columns]
    return np.concatenate([np.asarray(labels, np.float32)[:, None],
                           matrix.astype(np.float32)], axis=1)


def positive_weights(target_rows, balanced):
    """(2, K) weights of negatives (row 0) and positives (row 1) per finding: n / (2 n_c)
    over the known rows when `balanced`, else ones."""
    y = np.asarray(target_rows)[:, 1:]
    weights = np.ones((2, y.shape[1]), np.float32)
    if balanced:
        for k in range(y.shape[1]):
            known = y[:, k] >= 0
            counts = np.array([(y[known, k] == c).sum() for c in (0, 1)], np.float64)
            weights[:, k] = np.where(counts > 0, known.sum() / (2 * np.maximum(counts, 1)), 0)
    return weights


def findings_loss(weights):
    """A Keras loss over (n, 1 + K) targets and (n, 2 + K) logits (see the module doc)."""
    import keras
    from keras import ops

    table = np.asarray(weights, np.float32)   # (2, K)

    def loss(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        label = ops.cast(y_true[:, 0], "int32")
        binary = keras.losses.sparse_categorical_crossentropy(label, y_pred[:, :2],
                                                              from_logits=True)   # (n,)
        y, z = y_true[:, 1:], y_pred[:, 2:]                                       # (n, K)
        known = ops.cast(y >= 0, "float32")
        y = ops.maximum(y, 0.0)
        # stable binary cross-entropy of logits: max(z, 0) - z y + log(1 + exp(-|z|))
        bce = ops.maximum(z, 0.0) - z * y + ops.log1p(ops.exp(-ops.abs(z)))
        weight = known * (table[0] * (1.0 - y) + table[1] * y)
        return binary + ops.mean(bce * weight, axis=-1)

    return loss


def numpy_loss(target_rows, logits, weights):
    """`findings_loss` in numpy (float64), for the validation loss of early stopping."""
    from learning.train.loop import cross_entropy

    target_rows, logits = np.asarray(target_rows, np.float64), np.asarray(logits, np.float64)
    binary = cross_entropy(target_rows[:, 0].astype(np.int64), logits[:, :2])
    y, z = target_rows[:, 1:], logits[:, 2:]
    known, y = (y >= 0).astype(np.float64), np.maximum(y, 0)
    bce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    weight = known * (weights[0] * (1 - y) + weights[1] * y)
    return binary + float(np.mean((bce * weight).mean(axis=-1)))


def sigmoid(logits):
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
