"""Fine-tune block 5 on tiny X-rays in a process of its own (a real process to kill, or another
Keras backend):

    python tests/learning/finetune_worker.py WORK_DIR [--epochs N] [--stall-epoch E --stall-batch B]
    python tests/learning/finetune_worker.py WORK_DIR --stall-epoch E --stall-batch B \
        --cxr-train TRAINING TESTING MODEL --train-blocks 5 ...   (stage 5's command, stalled)

WORK_DIR holds images/ and examples.json ([path, label, subset] rows) made by
tests/learning/test_finetune.py. Trains with the settings of `settings()`, 2 loader threads (the
parent's reference run uses 1: the result must not depend on it) and the checkpoint
WORK_DIR/checkpoint.npz, then writes WORK_DIR/<backend>/weights.npz (all model weights),
logits.npz (the validation logits) and classifier.keras. With --stall-epoch, the training
set's batch B of epoch E (0-based) writes WORK_DIR/stalled and sleeps instead of returning, so
the parent can SIGKILL the process in the middle of that epoch, its checkpoint of epoch E
already written.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def kill_cxr_train_in_epoch_2(work, argv):
    """Run stage 5's command `argv` through this worker, stalled in the middle of epoch 2 (its
    checkpoint of epoch 1 written), SIGKILL it there -> the killed process's return code."""
    import signal
    import subprocess

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    stalled = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(work),
                                "--stall-epoch", "1", "--stall-batch", "1", "--cxr-train",
                                *argv], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not os.path.exists(os.path.join(work, "stalled")):
        assert stalled.poll() is None, stalled.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "cxr-train never reached epoch 2"
        time.sleep(0.2)
    stalled.send_signal(signal.SIGKILL)
    stalled.communicate()
    return stalled.returncode


def settings(epochs=3):
    from learning.head import PRESETS

    return dict(PRESETS["cam"], head="cam", epochs=epochs, batch_size=3, patience=5)


def examples(work):
    with open(os.path.join(work, "examples.json")) as handle:
        rows = json.load(handle)
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def stall_at(epoch, batch, marker):
    """Make the training set's batch `batch` of epoch `epoch` hang after writing `marker`."""
    from learning.store.image_batches import ImageBatches

    original = ImageBatches.__getitem__

    def getitem(self, index):
        if self.shuffle and self.epoch == epoch and index == batch:
            with open(marker, "w") as handle:
                handle.write(f"epoch {epoch} batch {batch}\n")
            time.sleep(600)
        return original(self, index)

    ImageBatches.__getitem__ = getitem


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--stall-epoch", type=int)
    parser.add_argument("--stall-batch", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cxr-train", nargs=argparse.REMAINDER,
                        help="run stage 5 (cxr-train) with these arguments instead")
    args = parser.parse_args(argv)
    if args.cxr_train is not None:
        from learning.fully_connected_layers_training import main as stage5
        from scraper.cli import run_main

        stall_at(args.stall_epoch, args.stall_batch, os.path.join(args.work, "stalled"))
        return run_main(stage5, "cxr-train", args.cxr_train)

    import keras
    import numpy as np

    from learning.export import save_keras
    from learning.train.finetune import fine_tune, predict_logits

    if args.stall_epoch is not None:
        stall_at(args.stall_epoch, args.stall_batch, os.path.join(args.work, "stalled"))
    paths, labels, subset = examples(args.work)
    model, info = fine_tune(paths, labels, subset, settings(args.epochs), (5,), image_size=32,
                            random_weights=True, seed=3, workers=2,
                            checkpoint=os.path.join(args.work, "checkpoint.npz"))
    out = os.path.join(args.work, keras.backend.backend())
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "weights.npz"), *model.get_weights())
    from learning.store.image_batches import ImageBatches

    val = ImageBatches([p for p, s in zip(paths, subset) if s == "validation"],
                       [y for y, s in zip(labels, subset) if s == "validation"], 32, 4)
    np.savez(os.path.join(out, "logits.npz"), logits=predict_logits(model, val),
             resumed_from=info["resumed_from_epoch"], epochs_run=info["epochs_run"])
    save_keras(model, os.path.join(out, "classifier.keras"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
