"""Temporaries a killed writer left behind go at the next write of the same target; nothing else does."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caloforge.io import atomic_output, read_showers
from caloforge.io.atomic import _host_tag

HOST = _host_tag()


def dead_pid() -> int:
    """A PID no process has: beyond the largest the kernel issues."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 12345
    except OSError:
        return 2**22 + 12345  # Linux's ceiling for pid_max


def reaped_pid() -> int:
    """The PID of a process that has run and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def make(path: Path, n_bytes: int = 1000) -> Path:
    path.write_bytes(b"\0" * n_bytes)
    return path


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, set[str]]:
    """Temporaries of target 'gen.h5' that are stale, ones that are not, and look-alikes of other targets.

    Returns the folder and the names of the stale ones."""
    dead, reaped, live = dead_pid(), reaped_pid(), os.getpid()
    make(tmp_path / f".gen.tmp-{dead}-{HOST}-0123abcd.h5", 2_500_000)      # writer gone
    make(tmp_path / f".gen.tmp-{reaped}-{HOST}-4567cdef.h5")               # writer gone
    old_dir = tmp_path / f".gen.old-{dead}-{HOST}-89abcdef.h5"              # a directory set aside
    old_dir.mkdir()
    make(old_dir / "part", 300)
    unowned = make(tmp_path / ".gen.tmp-00ff00ff.h5")                        # pid-less, untouched for 1 h
    os.utime(unowned, (time.time() - 3600, time.time() - 3600))
    stale = {p.name for p in tmp_path.iterdir()}
    survivors = [
        f".gen.tmp-{live}-{HOST}-deadbeef.h5",          # a write in progress in a live process
        ".gen.tmp-11aa22bb.h5",                         # pid-less but modified just now
        f".gen.tmp-{dead}-0badc0de-33cc44dd.h5",        # another host's: its PID means nothing here
        f".gen2.tmp-{dead}-{HOST}-0123abcd.h5",         # another target (similar stem)
        f".ge.tmp-{dead}-{HOST}-0123abcd.h5",
        f".gen.tmp-{dead}-{HOST}-0123abcd.hdf5",        # another target (other suffix)
        f".gen.tmp-{dead}-{HOST}-0123abcd.h5.bak",
        f"gen.tmp-{dead}-{HOST}-0123abcd.h5",           # not hidden: not a name atomic_output gives
        f".gen.tmp-{dead}-{HOST}-0123abcdef.h5",        # not 8 hex digits
        ".gen.tmp-notahex1.h5",
        ".gen.h5",
    ]
    for name in survivors:
        make(tmp_path / name)
    assert len(stale) == 4 and len(names(tmp_path)) == 4 + len(survivors)
    return tmp_path, stale


def test_atomic_output_removes_its_targets_stale_temporaries_only(folder, caplog):
    folder, stale = folder
    before = names(folder)
    logs = caplog.at_level(logging.WARNING, logger="caloforge.io.atomic")
    with logs, atomic_output(folder / "gen.h5") as tmp:
        assert tmp.name.startswith(f".gen.tmp-{os.getpid()}-{HOST}-")  # the writer is named in the name
        assert names(folder) == before - stale  # removed before the new write starts
        tmp.write_text("new")
    assert names(folder) == before - stale | {"gen.h5"}
    assert (folder / "gen.h5").read_text() == "new"
    logged = [r.getMessage() for r in caplog.records if r.name == "caloforge.io.atomic"]
    assert len(logged) == 4 and all(m.startswith("removed stale temporary ") for m in logged)
    assert any(f".gen.tmp-{dead_pid()}-{HOST}-0123abcd.h5 (2.5 MB), left by process {dead_pid()}, which no "
               "longer runs" in m for m in logged)
    assert any("00ff00ff.h5 (0.0 MB), left by a writer that recorded no PID, unchanged for 60 min" in m
               for m in logged)


def test_a_directory_target_cleans_up_the_same_way(tmp_path):
    dead = dead_pid()
    stale = tmp_path / f".report.tmp-{dead}-{HOST}-0123abcd"
    stale.mkdir()
    make(stale / "index.html")
    other = make(tmp_path / f".report.tmp-{dead}-{HOST}-0123abcd.html")  # target report.html's, not ours
    with atomic_output(tmp_path / "report") as tmp:
        tmp.mkdir()
        (tmp / "index.html").write_text("new")
    assert names(tmp_path) == {"report", other.name}


def test_simulate_command_removes_stale_temporaries_of_its_output(run, folder):
    folder, stale = folder
    before = names(folder)
    code, out, err = run("simulate", "--geometry", "calochallenge-2", "--n", 3, "--energy", "1000",
                         "--out", folder / "gen.h5")
    assert code == 0, err
    assert "simulated 3 showers" in out
    assert names(folder) == before - stale | {"gen.h5"}
    assert len(read_showers(folder / "gen.h5")) == 3


def test_temporary_of_a_killed_simulate_is_removed_by_the_next_one(run, tmp_path, caplog):
    out = tmp_path / "big.h5"
    command = ["from caloforge.cli import main; main()", "simulate", "--geometry", "calochallenge-2",
               "--n", "200000", "--energy", "100000", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", *command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    prefix = f".big.tmp-{process.pid}-{HOST}-"
    try:
        deadline = time.monotonic() + 60  # a limit, not a timing assertion: it should take ~1 s
        temporary = None
        while time.monotonic() < deadline and process.poll() is None:
            found = [p for p in tmp_path.iterdir() if p.name.startswith(prefix)]
            if found and found[0].stat().st_size > 2_000_000:  # showers are being written
                temporary = found[0]
                break
            time.sleep(0.05)
        assert temporary is not None, "simulate never started writing"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert temporary.exists() and not out.exists()  # what SIGKILL leaves: a hidden partial file

    with caplog.at_level(logging.WARNING, logger="caloforge.io.atomic"):
        code, _, err = run("simulate", "--geometry", "calochallenge-2", "--n", 5, "--energy", "1000",
                           "--out", out)
    assert code == 0, err
    assert names(tmp_path) == {"big.h5"}
    assert len(read_showers(out)) == 5
    assert any(str(temporary) in r.getMessage() and f"left by process {process.pid}" in r.getMessage()
               for r in caplog.records)
