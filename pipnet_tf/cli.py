"""Glue for the command-line tools of `trainers/` and `export/` (nothing else uses it).

The library raises exceptions; this module is where a command line turns the ones that
mean "your input is wrong" into one clear line on stderr and exit status 2 (a failed
check of the tool's own, such as an export's parity gate: status 1). The traceback is
logged too with `-v 1`.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

from absl import logging

from pipnet_tf.data.sources import DatasetUnavailableError
from pipnet_tf.runs import RunDirectoryError

USER_ERRORS: tuple[type[BaseException], ...] = (
    RunDirectoryError, DatasetUnavailableError, ValueError, FileNotFoundError,
    FileExistsError, NotADirectoryError, FloatingPointError)
EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1


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
                logging.error("%s: %s: %s", prog, type(error).__name__, error)
                failed = isinstance(error, tuple(failed_checks))
                sys.exit(EXIT_CHECK_FAILED if failed else EXIT_USER_ERROR)

        return run

    return wrap
