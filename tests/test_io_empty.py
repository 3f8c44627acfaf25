"""Shower files with no showers: described plainly by ``info``, refused wherever showers are needed."""

from __future__ import annotations

import numpy as np
import pytest

from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import get_geometry
from caloforge.io import ShowerWriter, inspect_file, iter_showers, read_showers, summarize_file, write_showers


def empty_file(path, file_format="calochallenge", conditions=("energy",)):
    with ShowerWriter(path, "calochallenge-2", file_format, conditions=conditions):
        pass
    return path


def two_showers(path):
    g = get_geometry("calochallenge-2")
    showers = np.zeros((2, g.n_voxels), dtype=np.float32)
    showers[:, 0] = 5.0
    write_showers(path, ShowerSet(showers, g, np.array([1000.0, 2000.0])))
    return path


def fields(stdout):
    return dict(line.split(maxsplit=1) for line in stdout.splitlines())


def test_info_says_the_file_holds_no_showers(run, tmp_path):
    path = empty_file(tmp_path / "empty.h5", conditions=("energy", "theta"))
    code, out, err = run("info", path)
    assert code == 0, err  # a description, not an error
    assert "nan" not in out.lower()
    described = fields(out)
    assert described["showers"] == "0 (the file holds no showers)"
    assert described["format"] == "calochallenge"
    assert described["geometry"].startswith("calochallenge-2: 45 x 16 x 9")
    for statistic in ("energy", "theta", "sparsity", "E_dep/E_inc"):
        assert statistic not in described


def test_summary_of_an_empty_file_has_no_numbers_rather_than_nan(tmp_path):
    summary = summarize_file(empty_file(tmp_path / "empty.h5"))
    assert summary.empty and summary.info.n_showers == 0
    assert summary.ranges == {}
    assert summary.sparsity is None and summary.deposit_fraction_mean is None
    assert summary.deposit_fraction_std is None
    assert not summarize_file(two_showers(tmp_path / "two.h5")).empty


@pytest.mark.parametrize("file_format", ["calochallenge", "par04"])
def test_read_showers_refuses_an_empty_file_naming_file_field_and_expectation(tmp_path, file_format):
    path = empty_file(tmp_path / f"empty-{file_format}.h5", file_format)
    with pytest.raises(InputError) as caught:
        read_showers(path)
    error = caught.value
    assert error.path == str(path) and error.field == "showers"
    assert error.expected == "at least one shower"
    assert str(error).startswith(f"{path}: field 'showers': holds no showers")
    # Describing and streaming an empty file stay possible.
    assert inspect_file(path).n_showers == 0
    assert list(iter_showers(path)) == []


def test_evaluate_refuses_an_empty_file_before_reading_the_other(run, tmp_path):
    empty, full = empty_file(tmp_path / "gen.h5"), two_showers(tmp_path / "ref.h5")
    for generated, reference, role in ((empty, full, "generated"), (full, empty, "reference")):
        out = tmp_path / f"report-{role}"
        code, _, err = run("evaluate", generated, reference, "--out", out, "--classifier", "none",
                           "--no-plots")
        assert code == 2
        assert err.splitlines()[-1] == (f"error: {empty}: field 'showers': holds no showers (the {role} "
                                        "file); expected at least one shower to evaluate")
        assert "Traceback" not in err and "features" not in err  # refused before any reading
        assert not out.exists()


def test_simulate_zero_showers_writes_a_file_info_calls_empty(run, tmp_path):
    # --n 0 is allowed: it writes a well-formed file (a placeholder, or the output of a filter that kept
    # nothing), which info describes as empty and which read_showers, train and evaluate refuse.
    path = tmp_path / "none.h5"
    code, out, err = run("simulate", "--geometry", "calochallenge-2", "--n", 0, "--energy", "50000",
                         "--out", path)
    assert code == 0, err
    assert "simulated 0 showers" in out
    assert path.exists()
    code, out, err = run("info", path)
    assert code == 0, err
    assert fields(out)["showers"] == "0 (the file holds no showers)"
    with pytest.raises(InputError, match="at least one shower"):
        read_showers(path)
