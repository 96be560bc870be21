"""Shared command-line plumbing: one clear line for user errors, never a traceback.

Every stage raises `UserError` for problems the user can fix (missing file, bad flag value,
unreachable server) and wraps its `main` with `run_main`, which prints
`<prog>: error: <message>` on stderr and returns a non-zero exit code.
"""
import argparse
import sys
import time


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

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)", exit_code=2)


def int_range(low, high=None):
    """argparse `type=`: an integer in [low, high] (high None: no upper bound), checked at parse
    time so a bad value is one line ("argument --x: invalid value 5: must be in 32..1024")."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"invalid value {value}: must be {allowed}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(low, high=None):
    """argparse `type=`: a finite float in [low, high] (high None: no upper bound)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
        if not (value >= low and (high is None or value <= high)) or value != value \
                or value in (float("inf"), float("-inf")):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"invalid value {text}: must be {allowed}")
        return value
    parse.__name__ = "number"
    return parse


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
