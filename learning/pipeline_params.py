"""run_pipeline.sh's parameters: DATA_DIR/params.toml plus command-line overrides, and every
stage's complete command line, checked by the stages' own argparse parsers before anything runs.

Two jobs, each one call from run_pipeline.sh:

1. Resolve (`--out FILE`): read <params>, a TOML file (stdlib tomllib) with one table per stage,
   named as in `run_pipeline.sh --from` (download, scrape, features, examples, train,
   visualize), each key one flag of that stage without its dashes (`learning-rate` or
   `learning_rate`); apply `--set STAGE.KEY=VALUE` overrides (VALUE read as TOML when it parses,
   else as text); check the stage-2 (cxr-scrape) options given after `--`. Writes FILE as data,
   never as code: NUL-separated words, `cxr-pipeline-words/1`, then seven groups (the extra
   flags of stages 1-6, then the stage-2 options), each a count followed by that many words.
   run_pipeline.sh reads it with `mapfile -d ''`; nothing printed by anyone is ever run.
2. Check (`--check FILE|-`): read the commands run_pipeline.sh is about to run (NUL-separated:
   stage number, word count, then the words: command name, positionals and every flag, the
   pipeline's own and the parameters) and parse each with that stage's own parser (or its
   module's `check_argv(argv)` when it has one, e.g. cxr-scrape's flag combinations), so every
   argparse type fires on the real values before stage 1 starts.

Values: true -> the flag alone, false -> nothing; a list -> the flag once per item (for flags
that may repeat, e.g. visualize.method) ; anything else -> `--flag value`. A table or key that
names no stage or no flag of its stage, a flag the pipeline sets itself, or a value the stage's
parser refuses, stops the pipeline at once with one line naming it. params.toml is read only if
it is a regular file of at most MAX_PARAMS_BYTES (a FIFO, a device or a dangling link is one
line, never a hang or a silent skip).

Example params.toml:
    [train]
    epochs = 20
    [visualize]
    method = ["deeplift", "grad-cam"]

    python -m learning.pipeline_params data/params.toml --set visualize.baseline=blur \\
        -- --source folder --images "my xrays"   # prints each stage's extra flags
"""
import argparse
import importlib
import os
import shlex
import sys
import tomllib

from scraper.cli import ArgumentParser, UserError, exit_with
from scraper.fileio import read_regular

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
MAX_PARAMS_BYTES = 1 << 20   # a params.toml is a few lines; a link to /dev/zero is refused
MAX_CHECK_BYTES = 16 << 20   # the commands to check (stage-2 paths included)
WORDS_MAGIC = "cxr-pipeline-words/1"


def stage_module(name_or_number):
    """The stage's module (imports no TensorFlow), by name ("train") or number (5)."""
    for number, name, module in STAGES:
        if name_or_number in (number, name):
            return importlib.import_module(module)
    raise UserError(f"unknown stage {name_or_number!r}")


def stage_parser(name):
    """The stage's own argparse parser (imports no TensorFlow)."""
    return stage_module(name).get_args_parser()


def _options(parser):
    """{"--flag": action} for every optional flag of a parser."""
    return {flag: action for action in parser._actions  # argparse lists no public API
            for flag in action.option_strings if flag.startswith("--")}


def _informational(parser):
    """Option strings that print and exit (-h, --help, --version): never run while checking."""
    return {flag for action in parser._actions
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction))
            for flag in action.option_strings}


def parse_words(parser, argv, known=False):
    """parser.parse_args(argv) (parse_known_args when `known`) for checking only: a help or
    version flag among the words is refused (it would print and exit 0, and the pipeline would
    go on), and argparse's own exits become UserError."""
    shown = _informational(parser) & set(argv)
    if shown:
        flag = sorted(shown)[0]
        raise UserError(f"{flag} is not a pipeline option here: `{parser.prog} {flag}` shows "
                        f"that stage's, `./run_pipeline.sh {flag}` the pipeline's", exit_code=2)
    try:
        return parser.parse_known_args(argv) if known else parser.parse_args(argv)
    except SystemExit as stop:  # a parser not built on scraper.cli.ArgumentParser
        raise UserError(f"{parser.prog} refused its arguments (exit {stop.code})",
                        exit_code=2) from None


def flag_words(stage, key, value, parser):
    """One params entry -> the command-line words for the stage, e.g. ["--epochs", "20"]."""
    where = f"[{stage}] {key}"
    flag = "--" + key.replace("_", "-")
    action = _options(parser).get(flag)
    if action is None or flag in _informational(parser):
        known = sorted(f[2:] for f in _options(parser) if f not in _informational(parser))
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
        parse_words(parser, ["placeholder"] * len(positionals) + words)
    except UserError as error:
        raise UserError(f"parameters [{stage}]: {error}", error.exit_code) from None
    return words


