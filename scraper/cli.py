"""Shared command-line plumbing: one clear line for user errors, never a traceback.

Every stage raises `UserError` for problems the user can fix (missing file, bad flag value,
unreachable server) and wraps its `main` with `run_main`, which prints
`<prog>: error: <message>` on stderr and returns a non-zero exit code.

Also the terminal conventions every command shares: `--version` on every parser, and one
progress-bar configuration (`progress_bar`): live bars on a terminal, periodic plain lines when
stderr is a log file or CI (no `\r` frames).
"""
import argparse
import errno
import itertools
import math
import os
import sys
import time

from scraper import __version__

# Seconds between progress lines when stderr is not a terminal (CXR_PROGRESS_INTERVAL overrides).
LOG_PROGRESS_INTERVAL = 30.0

# OS errors that no retry fixes and that the user must act on (free space, a writable folder,
# a shorter name): each becomes one line instead of a traceback, wherever it is raised.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system (or the file-size limit)",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "file name too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (failing disk or network share?)",
}


class UserError(Exception):
    """A problem with the user's input or environment; the message is shown as one line."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except None/False/"" ones and where the help text already names one."""

    def _get_help_string(self, action):
        if action.default in (None, False, "") or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (UserError, exit 2) and shows defaults.

    Flags must be typed in full: argparse's prefix matching is off (`allow_abbrev=False`), so
    `--ver` is an unknown option, not `--version`, and a flag added later can never change
    what an abbreviation in someone's script meant.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the version and exit")

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)", exit_code=2)


# The longest error line printed: a message quoting the user's input (a 50 MB TOML key, a
# pasted file) is cut in the middle instead of flooding the terminal or a log.
MAX_MESSAGE_CHARS = 1000


def shorten(text, limit=MAX_MESSAGE_CHARS):
    """`text` cut to about `limit` characters: head ... tail, saying how long it was."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 60, 20)
    return (f"{text[:keep * 2 // 3]} ...[{len(text) - keep:,} characters left out]... "
            f"{text[-(keep // 3):]}")


def run_main(main, prog, argv=None):
    """Run `main(argv)` and turn user errors and Ctrl-C into one line plus an exit code."""
    try:
        return main(argv) or 0
    except UserError as error:
        print(f"{prog}: error: {shorten(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; outputs written so far are complete, re-run to continue",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except OSError as error:
        line = describe_os_error(error)
        if line is None:
            raise  # a programming error: keep the traceback
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 1


def describe_os_error(error):
    """One line for an OSError a user can act on (disk full, read-only, name too long...);
    None for other OSErrors. The message names the path when the error carries one."""
    reason = ENVIRONMENT_ERRNOS.get(getattr(error, "errno", None))
    if reason is None:
        return None
    where = error.filename
    if where is not None:
        where = os.fsdecode(where)
        if len(where) > 120:
            where = where[:60] + "..." + where[-40:] + f" ({len(where)} characters)"
        return f"{reason}: {where}"
    return reason


def is_environment_error(error):
    """True for OSErrors that abort a whole run (full disk...) rather than fail one item."""
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS and \
        error.errno not in (errno.ENAMETOOLONG, errno.EACCES, errno.EPERM)


def exit_with(main, prog):
    """Console-script entry point: `cli = lambda: exit_with(main, "cxr-x")`."""
    sys.exit(run_main(main, prog))


def number(kind=int, minimum=None, maximum=None, strict_minimum=False, what=None):
    """An argparse `type=`: `kind` (int or float) within [minimum, maximum], finite.

    `strict_minimum` makes the lower bound exclusive (a float > 0). The error names the value
    and the allowed range, e.g. "invalid count '-5': must be between 0 and 4294967295".
    inf, -inf and nan are always refused, bounds or not ("1e400" is inf as a float).
    """
    noun = what or ("count" if kind is int else "number")
    if minimum is None and maximum is None:
        bound = "must be a finite number"
    elif strict_minimum and minimum == 0:
        bound = "must be positive" + (f" and at most {maximum:,}" if maximum else "")
    elif strict_minimum:
        bound = f"must be more than {minimum}" + (f" and at most {maximum:,}" if maximum else "")
    elif minimum is not None and maximum is not None:
        bound = f"must be between {minimum} and {maximum:,}"
    elif minimum is not None:
        bound = "must be 0 or more" if minimum == 0 else f"must be at least {minimum}"
    else:
        bound = f"must be at most {maximum:,}"

    def parse(text):
        shown = shorten(repr(text), 80)
        try:
            value = kind(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"invalid {noun} {shown}") from None
        if not math.isfinite(value):
            finite = "not a finite number" + (
                "" if minimum is None and maximum is None else f" ({bound})")
            raise argparse.ArgumentTypeError(f"invalid {noun} {shown}: {finite}")
        if (minimum is not None and (value < minimum or strict_minimum and value == minimum)
                or maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"invalid {noun} {shown}: {bound}")
        return value
    parse.__name__ = noun  # argparse names the type in some messages
    return parse


MAX_SEED = 2 ** 32 - 1  # numpy, TensorFlow and Python's random all accept 0 .. 2**32 - 1
positive_int = number(int, 1)
non_negative_int = number(int, 0)
positive_float = number(float, 0, strict_minimum=True)
non_negative_float = number(float, 0)
seed = number(int, 0, MAX_SEED, what="seed")


def bounded_int(maximum, minimum=1, what="count"):
    """An int in [minimum, maximum]: sizes that allocate memory (--batch-size, --image-size)."""
    return number(int, minimum, maximum, what=what)


def fraction(text):
    """A float in [0, 1) (test/validation fractions)."""
    value = number(float, 0, what="fraction")(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"invalid fraction {text!r}: must be in [0, 1)")
    return value


def log(message):
    """Diagnostics and summaries go to stderr so stdout stays clean for data."""
    print(message, file=sys.stderr, flush=True)


def fmt_count(n):
    """1234567 -> '1,234,567' (counts are printed with thousands separators)."""
    return f"{n:,}"


def elapsed_since(start):
    """Seconds since `start` (a time.monotonic() value) as '12.3 s' or '4 min 05 s'."""
    seconds = time.monotonic() - start
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s"


class _LineStream:
    """What tqdm writes, as whole lines: its `\r` redraws and cursor moves become one plain
    line per refresh, so a log file reads "features: 40%|... 400/1000" lines, not frames."""

    def __init__(self, stream):
        self.stream = stream
        self.last = None

    def write(self, text):
        text = text.replace("\r", "").replace("\x1b[A", "").strip()
        if text and text != self.last:  # closing re-draws the final state: print it once
            self.stream.write(text + "\n")
            self.last = text

    def flush(self):
        self.stream.flush()


def batches(items, size):
    """Lists of up to `size` consecutive items of any iterable (a list, a generator)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


def progress_bar(iterable=None, **kwargs):
    """tqdm on stderr, configured once for every stage: on a terminal a live bar; otherwise
    (log file, CI, pipe) a plain line at most every LOG_PROGRESS_INTERVAL seconds, plus the
    first and the last. Takes tqdm's arguments (total, desc, unit, disable, leave, ...)."""
    from tqdm import tqdm

    stream = kwargs.pop("file", None) or sys.stderr
    if not _is_terminal(stream):
        interval = float(os.environ.get("CXR_PROGRESS_INTERVAL", LOG_PROGRESS_INTERVAL))
        kwargs.update(file=_LineStream(stream), mininterval=interval, maxinterval=interval,
                      miniters=0, ncols=100, dynamic_ncols=False, ascii=True, leave=True)
    else:
        kwargs["file"] = stream
    return tqdm(iterable, **kwargs)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
