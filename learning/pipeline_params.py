"""run_pipeline.sh's parameters: DATA_DIR/params.toml plus command-line overrides, checked
against each stage's own argparse parser before anything runs.

Reads:  <params>, a TOML file (stdlib tomllib) with one table per stage, named as in
        `run_pipeline.sh --from` (download, scrape, features, examples, train, visualize), each
        key one flag of that stage without its dashes (`learning-rate` or `learning_rate`);
        `--set STAGE.KEY=VALUE` overrides (VALUE read as TOML when it parses, else as text);
        after `--`, the stage-2 (cxr-scrape) options given to run_pipeline.sh.
Writes: to stdout, bash array assignments for run_pipeline.sh to eval, every word quoted:
        PARAMS_1=(...) ... PARAMS_6=(...)  (the extra flags of each stage) and SOURCE_ARGS=(...).

Values: true -> the flag alone, false -> nothing; a list -> the flag once per item (for flags
that may repeat, e.g. visualize.method) ; anything else -> `--flag value`. A table or key that
names no stage or no flag of its stage, a flag the pipeline sets itself, or a value the stage's
parser refuses, stops the pipeline at once with one line naming it.

Example params.toml:
    [train]
    epochs = 20
    [visualize]
    method = ["deeplift", "grad-cam"]

    python -m learning.pipeline_params data/params.toml --set visualize.baseline=blur \\
        -- --source folder --images "my xrays"   # prints PARAMS_1=() ... SOURCE_ARGS=(...)
"""
import argparse
import importlib
import os
import shlex
import sys
import tomllib

from scraper.cli import ArgumentParser, UserError, exit_with

PROG = "run_pipeline"
# (number, name, module with get_args_parser): the order of run_pipeline.sh
STAGES = ((1, "download", "scraper.download_model"), (2, "scrape", "scraper.scrape"),
          (3, "features", "learning.transfer_feature_extraction"),
          (4, "examples", "learning.learning_examples_preparing"),
          (5, "train", "learning.fully_connected_layers_training"),
          (6, "visualize", "learning.visualization"))
# Flags run_pipeline.sh owns for consistency across stages: (stage, dest) -> what to use instead.
RESERVED = {
    ("download", "from_file"): "run_pipeline.sh --weights-from FILE",
    ("features", "random_weights"): "run_pipeline.sh --random-weights",
    ("visualize", "random_weights"): "run_pipeline.sh --random-weights",
}


def stage_parser(name):
    """The stage's own argparse parser (imports no TensorFlow)."""
    module = dict((stage, module) for _, stage, module in STAGES)[name]
    return importlib.import_module(module).get_args_parser()


def _options(parser):
    """{"--flag": action} for every optional flag of a parser."""
    return {flag: action for action in parser._actions  # argparse lists no public API
            for flag in action.option_strings if flag.startswith("--")}


def flag_words(stage, key, value, parser):
    """One params entry -> the command-line words for the stage, e.g. ["--epochs", "20"]."""
    where = f"[{stage}] {key}"
    flag = "--" + key.replace("_", "-")
    action = _options(parser).get(flag)
    if action is None or flag in ("--help", "--version"):
        known = sorted(f[2:] for f in _options(parser) if f not in ("--help", "--version"))
        raise UserError(f"unknown parameter {where}: {parser.prog} has no {flag} (its flags: "
                        f"{', '.join(known)})")
    if (stage, action.dest) in RESERVED:
        raise UserError(f"parameter {where} is set by the pipeline itself; use "
                        f"{RESERVED[stage, action.dest]}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"parameter {where} = {value!r}: {flag} is a switch, give true or "
                            f"false")
        wanted = isinstance(action, argparse._StoreTrueAction)
        return [flag] if value == wanted else []
    if isinstance(value, bool) or isinstance(value, dict):
        raise UserError(f"parameter {where} = {value!r}: {flag} takes a value, e.g. "
                        f"{key} = {action.default!r}" if action.default is not None else
                        f"parameter {where} = {value!r}: {flag} takes a value")
    if isinstance(value, list):
        if not isinstance(action, argparse._AppendAction):
            raise UserError(f"parameter {where} is a list, but {flag} takes one value")
        return [word for item in value for word in (flag, _text(item, where))]
    return [flag, _text(value, where)]


