"""Run stages 3, 5 and 6 and DeepLIFT under the Keras backend of this process (KERAS_BACKEND).

    KERAS_BACKEND=jax python tests/learning/backend_worker.py WORK_DIR

Called by tests/learning/test_backends.py in a subprocess (a process has one Keras backend).
WORK_DIR holds what the TensorFlow parent made: vgg16.weights.h5 (a VGG16 no-top weights file),
images/ (3 demo X-rays), tf_head.keras (a head saved under TensorFlow) and inputs.npz. Writes
WORK_DIR/<backend>/: features.pickle (stage 3 with those weights), model/ (stage 5),
results/ (stage 6) and outputs.npz (DeepLIFT attributions, tf_head logits) for the parent to
compare with TensorFlow.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main(work):
    import pathlib

    import keras
    import numpy as np

    from learning import safe_pickle, transfer_feature_extraction, visualization
    from learning.explain import attribution
    from learning import fully_connected_layers_training as training
    from learning.vgg import build_conv_base
    from tests.learning.test_fully_connected_layers_training import make_split
    from tests.learning.stage6_data import argv, build_data

    work = pathlib.Path(work)
    out = work / keras.backend.backend()
    out.mkdir(exist_ok=True)
    inputs = np.load(work / "inputs.npz")

    # stage 3 with the shared weights file
    assert transfer_feature_extraction.main(
        [str(work / "images"), str(out / "features.pickle"), str(work / "vgg16.weights.h5"),
         "--image-size", "32", "--layer", "block5_pool", "--batch-size", "2",
         "--feature-dtype", "float32", "--no-progress"]) == 0

    # a head saved under TensorFlow, loaded here; and DeepLIFT on VGG16 + that head
    head = keras.models.load_model(str(work / "tf_head.keras"))
    conv = build_conv_base(str(work / "vgg16.weights.h5"), image_size=32)
    target = attribution.build_target_model(attribution.build_full_model(conv, head),
                                            "original")
    x, b = inputs["x"], inputs["b"]
    deeplift = attribution.DeepLift(target).attribute(x, b)
    results = {"tf_head_logits": attribution.forward(head, inputs["features"]),
               "deeplift": deeplift, "f_x": attribution.forward(target, x),
               "f_b": attribution.forward(target, b),
               "saliency": attribution.saliency(target, x),
               "grad_cam": attribution.grad_cam(target, x)}

    # stage 5 on tiny synthetic features, then stage 6 end to end (deeplift + grad-cam)
    safe_pickle.dump(make_split("training", 40, 0,
                                lambda i: "validation" if i % 10 in (0, 1) else "train"),
                     out / "training.pickle")
    safe_pickle.dump(make_split("testing", 20, 1, lambda i: "test"), out / "testing.pickle")
    assert training.main([str(out / "training.pickle"), str(out / "testing.pickle"),
                          str(out / "model"), "--epochs", "2", "--bootstrap", "20"]) == 0
    trained = keras.models.load_model(str(out / "model" / training.HEAD_FILE))
    results["trained_logits"] = attribution.forward(trained, inputs["small_features"])
    stage6 = build_data(out / "stage6")
    assert visualization.main(argv(stage6, "--method", "deeplift,grad-cam",
                                    "--batch-size", "2")) == 0
    np.savez(out / "outputs.npz", **results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
