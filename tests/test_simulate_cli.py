"""``caloforge simulate`` and ``simulate_to_file``: files that read back, conditions, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.io import inspect_file, read_showers
from caloforge.simulate import GFlashConfig, simulate, simulate_to_file
from caloforge.spectra import parse_spectrum


def test_simulate_command_writes_a_file_info_reads(run, tmp_path) -> None:
    out = tmp_path / "showers.h5"
    code, stdout, stderr = run("simulate", "--geometry", "calochallenge-2", "--n", 40, "--energy",
                               "log-uniform:1000,1000000", "--seed", 3, "--out", out)
    assert code == 0, stderr
    assert "simulated 40 showers" in stdout and "showers/s" in stdout and str(out) in stdout
    assert "simulate: 40/40 showers (100 %)" in stderr  # the progress, as a line: stderr is no terminal
    showers = read_showers(out)
    assert len(showers) == 40 and showers.geometry.name == "calochallenge-2"
    assert showers.theta is None and showers.energy.min() >= 1000 and showers.energy.max() <= 1e6
    # Visible fraction of SiW (~0.025, see test_simulate_physics) survives the round trip.
    assert np.mean(showers.showers.sum(axis=1) / showers.energy) == pytest.approx(0.0253, rel=0.05)
    code, stdout, _ = run("info", out)
    assert code == 0 and "40 x 6480" in stdout and "calochallenge-2" in stdout


def test_simulate_command_angles_par04_float16(run, tmp_path) -> None:
    out = tmp_path / "tilted.h5"
    code, _, stderr = run("simulate", "-g", "par04-scipb", "--n", 6, "--energy", "discrete:2000,64000",
                          "--theta", "uniform:1.0,1.5", "--phi", "0.1", "--format", "par04", "--float16",
                          "--threshold-mev", 0.01, "--out", out)
    assert code == 0, stderr
    showers = read_showers(out)
    assert showers.showers.dtype == np.float16
    assert set(np.unique(showers.energy)) <= {2000.0, 64000.0}
    assert showers.theta is not None and np.all((showers.theta >= 1.0) & (showers.theta < 1.5))
    assert showers.phi is not None and np.allclose(showers.phi, 0.1)
    nonzero = showers.showers[showers.showers > 0]
    assert nonzero.size > 0 and nonzero.min() >= 0.01 * (1 - 1e-3)


def test_simulate_progress_in_a_log_is_a_few_plain_lines(run, tmp_path) -> None:
    # capsys's stderr is not a terminal, like a file or a CI log: no bar redraws, a few lines at most.
    code, _, stderr = run("simulate", "--geometry", "calochallenge-2", "--n", 2000, "--energy", "1000",
                          "--out", tmp_path / "log.h5")
    assert code == 0, stderr
    assert "\r" not in stderr and "|" not in stderr
    lines = stderr.splitlines()
    assert 1 <= len(lines) <= 12 and all(line.startswith("simulate: ") for line in lines)
    assert lines[-1].startswith("simulate: 2000/2000 showers (100 %), ") and "showers/s" in lines[-1]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--energy", "log-uniform:1000"), "--energy"),
        (("--energy", "uniform:-5,10"), "values > 0"),
        (("--energy", "1000", "--geometry", "calochallenge-9"), "unknown geometry preset"),
        (("--energy", "1000", "--theta", "3.14159", "--phi", "3.14159"), "does not enter the readout"),
        (("--energy", "1000", "--format", "root"), "unknown file format"),
    ],
)
def test_simulate_command_bad_input_is_one_error_line(run, tmp_path, args, fragment) -> None:
    out = tmp_path / "bad.h5"
    base = {"--geometry": "calochallenge-2"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    merged = [*(x for k, v in {**base, **given}.items() for x in (k, v))]
    code, _, err = run("simulate", "--n", 3, "--out", out, *merged)
    assert code == 2
    assert err.splitlines()[-1].startswith("error: ") and fragment in err and "Traceback" not in err
    assert not out.exists()  # atomic: nothing left behind


def test_simulate_to_file_is_seeded_and_matches_simulate(tmp_path) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path in (a, b):
        simulate_to_file(path, "calochallenge-2", 30, "log-uniform:1000,100000", "uniform:1.2,1.5", None,
                         seed=9, progress=False, chunk_size=7)
    first, second = read_showers(a), read_showers(b)
    assert np.array_equal(first.showers, second.showers) and np.array_equal(first.energy, second.energy)
    # Conditions are drawn from their own stream: independent of the chunk size.
    c = tmp_path / "c.h5"
    simulate_to_file(c, "calochallenge-2", 30, parse_spectrum("log-uniform:1000,100000"),
                     parse_spectrum("uniform:1.2,1.5"), None, seed=9, progress=False, chunk_size=30)
    assert np.allclose(read_showers(c).energy, first.energy)
    assert first.theta is not None and first.phi is None
    # Those showers are what ``simulate`` gives for the same conditions and shower stream.
    shower_rng = np.random.default_rng(np.random.SeedSequence(9).spawn(4)[3])
    direct = simulate(first.geometry, first.energy, first.theta, None, rng=shower_rng, chunk_size=7)
    assert np.allclose(direct.showers, first.showers, rtol=1e-6, atol=0.0)
    assert math.isclose(float(direct.energy[0]), float(first.energy[0]), rel_tol=1e-6)


def test_simulate_command_reads_a_yaml_config(run, tmp_path) -> None:
    good, bad = tmp_path / "gflash.yaml", tmp_path / "typo.yaml"
    good.write_text("radial_scale: 1.2\nmax_spots: 500\nthreshold_mev: 0.0\n")
    bad.write_text("radial_scael: 1.2\n")
    out = tmp_path / "wide.h5"
    code, _, err = run("simulate", "-g", "calochallenge-2", "--n", 4, "--energy", "20000", "--config", good,
                       "--seed", 1, "--out", out)
    assert code == 0, err
    written = read_showers(out)
    shower_rng = np.random.default_rng(np.random.SeedSequence(1).spawn(4)[3])
    config = GFlashConfig(radial_scale=1.2, max_spots=500, threshold_mev=0.0)
    expected = simulate(written.geometry, np.full(4, 2e4), config=config, rng=shower_rng)
    assert np.allclose(written.showers, expected.showers, rtol=1e-6, atol=0.0)
    code, _, err = run("simulate", "-g", "calochallenge-2", "--n", 4, "--energy", "20000", "--config", bad,
                       "--out", tmp_path / "never.h5")
    assert code == 2 and "radial_scael" in err and "radial_scale" in err


def test_simulate_command_another_medium_on_the_readout_with_a_detector_index(run, tmp_path) -> None:
    out = tmp_path / "odd.h5"
    code, stdout, stderr = run("simulate", "--geometry", "calochallenge-2", "--n", 20, "--energy", "10000",
                               "--material", "ODD", "--detector", 3, "--out", out)
    assert code == 0, stderr
    assert "medium ODD, detector 3" in stdout
    showers = read_showers(out)
    assert showers.geometry.name == "calochallenge-2" and showers.detector is not None
    assert set(showers.detector.tolist()) == {3}
    code, stdout, stderr = run("info", out)  # the file says which medium made it, the readout stays SiW's
    assert code == 0 and "medium       ODD (simulated in it; the readout is the geometry's)" in stdout, stderr
    code, _, stderr = run("convert", out, tmp_path / "odd_par04.h5", "--to", "par04")
    assert code == 0, stderr
    assert inspect_file(tmp_path / "odd_par04.h5").medium == "ODD"
    siw = simulate_to_file  # the same readout, another medium: another visible fraction
    siw(tmp_path / "siw.h5", "calochallenge-2", 20, "10000", seed=0, progress=False)
    assert inspect_file(tmp_path / "siw.h5").medium is None  # the geometry's own medium
    ratio = {name: np.mean(read_showers(tmp_path / f"{name}.h5").showers.sum(axis=1)) / 1e4
             for name in ("odd", "siw")}
    assert ratio["odd"] == pytest.approx(0.0275, rel=0.15) and ratio["siw"] == pytest.approx(0.0253, rel=0.1)
    code, _, stderr = run("simulate", "--geometry", "calochallenge-2", "--n", 2, "--energy", "10000",
                          "--material", "Lead", "--out", tmp_path / "x.h5")
    assert code == 2 and "unknown simulator material 'Lead'" in stderr
    assert not (tmp_path / "x.h5").exists()
