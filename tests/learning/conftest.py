import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def stage6_run(tmp_path_factory):
    """One stage-6 run shared by the stage-6 and browser tests: 3 images, two methods,
    sanity check. Returns the results folder."""
    pytest.importorskip("keras")
    from learning import visualization
    from tests.learning.stage6_data import argv, build_data

    root = build_data(tmp_path_factory.mktemp("stage6"))
    assert visualization.main(argv(root, "--method", "deeplift,grad-cam", "--batch-size", "2",
                                   "--sanity-check", "--sanity-images", "2")) == 0
    return root / "results"