def _text(value, where):
    if isinstance(value, (dict, list, bool)):
        raise UserError(f"parameter {where}: {value!r} is not a single value")
    return str(value)


def stage_words(stage, table, parser):
    """All entries of one stage's table -> words, then checked by the stage's parser itself."""
    words = []
    for key, value in table.items():
        words += flag_words(stage, key, value, parser)
    positionals = [a for a in parser._actions if not a.option_strings and a.nargs != "?"]
    try:
        parser.parse_args(["placeholder"] * len(positionals) + words)
    except UserError as error:
        raise UserError(f"parameters [{stage}]: {error}") from None
    return words


def read_params(path):
    """The TOML file as {stage: {key: value}}; {} when it does not exist."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "rb") as handle:
            params = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    names = [name for _, name, _ in STAGES]
    for stage, table in params.items():
        if stage not in names:
            raise UserError(f"{path}: unknown table [{stage}]; tables are the stages: "
                            f"{', '.join(names)}")
        if not isinstance(table, dict):
            raise UserError(f"{path}: '{stage}' must be a table ([{stage}] with key = value "
                            f"lines), not a single value")
    return params


def apply_override(params, text):
    """"visualize.method=grad-cam" -> params["visualize"]["method"] = "grad-cam" (TOML value
    when it parses: 20 -> int, true -> bool, ["a", "b"] -> list; otherwise the text)."""
    target, sep, raw = text.partition("=")
    stage, dot, key = target.strip().partition(".")
    names = [name for _, name, _ in STAGES]
    if not sep or not dot or not key:
        raise UserError(f"invalid --set {text!r}: expected STAGE.FLAG=VALUE, e.g. "
                        f"visualize.method=grad-cam")
    if stage not in names:
        raise UserError(f"invalid --set {text!r}: unknown stage {stage!r}; stages: "
                        f"{', '.join(names)}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    params.setdefault(stage, {})[key.strip()] = value
    return params


def check_source_args(words, params_words):
    """Stage 2's options from run_pipeline.sh's command line: an unknown flag is refused at
    once, naming it (and the stage it belongs to, if any)."""
    parser = stage_parser("scrape")
    try:
        _, unknown = parser.parse_known_args(["placeholder"] + params_words + words)
    except UserError as error:
        raise UserError(f"stage 2 options: {error}", exit_code=2) from None
    for word in unknown:
        if word.startswith("-"):
            flag = word.split("=")[0]
            owners = [name for _, name, _ in STAGES if name != "scrape"
                      and flag in _options(stage_parser(name))]
            hint = (f"; it is a flag of stage '{owners[-1]}': put it in DATA_DIR/params.toml "
                    f"[{owners[-1]}] or give --set {owners[-1]}.{flag[2:]}=VALUE"
                    if owners else "; see ./run_pipeline.sh --help")
            raise UserError(f"unknown option {flag}: neither a run_pipeline.sh option nor "
                            f"one of cxr-scrape's{hint}", exit_code=2)
        raise UserError(f"unexpected argument {word!r}: DATA_DIR was already given; quote a "
                        f"path with spaces", exit_code=2)


def resolve(params_path, overrides=(), source_args=()):
    """{stage number: extra words} and the checked stage-2 words."""
    params = read_params(params_path)
    for text in overrides:
        apply_override(params, text)
    extra = {}
    for number, name, _ in STAGES:
        extra[number] = stage_words(name, params.get(name, {}), stage_parser(name))
    check_source_args(list(source_args), extra[2])
    return extra, list(source_args)


def get_args_parser():
    parser = ArgumentParser(prog="python -m learning.pipeline_params",
                            description="Check run_pipeline.sh's parameters; print them as "
                                        "bash arrays.")
    parser.add_argument("params", help="the params.toml (need not exist)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="STAGE.FLAG=VALUE", help="override one parameter")
    return parser


def main(argv=None):
    """argv: [--set STAGE.FLAG=VALUE]... PARAMS [-- stage-2 options...]"""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = get_args_parser().parse_args(argv[:split])
    extra, source = resolve(args.params, args.overrides, argv[split + 1:])
    for number, words in extra.items():
        print(f"PARAMS_{number}=({shlex.join(words)})")
    print(f"SOURCE_ARGS=({shlex.join(source)})")
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
