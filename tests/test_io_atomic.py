"""Atomic outputs: a finished file or nothing, never a half-written one."""

import numpy as np
import pytest

from caloforge.data import ShowerSet
from caloforge.geometry import get_geometry
from caloforge.io import ShowerWriter, atomic_output, read_showers, write_showers


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_success_renames_into_place(tmp_path):
    target = tmp_path / "sub" / "report.html"  # missing parent directories are created
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".html" and tmp != target
        tmp.write_text("done")
        assert not target.exists()  # nothing at the target until the block ends
    assert target.read_text() == "done"
    assert siblings(target) == ["report.html"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert siblings(target) == ["model.onnx"]


def test_keyboard_interrupt_is_cleaned_up_too(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        tmp.write_bytes(b"\0" * 10)
        raise KeyboardInterrupt
    assert siblings(target) == []


def test_directory_output_replaces_old_directory(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "stale.png").write_text("old")
    with atomic_output(target) as tmp:
        tmp.mkdir()
        (tmp / "index.html").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["index.html"]
    assert siblings(target) == ["report"]


def test_writing_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_output(tmp_path / "y.txt"):
        pass
    assert siblings(tmp_path / "y.txt") == []


def showers(n):
    g = get_geometry("calochallenge-2")
    return ShowerSet(np.ones((n, g.n_voxels), dtype=np.float32), g, np.full(n, 1e4))


def test_exception_inside_shower_writer_leaves_no_file(tmp_path):
    target = tmp_path / "gen.h5"
    with pytest.raises(RuntimeError, match="crashed"), ShowerWriter(target, "calochallenge-2") as writer:
        writer.append(showers(3))
        assert len(siblings(target)) == 1 and not target.exists()  # only the temporary file
        raise RuntimeError("sampler crashed")
    assert siblings(target) == []


def test_failed_rewrite_keeps_previous_file(tmp_path):
    target = tmp_path / "gen.h5"
    write_showers(target, showers(2))
    with pytest.raises(RuntimeError), ShowerWriter(target, "calochallenge-2") as writer:
        writer.append(showers(5))
        raise RuntimeError
    assert len(read_showers(target)) == 2
    assert siblings(target) == ["gen.h5"]
