"""VGG16 weights load from Keras' legacy download layout whatever the file is called."""
import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from learning import vgg
from scraper.cli import UserError


def _legacy_file(path, model):
    """Write `model`'s weights the way keras-applications' VGG16 download is laid out."""
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.fixture(scope="module")
def source_model():
    return vgg.build_conv_base(random_weights=True, seed=3, image_size=32)


@pytest.mark.parametrize("file_name", ["vgg16.weights.h5", "vgg16_notop.h5"])
def test_legacy_layout_loads_under_any_name(tmp_path, source_model, file_name):
    path = tmp_path / file_name
    _legacy_file(path, source_model)
    loaded = vgg.build_conv_base(str(path), image_size=32)
    for ours, theirs in zip(loaded.weights, source_model.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    x = vgg.preprocess(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), source_model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_keras3_weights_file_loads_too(tmp_path, source_model):
    full = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    full.set_weights(source_model.get_weights())
    full.save_weights(tmp_path / "new.weights.h5")
    loaded = vgg.build_conv_base(str(tmp_path / "new.weights.h5"), image_size=32)
    np.testing.assert_array_equal(loaded.weights[0].numpy(), source_model.weights[0].numpy())


def test_other_hdf5_is_a_clear_error(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.attrs["layer_names"] = [b"dense_1"]
        handle.create_group("dense_1").attrs["weight_names"] = [b"dense_1/kernel:0"]
        handle["dense_1"].create_dataset("dense_1/kernel:0", data=np.zeros((3, 3)))
    with pytest.raises(UserError, match="not a VGG16 no-top weights file .*no weights for layer"):
        vgg.build_conv_base(str(tmp_path / "other.h5"), image_size=32)
