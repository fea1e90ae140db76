"""The one atomic writer: files and directories appear whole or not at all."""
import os
import socket
import stat
import subprocess
import sys

import pytest

from pipnet_tf.io import atomic_output, atomic_write_text, remove_stale_partials


def test_a_failed_block_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_directories_are_replaced_whole_or_refused(tmp_path):
    target = tmp_path / "dir"
    with atomic_output(target, directory=True) as tmp:
        (tmp / "x").write_text("1")
    with atomic_output(target, directory=True) as tmp:
        (tmp / "y").write_text("2")
    assert sorted(os.listdir(target)) == ["y"]
    with pytest.raises(FileExistsError):
        with atomic_output(target, directory=True, replace=False) as tmp:
            (tmp / "z").write_text("3")
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "config.json").st_mode) == 0o644


def test_stale_partials_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f".data.partial-{socket.gethostname()}-{proc.stdout.strip()}-ab12"
    alive = tmp_path / f".data.partial-{socket.gethostname()}-{os.getpid()}-cd34"
    other_host = tmp_path / ".data.partial-elsewhere-1-ef56"
    for path in (dead, alive, other_host):
        path.mkdir()
    remove_stale_partials(target)
    assert not dead.exists() and alive.exists() and other_host.exists()
