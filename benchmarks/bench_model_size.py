"""Bytes on disk of stage 5's files: a head saved the v1 way (compiled, with Adam's state) vs
stage 5's way (no optimizer state), and the end-to-end classifier.keras.

Builds the head stage 5 builds (learning.head.build_head, any --hidden), trains it one step on
random features so Adam's moment estimates exist, saves it both ways, then exports the
classifier on a random-weights VGG16 at --image-size. Prints the sizes and their ratio.

Measured (2 CPU cores, Keras 3.15, TF 2.21; the v1 default 7x7x512 -> 2048 head):
    head, compiled with Adam (v1)          616,667,054 bytes
    head, stage 5 (no optimizer state)     205,569,878 bytes  (0.3334 of v1)
    classifier.keras (VGG16 conv + head)   264,506,888 bytes (VGG16's conv base: 58.9 MB)
The floor is the 25,088 x 2,048 dense kernel itself (205.5 MB in float32): a smaller file
needs a smaller head (issue 10's head replaces this one).

    python benchmarks/bench_model_size.py                 # the v1 default head
    python benchmarks/bench_model_size.py --hidden 256    # any other size
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import learning  # noqa: E402,F401  (quiet TensorFlow import)
from learning.export import export_classifier, save_keras  # noqa: E402
from learning.head import build_head  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048, help="hidden units of the head")
    parser.add_argument("--image-size", type=int, default=224, help="VGG16 input size")
    args = parser.parse_args(argv)
    import keras

    side = args.image_size // 32
    shape = (side, side, 512)  # block5_pool features
    head = build_head(shape, hidden=args.hidden, input_scaling="global",
                      scaling_stats={"scale": 1.0})
    head.compile(optimizer=keras.optimizers.Adam(1e-4),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    head.fit(np.random.rand(2, *shape).astype(np.float32), np.array([0, 1]), epochs=1,
             verbose=0)
    with tempfile.TemporaryDirectory() as work:
        v1 = os.path.join(work, "v1.keras")
        head.save(v1)
        v1_bytes = os.path.getsize(v1)
        os.unlink(v1)
        stage5 = save_keras(head, os.path.join(work, "head.keras"))
        params = {"weights": "random:seed=0", "image_size": args.image_size,
                  "layer": "block5_pool", "pooling": "none"}
        classifier = export_classifier(os.path.join(work, "classifier.keras"), head, params)
    print(f"head {shape} -> {args.hidden} -> 2, {head.count_params():,} parameters")
    print(f"  head, compiled with Adam (v1)          {v1_bytes:>13,} bytes")
    print(f"  head, stage 5 (no optimizer state)     {stage5:>13,} bytes  "
          f"({stage5 / v1_bytes:.4f} of v1)")
    print(f"  classifier.keras (VGG16 conv + head)   {classifier:>13,} bytes")


if __name__ == "__main__":
    main()
