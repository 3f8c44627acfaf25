"""The info, convert and geometries commands, run through the console-script entry point."""


import h5py
import numpy as np
import pytest

from caloforge.data import ShowerSet
from caloforge.geometry import get_geometry
from caloforge.io import read_showers, write_showers


@pytest.fixture
def sample(tmp_path):
    """Two dataset-2 showers: 4 of 12960 voxels hit, E_dep/E_inc = 0.03 and 0.02."""
    g = get_geometry("calochallenge-2")
    showers = np.zeros((2, 6480), dtype=np.float32)
    showers[0, [0, 10, 100]] = [10.0, 15.0, 5.0]
    showers[1, 6479] = 80.0
    path = tmp_path / "sample.h5"
    write_showers(path, ShowerSet(showers, g, np.array([1000.0, 4000.0]), theta=np.array([1.0, 2.0])))
    return path


def assert_clean_error(code, err, *fragments):
    assert code == 2
    # Progress bars may come first; the error itself is the one last line.
    assert err.endswith("\n") and err.splitlines()[-1].startswith("error: ")
    assert err.count("error: ") == 1
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


def test_geometries_lists_presets(run):
    code, out, _ = run("geometries")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["name", "layers"]
    row = next(line for line in lines if line.startswith("par04-pbwo4"))
    assert row.split()[1:8] == ["48", "x", "50", "x", "40", "96000", "240"]
    assert "PbWO4" in row
    assert any(line.startswith("calochallenge-1-photons") and "per-layer" in line for line in lines)


def test_info_reports_hand_worked_numbers(run, sample):
    code, out, _ = run("info", sample, "--chunk-size", 1)
    assert code == 0
    fields = dict(line.split(maxsplit=1) for line in out.splitlines())
    assert fields["format"] == "calochallenge"
    assert fields["geometry"].startswith("calochallenge-2: 45 x 16 x 9")
    assert fields["showers"] == "2 x 6480, float32"
    assert fields["energy"] == "1000 .. 4000 MeV (1 .. 4 GeV)"
    assert fields["theta"] == "1 .. 2 rad"
    assert fields["phi"].startswith("not recorded")
    assert fields["sparsity"].startswith(f"{1 - 4 / 12960:.4f}")
    assert fields["E_dep/E_inc"].startswith("0.025 mean, 0.005 std")


def test_convert_round_trip_through_par04_float16(run, sample, tmp_path):
    par04, back = tmp_path / "p.h5", tmp_path / "back.h5"
    code, out, _ = run("convert", sample, par04, "--to", "par04", "--float16", "--chunk-size", 1)
    assert code == 0 and "par04, 2 showers, float16" in out
    with h5py.File(par04) as f:
        assert f["showers"].shape == (2, 9, 16, 45) and f["showers"].dtype == np.float16
        assert f["showers"][0, 0, 0, 0] == 10.0  # flat voxel 0: layer 0, alpha 0, radial 0
        assert f["incident_energy"].shape == (2,)
    assert run("convert", par04, back, "--to", "calochallenge")[0] == 0
    original, again = read_showers(sample), read_showers(back)
    np.testing.assert_array_equal(again.showers.astype(np.float32), original.showers)  # exact in float16
    np.testing.assert_array_equal(again.energy, original.energy)
    np.testing.assert_array_equal(again.theta, original.theta)


def test_info_and_convert_progress_in_a_log_is_one_plain_line(run, sample, tmp_path):
    # stderr is not a terminal here: quick work writes only its final progress line, no bar.
    for args, desc in ((("info", sample), "info"), (("convert", sample, tmp_path / "p.h5", "--to", "par04"),
                                                    "convert")):
        code, _, err = run(*args, "--chunk-size", 1)
        assert code == 0, err
        assert "\r" not in err
        lines = err.splitlines()
        assert 1 <= len(lines) <= 2 and lines[-1].startswith(f"{desc}: 2/2 showers (100 %), ")


def test_errors_are_one_line_naming_file_and_field(run, tmp_path):
    code, _, err = run("info", tmp_path / "missing.h5")
    assert_clean_error(code, err, "missing.h5", "does not exist")

    odd = tmp_path / "odd.h5"
    with h5py.File(odd, "w") as f:
        f["incident_energies"] = np.ones((3, 1))
        f["showers"] = np.ones((3, 1234), dtype=np.float32)
    code, _, err = run("info", odd)
    assert_clean_error(code, err, "odd.h5", "'showers'", "1234", "calochallenge-2 (6480)")

    text = tmp_path / "text.h5"
    text.write_text("hello")
    assert_clean_error(*run("convert", text, tmp_path / "o.h5", "--to", "par04")[::2], "not an HDF5 file")


def test_bad_names_suggest_the_closest(run, sample, tmp_path):
    code, _, err = run("convert", sample, tmp_path / "o.h5", "--to", "par4")
    assert_clean_error(code, err, "did you mean 'par04'")
    code, _, err = run("info", sample, "--geometry", "calochallenge2")
    assert_clean_error(code, err, "did you mean 'calochallenge-2'")


def test_failed_convert_leaves_no_output(run, tmp_path):
    bad = tmp_path / "bad.h5"
    showers = np.ones((6, 6480), dtype=np.float32)
    showers[4, 9] = np.nan  # found only in the third chunk of 2
    with h5py.File(bad, "w") as f:
        f["incident_energies"] = np.full((6, 1), 100.0)
        f["showers"] = showers
    code, _, err = run("convert", bad, tmp_path / "out.h5", "--to", "par04", "--chunk-size", 2)
    assert_clean_error(code, err, "bad.h5", "'showers'", "NaN", "rows 4:6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]
