"""run_pipeline.sh's parameters: params.toml tables and --set overrides, checked against each
stage's real argparse parser, printed as bash arrays."""
import subprocess

import pytest

from learning import pipeline_params
from learning.pipeline_params import apply_override, main, resolve
from scraper.cli import UserError, run_main


def write(tmp_path, text):
    path = tmp_path / "params.toml"
    path.write_text(text)
    return path


def test_tables_become_each_stages_flags(tmp_path):
    path = write(tmp_path, """
[features]
image_size = 64
[train]
epochs = 20
learning-rate = 1e-4
[visualize]
method = ["deeplift", "grad-cam"]
sanity-check = true
[examples]
test-fraction = 0.2
""")
    extra, source = resolve(path, ["visualize.smooth=0", "train.epochs=5"],
                            ["--source", "folder", "--images", "my xrays"])
    assert extra[3] == ["--image-size", "64"]
    assert extra[4] == ["--test-fraction", "0.2"]
    assert extra[5] == ["--epochs", "5", "--learning-rate", "0.0001"]  # --set wins
    assert extra[6] == ["--method", "deeplift", "--method", "grad-cam", "--sanity-check",
                        "--smooth", "0"]
    assert extra[1] == extra[2] == [] and source == ["--source", "folder", "--images", "my xrays"]


def test_a_missing_file_means_no_parameters(tmp_path):
    extra, _ = resolve(tmp_path / "none.toml")
    assert all(words == [] for words in extra.values()) and len(extra) == 6


def test_false_switch_gives_nothing_and_override_replaces_a_list(tmp_path):
    params = {"visualize": {"method": ["deeplift", "saliency"]}}
    apply_override(params, "visualize.method=grad-cam")
    apply_override(params, "visualize.sanity-check=false")
    assert params["visualize"] == {"method": "grad-cam", "sanity-check": False}
    parser = pipeline_params.stage_parser("visualize")
    assert pipeline_params.stage_words("visualize", params["visualize"], parser) == [
        "--method", "grad-cam"]


@pytest.mark.parametrize("text, overrides, message", [
    ("[train]\nepoch = 3\n", [], "unknown parameter [train] epoch: cxr-train has no --epoch"),
    ("[trian]\nepochs = 3\n", [], "unknown table [trian]; tables are the stages"),
    ("[train]\nepochs = 'many'\n", [],
     "parameters [train]: argument --epochs: invalid number of epochs 'many'"),
    ("[train]\nepochs = [1, 2]\n", [], "[train] epochs is a list, but --epochs takes one"),
    ("[visualize]\nsanity-check = 1\n", [], "--sanity-check is a switch, give true or false"),
    ("[features]\nrandom-weights = true\n", [], "use run_pipeline.sh --random-weights"),
    ("[train]\nhead = 'big'\n", [], "argument --head: invalid choice: 'big'"),
    ("train = 3\n", [], "'train' must be a table"),
    ("[train\n", [], "is not valid TOML"),
    ("", ["visualize.nope=1"], "unknown parameter [visualize] nope: cxr-visualize has no --nope"),
    ("", ["visualize"], "expected STAGE.FLAG=VALUE"),
    ("", ["paint.method=x"], "unknown stage 'paint'"),
])
def test_bad_parameters_are_refused_naming_them(tmp_path, text, overrides, message):
    with pytest.raises(UserError) as error:
        resolve(write(tmp_path, text), overrides)
    assert message in str(error.value)


def test_unknown_pipeline_flags_are_refused_naming_them(tmp_path):
    with pytest.raises(UserError) as error:
        resolve(tmp_path / "none.toml", [], ["--random-weight"])
    assert "unknown option --random-weight" in str(error.value)
    with pytest.raises(UserError) as error:  # a later stage's flag: say where it goes
        resolve(tmp_path / "none.toml", [], ["--method", "grad-cam"])
    assert "flag of stage 'visualize'" in str(error.value)
    assert "--set visualize.method=VALUE" in str(error.value)
    with pytest.raises(UserError) as error:  # stage 2's own parser checks the values
        resolve(tmp_path / "none.toml", [], ["--source", "ftp"])
    assert "stage 2 options: argument --source: invalid choice: 'ftp'" in str(error.value)


def test_output_is_bash_arrays_that_keep_spaces(tmp_path, capsys):
    path = write(tmp_path, "[visualize]\ndescriptions = \"my data/it's.json\"\n")
    assert run_main(main, "run_pipeline", [str(path), "--", "--images", "my xrays"]) == 0
    script = capsys.readouterr().out + '\nprintf "<%s>" "${PARAMS_6[@]}" "${SOURCE_ARGS[@]}"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout == "<--descriptions><my data/it's.json><--images><my xrays>"
