"""Quality benchmark: stages 2-5 on a labelled folder dataset, the head against two baselines.

Runs, into --work-dir (outputs are reused between runs: stage 2 skips present images, stage 3
computes features only for new or changed images):
  stage 2  scraper.folder.import_folder  (labels.csv column `abnormal`, group `patient_id`,
                                          boxes from bboxes.csv)
  stage 3  learning.transfer_feature_extraction.extract_features  (--random-weights: offline)
  stage 4  learning.learning_examples_preparing.prepare  (split by patient, seeded)
  stage 5  learning.fully_connected_layers_training.run  (--head default, and original)
and prints the test AUROC with its grouped-bootstrap 95% CI for each head, the majority-class
baseline and a logistic regression (StandardScaler + sklearn LogisticRegression, C=1) fitted on
the same training images and scored on the same test images with the same bootstrap.

Random conv weights (the default) mean these numbers say how separable the set is with the
pipeline's machinery (and its shortcuts, e.g. AP vs PA films), not what ImageNet features
would reach; `--weights FILE` uses real ones. `--features-from OLD.pickle` starts from an
existing features file (e.g. an old single-pickle cxr-features/1 made with the same weights):
stage 3 then converts it into the sharded store instead of recomputing. `--head-seeds 0,1,2`
trains each head with several seeds on the one split. The store's disk use per image is
printed.

Example:
    python benchmarks/bench_quality.py ../shared/datasets/nih-cxr-1000 --work-dir /tmp/bq
    python benchmarks/bench_quality.py NIH --work-dir /tmp/bq16 --weights vgg16.h5 \\
        --layer block4_pool --heads cam --head-seeds 0,1,2 --features-from b4p-224.pickle

MEASURED (store, issue 16): see the table at the end of this docstring.
"""
import argparse
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from learning.fully_connected_layers_training import resolve_config, run  # noqa: E402
from learning.learning_examples_preparing import count_table, prepare  # noqa: E402
from learning.metrics import evaluate  # noqa: E402
from learning.store.splits import load_pair  # noqa: E402
from scraper.cli import UserError, elapsed_since, exit_with, log  # noqa: E402
from scraper.fileio import atomic_write_json  # noqa: E402


def stage2(dataset, data_dir):
    from scraper.folder import import_folder

    boxes = os.path.join(dataset, "bboxes.csv")
    import_folder(data_dir, os.path.join(dataset, "images"),
                  labels_csv=os.path.join(dataset, "labels.csv"),
                  boxes_csv=boxes if os.path.isfile(boxes) else None,
                  label_column="abnormal", group_column="patient_id", progress=False)
    return os.path.join(data_dir, "images-description.json")


