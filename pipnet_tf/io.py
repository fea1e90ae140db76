"""Writing files and directories so that nothing half-written is ever seen.

`atomic_output(final)` yields a hidden temporary path next to `final` (a file or a
directory the caller fills) and renames it into place only when the block finishes
without an error; on an error it is removed. A rename within one directory is atomic on
POSIX, so readers see either the old `final` or the complete new one. Temporary names
carry the host and process id (`.NAME.partial-HOST-PID-RANDOM`), so
`remove_stale_partials` can clean up after writers that were killed. Files get the usual
umask-respecting mode (0644 with the common umask 022), not `mkstemp`'s 0600.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import socket
from collections.abc import Iterator

from absl import logging

PARTIAL = ".partial-"


def _partial_prefix(final: pathlib.Path) -> str:
    return f".{final.name}{PARTIAL}"


def partial_path(final: str | os.PathLike) -> pathlib.Path:
    """A new temporary sibling name of `final` (`.NAME.partial-HOST-PID-RANDOM`), which
    `remove_stale_partials(final)` removes once this process is gone."""
    final = pathlib.Path(final)
    return final.parent / (f"{_partial_prefix(final)}{socket.gethostname()}-{os.getpid()}-"
                           f"{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike, directory: bool = False,
                  replace: bool = True) -> Iterator[pathlib.Path]:
    """Yields a temporary path that becomes `final` when the block succeeds.

    Args:
        final: the path to (re)place.
        directory: the temporary path is created as an empty directory (else the caller
            creates the file).
        replace: an existing `final` is replaced (a directory is removed first); with
            False, `FileExistsError` is raised before anything is written.
    """
    final = pathlib.Path(final)
    if not replace and final.exists():
        raise FileExistsError(f"{str(final)!r} already exists.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and final.is_dir():
            if not replace:
                raise FileExistsError(f"{str(final)!r} already exists.")
            shutil.rmtree(final)
        elif not replace and final.exists():
            raise FileExistsError(f"{str(final)!r} already exists.")
        os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def remove_stale_partials(final: str | os.PathLike) -> None:
    """Deletes temporary siblings of `final` left by dead writers on this host; those of
    running processes and of other hosts are left alone."""
    final = pathlib.Path(final)
    prefix = _partial_prefix(final)
    if not final.parent.is_dir():
        return
    for path in final.parent.glob(prefix + "*"):
        owner = path.name[len(prefix):].rsplit("-", 2)  # host, pid, random suffix
        if len(owner) != 3 or owner[0] != socket.gethostname() or not owner[1].isdigit():
            continue
        try:
            os.kill(int(owner[1]), 0)  # raises ProcessLookupError when the writer is gone
        except ProcessLookupError:
            logging.info("Removing %s, left by a killed writer", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically (flushed to disk before the rename)."""
    with atomic_output(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload) -> None:
    """Atomically writes `payload` as indented JSON."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