def _toml(text, where):
    """tomllib.loads with every failure as one line (a 100,000-deep array included)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{where} is not valid TOML: {error}") from None
    except RecursionError:
        raise UserError(f"{where} nests arrays or tables too deeply to be parameters") from None


def read_params(path):
    """The TOML file as {stage: {key: value}}; {} when nothing is at `path`."""
    path = os.fspath(path)
    if not os.path.lexists(path):
        return {}
    if not os.path.exists(path):
        raise UserError(f"{path} is a symbolic link to {os.readlink(path)!r}, which does not "
                        f"exist: fix or remove the link")
    try:
        data = read_regular(path, MAX_PARAMS_BYTES, "parameters file")
    except IsADirectoryError:
        raise UserError(f"parameters file is a folder: {path}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                        f"{error.start:,}); save it as UTF-8") from None
    params = _toml(text, path)
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
        value = _toml(f"v = {raw}", f"--set {target}")["v"]
    except UserError as error:
        if "too deeply" in str(error):
            raise
        value = raw
    params.setdefault(stage, {})[key.strip()] = value
    return params


def check_source_args(words, params_words):
    """Stage 2's options from run_pipeline.sh's command line: an unknown flag is refused at
    once, naming it (and the stage it belongs to, if any)."""
    parser = stage_parser("scrape")
    try:
        _, unknown = parse_words(parser, ["placeholder"] + params_words + words, known=True)
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


# ---- the words file (resolve) and the full command lines (check) ----------------------------

def words_file_bytes(extra, source):
    """The resolved words as run_pipeline.sh reads them: NUL-separated, counted groups."""
    fields = [WORDS_MAGIC]
    for words in [extra[number] for number, _, _ in STAGES] + [list(source)]:
        fields += [str(len(words))] + list(words)
    for field in fields:
        if "\0" in field:
            raise UserError(f"a parameter holds a NUL character: {field[:80]!r}")
    return b"".join(os.fsencode(field) + b"\0" for field in fields)


def parse_commands(data):
    """NUL-separated [stage number, count, words...]... -> [(number, words)]."""
    fields = data.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    commands, i = [], 0
    while i < len(fields):
        try:
            number, count = int(fields[i]), int(fields[i + 1])
        except (IndexError, ValueError):
            raise UserError("malformed command list (expected: stage number, word count, "
                            "words)") from None
        words = [os.fsdecode(word) for word in fields[i + 2:i + 2 + count]]
        if len(words) != count or not words:
            raise UserError(f"malformed command list: stage {number} lacks its words")
        commands.append((number, words))
        i += 2 + count
    return commands


def check_command(number, words):
    """Parse one stage's full command line (words[0] is the command) as the stage will."""
    module = stage_module(number)
    name = dict((n, stage) for n, stage, _ in STAGES)[number]
    try:
        parse_words(module.get_args_parser(), words[1:])  # every argparse type fires
        if hasattr(module, "check_argv"):  # flag combinations the stage checks after parsing
            module.check_argv(words[1:])
    except UserError as error:
        raise UserError(f"stage {number} ({name}) would fail: {error}; nothing was run",
                        exit_code=2) from None


def get_args_parser():
    parser = ArgumentParser(prog="python -m learning.pipeline_params",
                            description="Check run_pipeline.sh's parameters and every stage's "
                                        "command line before anything runs.")
    parser.add_argument("params", nargs="?", default=None,
                        help="the params.toml (need not exist); not with --check")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="STAGE.FLAG=VALUE", help="override one parameter")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the resolved words here for run_pipeline.sh (NUL-separated "
                             "data); default: print them for a person to read")
    parser.add_argument("--check", default=None, metavar="FILE",
                        help="check the NUL-separated stage commands in FILE ('-': stdin) with "
                             "the stages' own parsers")
    return parser


def main(argv=None):
    """argv: [--set STAGE.FLAG=VALUE]... PARAMS [--out FILE] [-- stage-2 options...]
    or: --check FILE"""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = get_args_parser().parse_args(argv[:split])
    if args.check is not None:
        data = (sys.stdin.buffer.read(MAX_CHECK_BYTES + 1) if args.check == "-" else
                read_regular(args.check, MAX_CHECK_BYTES, "command list"))
        if len(data) > MAX_CHECK_BYTES:
            raise UserError(f"command list is longer than {MAX_CHECK_BYTES:,} bytes")
        for number, words in parse_commands(data):
            check_command(number, words)
        return 0
    if args.params is None:
        raise UserError("give the params.toml path (or --check FILE)", exit_code=2)
    extra, source = resolve(args.params, args.overrides, argv[split + 1:])
    if args.out is not None:
        with open(args.out, "wb") as handle:  # run_pipeline.sh's own mktemp file
            handle.write(words_file_bytes(extra, source))
        return 0
    for (number, name, _), words in zip(STAGES, extra.values()):
        print(f"stage {number} ({name}): {shlex.join(words)}")
    print(f"stage 2 options: {shlex.join(source)}")
    return 0


def cli():
    exit_with(main, PROG)


if __name__ == "__main__":
    cli()
