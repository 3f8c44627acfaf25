"""Fitting GFlash to full simulation: the tuning knobs, the objective, ``fit_gflash``, ``caloforge
fit-gflash`` and ``caloforge simulate --gflash-params``.

The "full simulation" here is the simulator itself with known non-default parameters (tiny files made in
``tmp_path``), so a fit has a known answer to move towards.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from caloforge.config import load_yaml
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import get_geometry
from caloforge.io import read_showers, write_showers
from caloforge.simulate import GFlashConfig, GFlashTuning, get_material, simulate, simulate_to_file
from caloforge.simulate.fit import GFlashObjective, fit_gflash
from caloforge.simulate.gflash import sample_shower_parameters

GEOMETRY = get_geometry("calochallenge-2")
SIW = get_material("SiW")
NO_THRESHOLD = GFlashConfig(threshold_mev=0.0)


def _energies(n: int, seed: int = 0) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).uniform(np.log(2e3), np.log(2e4), n))


def _ratio(showers: ShowerSet) -> np.ndarray:
    return showers.showers.sum(axis=1, dtype=np.float64) / showers.energy


# ---- the tuning knobs -------------------------------------------------------------------------------------
def test_tuning_with_the_media_values_changes_nothing() -> None:
    energy = _energies(40)
    default = simulate(GEOMETRY, energy, seed=3).showers
    explicit = GFlashConfig(tuning=GFlashTuning(sampling_fraction=SIW.sampling_fraction,
                                                sampling_resolution=SIW.sampling_resolution))
    assert np.array_equal(simulate(GEOMETRY, energy, seed=3, config=explicit).showers, default)


def test_sampling_fraction_scales_every_deposit() -> None:
    # Same seed, same spots: without a threshold the visible energy is exactly proportional to it.
    energy = _energies(30)
    base = simulate(GEOMETRY, energy, seed=1, config=NO_THRESHOLD)
    tuned = simulate(GEOMETRY, energy, seed=1, config=dataclasses.replace(
        NO_THRESHOLD, tuning=GFlashTuning(sampling_fraction=0.04)))
    assert np.allclose(_ratio(tuned), _ratio(base) * 0.04 / SIW.sampling_fraction, rtol=1e-5)


def test_sampling_resolution_sets_the_spread_of_the_visible_energy() -> None:
    # 10 GeV, a = 0.3: sigma/E = 0.3 / sqrt(10) = 0.095, far above the leakage fluctuations (~0.5 %).
    config = dataclasses.replace(NO_THRESHOLD, tuning=GFlashTuning(sampling_resolution=0.3))
    ratio = _ratio(simulate(GEOMETRY, np.full(600, 1e4), seed=2, config=config))
    assert ratio.std() / ratio.mean() == pytest.approx(0.3 / np.sqrt(10), rel=0.12)
    default = _ratio(simulate(GEOMETRY, np.full(600, 1e4), seed=2, config=NO_THRESHOLD))
    assert default.std() / default.mean() == pytest.approx(SIW.sampling_resolution / np.sqrt(10), rel=0.15)


def test_longitudinal_tuning_sets_the_log_normal_moments() -> None:
    # SiW at 10 GeV, by hand (G&P sampling calorimeters): <T> = ln y - 0.812 - 0.55 / F_S - 0.69 (1 - ê),
    # sigma(ln T) = 1 / (-2.5 + 1.25 ln y), sigma(ln alpha) = 1 / (-0.82 + 0.79 ln y),
    # rho = 0.784 - 0.023 ln y.
    ln_y = np.log(1e4 / SIW.ec_mev)
    t_centre = ln_y - 0.812 - 0.55 / SIW.fs - 0.69 * (1 - SIW.ehat)
    sig_t, sig_a = 1 / (-2.5 + 1.25 * ln_y), 1 / (-0.82 + 0.79 * ln_y)
    rho = 0.784 - 0.023 * ln_y
    tuning = GFlashTuning(depth_offset=1.0, depth_spread=2.0, alpha_spread=0.5, correlation_offset=-0.3)
    par = sample_shower_parameters(SIW, np.full(40_000, 1e4), np.random.default_rng(0), tuning)
    ln_t, ln_a = np.log(par.t_max), np.log(par.alpha)
    assert np.exp(np.median(ln_t)) == pytest.approx(t_centre + 1.0, rel=0.01)
    assert ln_t.std() == pytest.approx(2 * sig_t, rel=0.02)
    assert ln_a.std() == pytest.approx(0.5 * sig_a, rel=0.02)
    assert np.corrcoef(ln_t, ln_a)[0, 1] == pytest.approx(rho - 0.3, abs=0.01)


def _depth_and_radius(config: GFlashConfig, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Energy-weighted depth (mm) and radius (mm) of 200 showers at 20 GeV."""
    showers = simulate(GEOMETRY, np.full(200, 2e4), seed=seed, config=config).showers.astype(np.float64)
    z = GEOMETRY.voxel_centres["z"]
    r = GEOMETRY.voxel_centres["r"]
    total = showers.sum(axis=1)
    return showers @ z / total, showers @ r / total


