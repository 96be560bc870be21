"""run_pipeline.sh's parameters: params.toml tables and --set overrides, checked against each
stage's real argparse parser, printed as bash arrays."""
import argparse
import os
import pathlib
import re
import resource
import shlex
import subprocess
import sys

import pytest

from learning import pipeline_params
from learning.pipeline_params import apply_override, main, resolve
from scraper.cli import UserError, number, positive_float, run_main

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


def load_words_function():
    """run_pipeline.sh's own `load_words` (the reader of the words file), as bash text."""
    script = (ROOT / "run_pipeline.sh").read_text()
    start = script.index("load_words() {")
    return script[start:script.index("\n}\n", start) + 3]


def test_the_words_file_is_data_never_code(tmp_path, capsys):
    """What a stage receives is exactly what was written, $(...) and quotes included: the
    words travel as NUL-separated data and run_pipeline.sh never evaluates them."""
    marker = tmp_path / "PWNED"
    path = write(tmp_path, f'[visualize]\ndescriptions = "my data/it\'s $(touch {marker}).json"\n')
    out = tmp_path / "words"
    assert run_main(main, "run_pipeline", [str(path), "--out", str(out), "--", "--images",
                                           "my xrays", "--query", "`touch x`;echo"]) == 0
    assert capsys.readouterr().out == ""  # nothing on stdout: stdout is never read
    script = ("die() { echo \"die: $*\"; exit 9; }\n" + load_words_function() +
              f'\nload_words {shlex.quote(str(out))}\n'
              'printf "<%s>" "${PARAMS_6[@]}" "${SOURCE_ARGS[@]}" "${#PARAMS_1[@]}"')
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout == (f"<--descriptions><my data/it's $(touch {marker}).json>"
                             "<--images><my xrays><--query><`touch x`;echo><0>")
    assert not marker.exists()
    out.write_bytes(b"cxr-scrape 0.1.0\n")  # anything else (e.g. a --version text) is refused
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 9 and "unreadable parameter list" in result.stdout


@pytest.mark.parametrize("stage", [name for _, name, _ in pipeline_params.STAGES])
def test_no_parser_takes_an_abbreviation(stage):
    """`--ver` is not `--version`, `--epoch` not `--epochs`: argparse's prefix matching is off
    in the one shared parser class every stage builds on."""
    parser = pipeline_params.stage_parser(stage)
    assert parser.allow_abbrev is False
    positionals = [a for a in parser._actions if not a.option_strings and a.nargs != "?"]
    longest = max(pipeline_params._options(parser), key=len)
    for word in ("--ver", "--vers", "--he", longest[:-1]):
        with pytest.raises(UserError, match="unrecognized arguments"):
            parser.parse_args(["x"] * len(positionals) + [word])


@pytest.mark.parametrize("words", [["--version"], ["-h"], ["--help"], ["--source", "folder",
                                                                      "--help"]])
def test_help_and_version_in_stage_options_are_refused_not_printed(tmp_path, capsys, words):
    with pytest.raises(UserError, match="is not a pipeline option here") as error:
        resolve(tmp_path / "none.toml", [], words)
    assert error.value.exit_code == 2 and capsys.readouterr().out == ""


def commands(*lines):
    """The --check input: [(stage number, [command words])...] as NUL-separated bytes."""
    fields = [field for number, words in lines for field in (str(number), str(len(words)),
                                                                *words)]
    return b"".join(field.encode() + b"\0" for field in fields)