def stage3(data_dir, features_path, args):
    from learning.store.index import shards_folder
    from learning.transfer_feature_extraction import extract_features, summary_line

    if args.features_from and not os.path.exists(features_path):
        shutil.copy(args.features_from, features_path)   # converted by stage 3, not recomputed
    stats = extract_features(os.path.join(data_dir, "images"), features_path,
                             weights_path=args.weights, random_weights=not args.weights,
                             seed=args.seed, precision=args.precision, layer=args.layer,
                             feature_dtype=args.feature_dtype, progress=sys.stderr.isatty())
    log(summary_line(stats, features_path))
    folder = shards_folder(features_path)
    size = os.path.getsize(features_path) + sum(
        os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
    images = stats.total - stats.failed
    log(f"[bench] store: {size / images / 1024:.1f} KiB per image ({args.feature_dtype}, "
        f"{args.layer}; index + shards, {images:,} images)")
    return size / images


def logistic_baseline(training_path, testing_path, seed, n_resamples):
    """StandardScaler + LogisticRegression(C=1) on all training.pickle rows (train and
    validation: it has no early stopping), scored on the test set like the head."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    training, testing = load_pair(training_path, testing_path)
    x_train = training["source"].read(np.arange(len(training["names"])))  # all in memory
    x_test = testing["source"].read(np.arange(len(testing["names"])))
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000,
                                                               random_state=seed))
    model.fit(x_train, training["labels"])
    score = model.decision_function(x_test)
    logits = np.stack([np.zeros_like(score), score], axis=1)  # difference = decision function
    return evaluate(testing["labels"], logits, testing["groups"], training["labels"],
                    n_resamples, seed)


def auc_text(metrics):
    if metrics["roc_auc"] is None:
        return "n/a (one class in test)"
    ci = metrics["roc_auc_ci"]
    return f"{metrics['roc_auc']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Stages 2-5 on a labelled image folder; head vs majority and logistic "
                    "regression baselines.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("dataset", help="folder with images/, labels.csv (image, abnormal, "
                                        "patient_id, ...) and optionally bboxes.csv")
    parser.add_argument("--work-dir", default="bench-quality-work",
                        help="outputs (reused between runs: features are cached)")
    parser.add_argument("--precision", default="fp32", help="stage-3 precision (fp32, bf16)")
    parser.add_argument("--weights", default=None, help="VGG16 weights file (default: random)")
    parser.add_argument("--layer", default="block5_pool", help="stage-3 layer")
    parser.add_argument("--feature-dtype", default="float16", help="store dtype")
    parser.add_argument("--features-from", default=None,
                        help="an existing features file to start stage 3 from (converted)")
    parser.add_argument("--head-seeds", default=None,
                        help="comma-separated seeds of the heads (default: --seed)")
    parser.add_argument("--heads", default="default,original",
                        help="comma-separated head presets to train")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, conv and heads")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.monotonic()
    if not os.path.isfile(os.path.join(args.dataset, "labels.csv")):
        raise UserError(f"{args.dataset} has no labels.csv")
    work = os.path.abspath(args.work_dir)
    data_dir = os.path.join(work, "data")
    paths = {name: os.path.join(work, name) for name in
             ("transfer_features.pickle", "training.pickle", "testing.pickle", "examples.json")}
    step = time.monotonic()
    descriptions = stage2(args.dataset, data_dir)
    log(f"[bench] stage 2 (folder import): {elapsed_since(step)}")
    step = time.monotonic()
    bytes_per_image = stage3(data_dir, paths["transfer_features.pickle"], args)
    log(f"[bench] stage 3 (features, {'real' if args.weights else 'random'} weights, "
        f"{args.precision}): {elapsed_since(step)}")
    subset, counts, labels, _ = prepare(descriptions, paths["transfer_features.pickle"],
                                        paths["training.pickle"], paths["testing.pickle"],
                                        paths["examples.json"], seed=args.seed)
    log(count_table(labels, subset))
    log(f"[bench] stage 4 dropped: {counts}")
    results = {}
    seeds = [int(s) for s in (args.head_seeds or str(args.seed)).split(",")]
    for head in [h for h in args.heads.split(",") if h]:
        for seed in seeds:
            step = time.monotonic()
            config = resolve_config(argparse.Namespace(head=head, epochs=None, batch_size=None,
                                                       learning_rate=None, dropout=None,
                                                       patience=None))
            metrics, _ = run(paths["training.pickle"], paths["testing.pickle"],
                             os.path.join(work, f"model-{head}-s{seed}"), config, seed,
                             args.bootstrap, {"head": head, "seed": seed})
            metrics["train_seconds"] = round(time.monotonic() - step, 1)
            results[f"head:{head} seed {seed}"] = metrics
            log(f"[bench] head {head} seed {seed}: test AUROC {auc_text(metrics['test'])}, "
                f"epochs {metrics['epochs_run']} (kept {metrics['best_epoch']}), "
                f"{elapsed_since(step)}")
        aucs = [results[f"head:{head} seed {s}"]["test"]["roc_auc"] for s in seeds]
        if len(seeds) > 1 and None not in aucs:
            print(f"head {head}: test AUROC over seeds {seeds}: mean {np.mean(aucs):.3f} "
                  f"+- {np.std(aucs, ddof=1):.3f} (sd)")
    step = time.monotonic()
    logreg = logistic_baseline(paths["training.pickle"], paths["testing.pickle"], args.seed,
                               args.bootstrap)
    log(f"[bench] logistic regression: {elapsed_since(step)}")
    first = next(iter(results.values()))
    baseline = first["test"]["baseline_majority"] if results else logreg["baseline_majority"]
    rows = [(name, m["test"]["roc_auc"], auc_text(m["test"]), m["test"]["accuracy"],
             f"{m['epochs_run']} (kept {m['best_epoch']})") for name, m in results.items()]
    rows.append(("logistic regression", logreg["roc_auc"], auc_text(logreg),
                 logreg["accuracy"], "-"))
    print(f"test set: {first['n_test'] if results else logreg['n']} images; train "
          f"{first['n_train'] if results else '-'}, validation "
          f"{first['n_validation'] if results else '-'} (split by patient, seed {args.seed})")
    print(f"{'model':<22}{'test AUROC [95% CI, by patient]':<34}{'accuracy':>9}  epochs")
    for name, _, text, accuracy, epochs in rows:
        print(f"{name:<22}{text:<34}{accuracy:>9.3f}  {epochs}")
    print(f"{'majority baseline':<22}{'0.500':<34}{baseline['accuracy']:>9.3f}  "
          f"(always {baseline['predicts']!r})")
    atomic_write_json(os.path.join(work, "bench-quality.json"), {
        "dataset": os.path.abspath(args.dataset), "seed": args.seed,
        "precision": args.precision, "feature_dtype": args.feature_dtype,
        "store_bytes_per_image": bytes_per_image, "heads": results, "logistic_regression": logreg,
        "majority_baseline": baseline, "dropped": counts})
    log(f"[bench] done in {elapsed_since(start)}; details in "
        f"{os.path.join(work, 'bench-quality.json')}")
    return 0


if __name__ == "__main__":
    exit_with(main, "bench_quality")