def test_depth_offset_and_spread_move_the_longitudinal_profile() -> None:
    depth, _ = _depth_and_radius(NO_THRESHOLD)
    deeper, _ = _depth_and_radius(dataclasses.replace(NO_THRESHOLD, tuning=GFlashTuning(depth_offset=2.0)))
    # T + 2 X0 at fixed alpha: the centre of gravity alpha / beta = T alpha / (alpha - 1) moves by
    # 2 alpha / (alpha - 1) X0, between 2 and 3 X0 for alpha ~ 3-6.
    shift = (deeper.mean() - depth.mean()) / SIW.x0_mm
    assert 1.8 < shift < 3.2
    wider, _ = _depth_and_radius(dataclasses.replace(NO_THRESHOLD, tuning=GFlashTuning(depth_spread=2.0)))
    assert wider.std() > 1.4 * depth.std()


def test_radial_scales_widen_the_showers() -> None:
    _, radius = _depth_and_radius(NO_THRESHOLD)
    for field in ("core_radius_scale", "tail_radius_scale"):
        _, wider = _depth_and_radius(dataclasses.replace(NO_THRESHOLD, tuning=GFlashTuning(**{field: 1.5})))
        assert wider.mean() > 1.1 * radius.mean(), field
    _, cored = _depth_and_radius(dataclasses.replace(NO_THRESHOLD,
                                                     tuning=GFlashTuning(core_fraction_scale=0.5)))
    assert cored.mean() > 1.1 * radius.mean()  # less in the core, more in the wider tail


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"sampling_fraction": 0.0}, "tuning.sampling_fraction"),
        ({"sampling_fraction": 1.5}, "a fraction in (0, 1]"),
        ({"sampling_resolution": -0.1}, "tuning.sampling_resolution"),
        ({"depth_slope": 0.0}, "tuning.depth_slope"),
        ({"tail_radius_scale": -1.0}, "tuning.tail_radius_scale"),
        ({"depth_offset": float("nan")}, "a finite number"),
    ],
)
def test_bad_tuning_is_an_input_error(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(InputError, match=None) as error:
        GFlashTuning(**kwargs)
    assert fragment in str(error.value)


def test_tuning_loads_from_yaml_and_misspelled_keys_are_named(tmp_path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("max_spots: 900\ntuning:\n  sampling_fraction: 0.032\n  depth_offset: -0.5\n")
    bad.write_text("tuning:\n  depth_ofset: 1\n")
    config = load_yaml(GFlashConfig, good)
    assert config.max_spots == 900
    assert config.tuning == GFlashTuning(sampling_fraction=0.032, depth_offset=-0.5)
    with pytest.raises(InputError) as error:
        load_yaml(GFlashConfig, bad)
    assert "tuning.depth_ofset" in str(error.value) and "depth_offset" in str(error.value)


# ---- the objective and the fit ------------------------------------------------------------------
TRUTH = GFlashConfig(spot_multiplier=1.5, tuning=GFlashTuning(
    sampling_fraction=0.032, core_radius_scale=1.4, tail_radius_scale=1.2, depth_offset=0.5))


def _reference(n: int = 300, seed: int = 11, truth: GFlashConfig = TRUTH) -> ShowerSet:
    showers = simulate(GEOMETRY, _energies(n, seed), seed=seed, config=truth)
    showers.source = "reference"
    return showers


def test_objective_is_lowest_at_the_truth() -> None:
    objective = GFlashObjective(_reference(), seed=0)
    at_truth, terms = objective(TRUTH)
    at_default, default_terms = objective(GFlashConfig())
    assert at_truth < 0.5 * at_default
    assert terms["E_tot/E_inc"] < default_terms["E_tot/E_inc"] and terms["radius"] < default_terms["radius"]
    assert objective.n_evaluations == 2
    # Common random numbers: the same parameters give the same value.
    assert objective(TRUTH)[0] == at_truth


def test_fit_moves_the_parameters_towards_the_truth() -> None:
    # Only the two fitted parameters differ from the defaults (else one would stand in for the others).
    truth = GFlashConfig(tuning=GFlashTuning(sampling_fraction=0.032, core_radius_scale=1.4))
    calls = []
    result = fit_gflash(
        _reference(truth=truth), parameters=["tuning.sampling_fraction", "tuning.core_radius_scale"], seed=0,
        max_evaluations=30, progress=False, on_evaluation=lambda i, value, best: calls.append((i, best)),
    )
    assert result.n_evaluations == len(calls) <= 30 and calls[-1][1] == result.objective
    assert result.objective < result.objective_start
    _, fraction = result.parameters["tuning.sampling_fraction"]
    core_start, core = result.parameters["tuning.core_radius_scale"]
    assert abs(fraction - 0.032) < 0.03 * 0.032 < abs(SIW.sampling_fraction - 0.032)
    assert core_start == 1.0 and abs(core - 1.4) < 0.5 * abs(core_start - 1.4)
    # Keys not fitted keep their starting values.
    assert result.config.spot_multiplier == 1.0 and result.config.tuning.depth_offset == 0.0


def test_fit_refuses_too_few_showers_and_unknown_parameters() -> None:
    with pytest.raises(InputError, match="at least 50"):
        fit_gflash(_reference(20), progress=False)
    with pytest.raises(InputError, match="unknown keys"):
        fit_gflash(_reference(60), parameters=["tuning.depth_ofset"], progress=False)


# ---- the commands --------------------------------------------------------------------------------
@pytest.fixture
def reference_file(tmp_path):
    path = tmp_path / "fullsim.h5"
    simulate_to_file(path, GEOMETRY, 240, "log-uniform:2000,20000", config=TRUTH, seed=5, progress=False)
    return path


def test_fit_gflash_command_writes_a_loadable_params_file(run, tmp_path, reference_file) -> None:
    out = tmp_path / "params.yaml"
    code, stdout, stderr = run("fit-gflash", reference_file, "--out", out, "--n-showers", 200,
                               "--max-evaluations", 12, "--seed", 1)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout and "--gflash-params" in stdout and "tuning.sampling_fraction" in stdout
    # Progress with the objective, as a few plain lines (stderr is no terminal here).
    assert any(line.startswith("fit-gflash: 12/12 evaluations") and "objective" in line
               for line in stderr.splitlines())
    text = out.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(str(reference_file) in line for line in header)
    assert any("showers: 200" in line for line in header)
    assert any("objective" in line for line in header) and any(line.startswith("# date: ") for line in header)
    config = load_yaml(GFlashConfig, out)
    assert config.max_spots == 20000  # the fit's cap, so GFlash's spot count is not cut below 100 GeV
    # The closed-form step alone puts the sampling fraction near the truth (0.032; default 0.0255).
    assert config.tuning.sampling_fraction == pytest.approx(0.032, rel=0.03)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_simulate_with_gflash_params_follows_their_sampling_fraction(run, tmp_path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("# fitted\ntuning:\n  sampling_fraction: 0.04\n")
    tuned, plain = tmp_path / "tuned.h5", tmp_path / "plain.h5"
    for out, extra in ((tuned, ["--gflash-params", params]), (plain, [])):
        code, stdout, err = run("simulate", "-g", "calochallenge-2", "--n", 20, "--energy", "10000",
                                "--threshold-mev", 0, "--seed", 2, "--out", out, *extra)
        assert code == 0, err
        assert (f"GFlash parameters of {params}" in stdout) == bool(extra)
    ratio, base = _ratio(read_showers(tuned)), _ratio(read_showers(plain))
    # Same seed and no threshold: the same spots, scaled by 0.04 / ê f_mip.
    assert np.allclose(ratio, base * 0.04 / SIW.sampling_fraction, rtol=1e-5)
    assert ratio.mean() == pytest.approx(0.04, rel=0.03)  # ~1 % leaks out of the readout


def test_config_and_gflash_params_merge_unless_they_conflict(run, tmp_path) -> None:
    params, settings, clash = tmp_path / "params.yaml", tmp_path / "settings.yaml", tmp_path / "clash.yaml"
    params.write_text("max_spots: 700\ntuning:\n  sampling_fraction: 0.03\n  core_radius_scale: 1.2\n")
    settings.write_text("threshold_mev: 0.0\nmax_spots: 700\ntuning:\n  depth_offset: 0.3\n")
    clash.write_text("tuning:\n  sampling_fraction: 0.05\n")
    out = tmp_path / "merged.h5"
    code, _, err = run("simulate", "-g", "calochallenge-2", "--n", 5, "--energy", "5000", "--seed", 3,
                       "--config", settings, "--gflash-params", params, "--out", out)
    assert code == 0, err
    merged = GFlashConfig(threshold_mev=0.0, max_spots=700, tuning=GFlashTuning(
        sampling_fraction=0.03, core_radius_scale=1.2, depth_offset=0.3))
    shower_rng = np.random.default_rng(np.random.SeedSequence(3).spawn(4)[3])
    expected = simulate(GEOMETRY, np.full(5, 5e3), config=merged, rng=shower_rng)
    assert np.allclose(read_showers(out).showers, expected.showers, rtol=1e-6, atol=0.0)
    code, _, err = run("simulate", "-g", "calochallenge-2", "--n", 5, "--energy", "5000",
                       "--config", clash, "--gflash-params", params, "--out", tmp_path / "never.h5")
    assert code == 2 and err.startswith("error: ") and "tuning.sampling_fraction" in err
    assert str(clash) in err and not (tmp_path / "never.h5").exists()


def test_fit_gflash_bad_input_is_one_error_line(run, tmp_path, reference_file) -> None:
    atlas = tmp_path / "atlas.h5"  # a readout of a medium the simulator does not know
    geometry = dataclasses.replace(get_geometry("calochallenge-1-photons"), material="Unobtainium")
    write_showers(atlas, ShowerSet(np.ones((60, geometry.n_voxels), dtype=np.float32), geometry,
                                   np.full(60, 1e4)))
    empty = tmp_path / "empty.h5"
    simulate_to_file(empty, GEOMETRY, 0, "1000", progress=False)
    cases = [
        ((atlas,), "cannot fill"),
        ((empty,), "holds no showers"),
        ((tmp_path / "missing.h5",), "missing.h5"),
        ((reference_file, "--n-showers", 10), "at least 50"),
    ]
    for args, fragment in cases:
        out = tmp_path / "params.yaml"
        code, _, err = run("fit-gflash", *args, "--out", out, "--max-evaluations", 2)
        assert code == 2, (args, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and fragment in last and "Traceback" not in err, (args, err)
        assert not out.exists()
