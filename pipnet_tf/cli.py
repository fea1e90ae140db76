"""Glue for the command-line tools of `trainers/`, `export/` and `bench/` (nothing else
uses it).

The library raises exceptions; this module is where a command line turns the ones that
mean "your input is wrong" into one clear line on stderr and exit status 2 (a failed
check of the tool's own, such as an export's parity gate: status 1). The traceback is
logged too with `-v 1`.

Exit statuses of every CLI: 0 success and `--help`; 1 a failed check of the tool's own
(export verification, TFLite parity gate); 2 a user error (bad flag, missing or damaged
input). absl's own `--help` and flag-parsing errors exit 1; `run_app` maps them to 0 and
2. argparse CLIs already exit 0 and 2; `parse_argparse` gives them absl's `-v`.
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from absl import app, flags, logging

from pipnet_tf.data.sources import DatasetUnavailableError
from pipnet_tf.runs import RunDirectoryError

USER_ERRORS: tuple[type[BaseException], ...] = (
    RunDirectoryError, DatasetUnavailableError, ValueError, FileNotFoundError,
    FileExistsError, NotADirectoryError, FloatingPointError)
EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2


def exit_on_user_error(prog: str, failed_checks: tuple[type[BaseException], ...] = ()):
    """Decorates a CLI `main`: user errors (`USER_ERRORS`) exit with status 2, the tool's
    own failed checks (`failed_checks`, e.g. an export parity gate) with status 1, each
    with a one-line message naming `prog` and no traceback (with `-v 1`: the traceback
    too)."""

    def wrap(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except USER_ERRORS + tuple(failed_checks) as error:
                logging.vlog(1, "Traceback:", exc_info=True)
                message = " ".join(str(error).split())  # one line, whatever the message
                logging.error("%s: %s: %s", prog, type(error).__name__, message)
                failed = isinstance(error, tuple(failed_checks))
                sys.exit(EXIT_CHECK_FAILED if failed else EXIT_USER_ERROR)

        return run

    return wrap


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with this project's exit statuses: `--help`, `--helpshort`,
    `--helpfull` and `--helpxml` print their usage and exit 0 (absl: 1); an unknown or
    malformed flag prints absl's message and exits 2 (absl: 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n"
                         "Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(EXIT_USER_ERROR)
    except SystemExit as done:  # only the help flags exit while flags are parsed
        sys.exit(EXIT_OK if done.code in (None, 1) else done.code)


def run_app(main: Callable, **kwargs) -> None:
    """`absl.app.run(main)` with `parse_absl_flags` (`--help` exits 0, bad flags 2)."""
    app.run(main, flags_parser=parse_absl_flags, **kwargs)


def add_verbosity_argument(parser: argparse.ArgumentParser) -> None:
    """absl's `-v`/`--verbosity` for an argparse CLI."""
    parser.add_argument("-v", "--verbosity", type=int, default=0,
                        help="logging verbosity (absl's -v): 1 also logs the traceback of an "
                        "error")


def parse_argparse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`flags_parser` for `app.run` of an argparse CLI: parses `argv[1:]` with `parser`
    (which has `add_verbosity_argument`), leaves absl's flags at their defaults and logs
    at INFO (with `-v N`: vlog level N too)."""
    args = parser.parse_args(argv[1:])
    flags.FLAGS(argv[:1])
    logging.set_verbosity(max(logging.INFO, args.verbosity))
    return args
