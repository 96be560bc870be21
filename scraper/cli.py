"""Shared command-line plumbing: one clear line for user errors, never a traceback.

Every stage raises `UserError` for problems the user can fix (missing file, bad flag value,
unreachable server) and wraps its `main` with `run_main`, which prints
`<prog>: error: <message>` on stderr and returns a non-zero exit code.

Also the terminal conventions every command shares: `--version` on every parser, and one
progress-bar configuration (`progress_bar`): live bars on a terminal, periodic plain lines when
stderr is a log file or CI (no `\r` frames).
"""
import argparse
import os
import sys
import time

from scraper import __version__

# Seconds between progress lines when stderr is not a terminal (CXR_PROGRESS_INTERVAL overrides).
LOG_PROGRESS_INTERVAL = 30.0


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
    """argparse that reports a bad flag as one line (UserError, exit 2) and shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                          help="print the version and exit")

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)", exit_code=2)


def run_main(main, prog, argv=None):
    """Run `main(argv)` and turn user errors and Ctrl-C into one line plus an exit code."""
    try:
        return main(argv) or 0
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; outputs written so far are complete, re-run to continue",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def exit_with(main, prog):
    """Console-script entry point: `cli = lambda: exit_with(main, "cxr-x")`."""
    sys.exit(run_main(main, prog))


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