def test_check_parses_every_full_command_line_with_the_stage_s_parser(tmp_path):
    good = [(2, ["cxr-scrape", "d", "--source", "folder", "--images", "x"]),
            (4, ["cxr-prepare-examples", "a", "b", "c", "d", "e", "--seed", "4294967295"]),
            (6, ["cxr-visualize", "w", "m", "e", "i", "r", "--smooth", "0"])]
    for stage, words in pipeline_params.parse_commands(commands(*good)):
        pipeline_params.check_command(stage, words)
    bad = [
        ((4, ["cxr-prepare-examples", "a", "b", "c", "d", "e", "--seed", "9999999999"]),
         "stage 4 (examples) would fail: argument --seed: invalid seed '9999999999'"),
        ((5, ["cxr-train", "a", "b"]), "stage 5 (train) would fail: the following arguments "
                                       "are required: model"),
        ((2, ["cxr-scrape", "d", "--labels", "l.csv"]),  # a combination only check_argv sees
         "stage 2 (scrape) would fail: --labels applies to --source folder"),
        ((6, ["cxr-visualize", "w", "m", "e", "i", "r", "--version"]),
         "--version is not a pipeline option here"),
    ]
    for (stage, words), message in bad:
        with pytest.raises(UserError, match=re.escape(message)) as error:
            pipeline_params.check_command(stage, words)
        assert error.value.exit_code == 2 and "nothing was run" in str(error.value)


def test_check_refuses_a_malformed_list():
    with pytest.raises(UserError, match="malformed command list"):
        pipeline_params.parse_commands(b"2\x005\x00cxr-scrape\x00")
    with pytest.raises(UserError, match="malformed command list"):
        pipeline_params.parse_commands(b"two\x001\x00x\x00")


def test_learning_rate_inf_is_refused_from_params_too(tmp_path):
    """Non-finite numbers: the shared numeric type refuses them whatever the bounds."""
    for text in ("inf", "-inf", "nan", "1e400"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
            number(float)(text)
        with pytest.raises(argparse.ArgumentTypeError, match="not a finite number"):
            positive_float(text)
    assert number(float)("1e300") == 1e300


# ---- params.toml that is no parameters file --------------------------------------------------

def isolated_resolve(path, timeout=30):
    """resolve(path) in a child capped at 1 GB: a hang or an endless read fails the test
    instead of the machine. Returns (exit code, stderr)."""
    code = ("import sys; from scraper.cli import run_main; from learning.pipeline_params import "
            "main; sys.exit(run_main(main, 'run_pipeline', [sys.argv[1]]))")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, timeout=timeout,
                              capture_output=True, text=True, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path} hung for {timeout} s")
    return done.returncode, done.stderr


def test_params_that_are_no_file_get_one_line_never_a_hang(tmp_path):
    fifo = tmp_path / "fifo" / "params.toml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    zero = tmp_path / "zero" / "params.toml"
    zero.parent.mkdir()
    zero.symlink_to("/dev/zero")
    dangling = tmp_path / "dangling" / "params.toml"
    dangling.parent.mkdir()
    dangling.symlink_to(tmp_path / "gone.toml")
    for path, message in ((fifo, "is not a regular file (a FIFO/named pipe)"),
                          (zero, "is not a regular file (a character device)"),
                          (dangling, "which does not exist")):
        code, err = isolated_resolve(path)
        assert code == 1 and len(err.splitlines()) == 1 and message in err, err


def test_params_that_are_no_toml_get_one_line(tmp_path):
    cases = {
        b"[train]\nepochs = 3 # \xff\xfe\n": "is not UTF-8 text (byte 0xff at offset 21)",
        b"[train]\nx = " + b"[" * 100_000 + b"]" * 100_000 + b"\n": "nests arrays or tables "
                                                                       "too deeply",
        b"[train]\n" + b"k" * (2 << 20) + b" = 1\n": "more than the 1,048,576 allowed",
        b"[train]\n" + b"k" * 200_000 + b" = 1\n": "unknown parameter [train] kkkkk",
    }
    for index, (data, message) in enumerate(cases.items()):
        path = tmp_path / f"p{index}.toml"
        path.write_bytes(data)
        code, err = isolated_resolve(path)
        assert code == 1 and len(err.splitlines()) == 1 and message in err, err[:300]
        assert len(err) < 1200 and "Traceback" not in err  # a long key is cut, not echoed


def test_a_deep_set_value_is_one_line(tmp_path):
    with pytest.raises(UserError, match="too deeply"):
        apply_override({}, "train.epochs=" + "[" * 5000 + "]" * 5000)
