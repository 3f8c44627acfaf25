"""Cell-spectrum calibration: the fitted map, its checkpoint and sampler wrapper, export, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from toys import TOY_GEOMETRY as GEOMETRY
from toys import toy_showers, train_tiny_dit

from caloforge.calibration import (
    CalibratedSampler,
    CalibrationConfig,
    CellCalibration,
    cell_groups,
    fit_cell_calibration,
)
from caloforge.checkpoint import read_checkpoint
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.export import export_par04, export_sampler
from caloforge.generate import calibrate_checkpoint, load_generator
from caloforge.io import write_showers
from caloforge.onnx_runtime import check_export
from caloforge.preprocess import layer_matrix

THRESHOLD = 0.5  # MeV: toy_showers zero every cell below it


def apply(calibration: CellCalibration, showers: ShowerSet) -> np.ndarray:
    with torch.no_grad():
        out = calibration(torch.from_numpy(showers.showers), torch.from_numpy(showers.energy).float())
    return out.numpy()


def scaled(showers: ShowerSet, factor: float) -> ShowerSet:
    return ShowerSet(showers.showers * np.float32(factor), showers.geometry, showers.energy)


def test_groups_are_one_per_layer_and_radial_bin() -> None:
    groups = cell_groups(GEOMETRY)
    layer, alpha, radial = GEOMETRY.voxel_indices
    assert groups.shape == (GEOMETRY.n_voxels,) and groups.max() + 1 == 4 * 2
    for g in range(8):  # every alpha bin of one (layer, radial bin), and nothing else
        members = groups == g
        assert len(set(layer[members])) == 1 and len(set(radial[members])) == 1
        assert sorted(alpha[members]) == [0, 1, 2, 3]


def test_fitted_to_itself_it_changes_nothing() -> None:
    showers = toy_showers(400)
    calibration = fit_cell_calibration(showers, showers, THRESHOLD, CalibrationConfig(n_energy_bins=3))
    np.testing.assert_allclose(apply(calibration, showers), showers.showers, rtol=1e-4, atol=1e-5)
    assert calibration.info["fitted_fraction"] == 1.0


def bright(n: int, seed: int) -> ShowerSet:
    """Toy showers with no hit below 2 x THRESHOLD, so halving them keeps every hit."""
    showers = toy_showers(n, seed)
    showers.showers[showers.showers < 2 * THRESHOLD] = 0.0
    return showers


def sparse(n: int, seed: int, rng: np.random.Generator) -> ShowerSet:
    """``bright`` showers with half their cells emptied (at random, by ``rng``)."""
    showers = bright(n, seed)
    showers.showers[rng.random(showers.showers.shape) < 0.5] = 0.0
    return showers


def test_a_model_twice_too_faint_is_brought_back() -> None:
    reference = bright(600, seed=1)
    model = scaled(reference, 0.5)
    config = CalibrationConfig(n_energy_bins=2, n_quantiles=17, preserve_layer_energies=False)
    calibration = fit_cell_calibration(model, reference, THRESHOLD, config)
    fresh = scaled(bright(300, seed=2), 0.5)  # showers the fit never saw
    out = apply(calibration, fresh)
    hits = fresh.showers > 0
    # Every quantile of the model is half the reference's, so the piecewise-linear map in ln E is a
    # shift by ln 2 everywhere, also between knots and beyond the outer ones.
    np.testing.assert_allclose(out[hits] / fresh.showers[hits], 2.0, rtol=1e-4)
    assert (out[~hits] == 0).all()  # empty cells stay empty


def test_a_model_with_extra_faint_hits_is_cut_to_the_reference_count_when_asked() -> None:
    rng = np.random.default_rng(8)

    reference = sparse(600, 7, rng)

    def with_extra_hits(showers: ShowerSet) -> ShowerSet:  # a third of the empty cells get a faint hit
        out = showers.showers.copy()
        empty = out == 0
        extra = empty & (rng.random(out.shape) < 0.33)
        out[extra] = rng.uniform(THRESHOLD, 0.9 * THRESHOLD * 2, extra.sum())
        return ShowerSet(out, GEOMETRY, showers.energy)

    model = with_extra_hits(reference)
    fresh_reference = sparse(400, 9, rng)
    fresh = with_extra_hits(fresh_reference)
    kept = fit_cell_calibration(model, reference, THRESHOLD, CalibrationConfig(n_energy_bins=2))
    cut = fit_cell_calibration(model, reference, THRESHOLD,
                               CalibrationConfig(n_energy_bins=2, match_hit_count=True))
    hits = {name: (apply(c, fresh) > 0).sum() for name, c in (("kept", kept), ("cut", cut))}
    assert hits["kept"] == (fresh.showers > 0).sum()  # by default the count is the model's
    target = (fresh_reference.showers > 0).sum()
    assert abs(hits["cut"] - target) < 0.05 * target < (fresh.showers > 0).sum() - target
    assert cut.info["mean_cut"] > 0 and kept.info["mean_cut"] == 0


def test_a_model_with_too_few_hits_gets_them_from_its_candidates() -> None:
    rng = np.random.default_rng(11)

    reference = sparse(600, 12, rng)

    def with_faint_hits(showers: ShowerSet) -> ShowerSet:  # a third of the hits fall below the threshold
        out = showers.showers.copy()
        lost = (out > 0) & (rng.random(out.shape) < 0.33)
        out[lost] = rng.uniform(0.3 * THRESHOLD, 0.95 * THRESHOLD, lost.sum())
        return ShowerSet(out, GEOMETRY, showers.energy)

    model = with_faint_hits(reference)  # as a sampler after lower_threshold(0.25 x THRESHOLD) hands it over
    fresh_reference = sparse(400, 13, rng)
    fresh = with_faint_hits(fresh_reference)
    config = CalibrationConfig(n_energy_bins=2, match_hit_count=True, candidate_threshold=0.25)
    calibration = fit_cell_calibration(model, reference, THRESHOLD, config)
    assert calibration.candidate_mev == pytest.approx(0.25 * THRESHOLD)
    out = apply(calibration, fresh)
    target, short = (fresh_reference.showers > 0).sum(), (fresh.showers >= THRESHOLD).sum()
    assert abs((out > 0).sum() - target) < 0.05 * target < target - short  # the count came back up
    assert out[out > 0].min() >= THRESHOLD  # every candidate is a hit or empty
    # each layer keeps what the sampler gave it, candidates included (unless all its candidates were cut)
    matrix = layer_matrix(GEOMETRY)
    kept = (out @ matrix) > 0
    np.testing.assert_allclose((out @ matrix)[kept], (fresh.showers @ matrix)[kept], rtol=1e-3)
    restored = CellCalibration.from_dict(calibration.to_dict(), GEOMETRY)
    assert restored.candidate_mev == calibration.candidate_mev
    old = {k: v for k, v in calibration.to_dict().items() if k != "candidate_mev"}  # written before them
    assert CellCalibration.from_dict(old, GEOMETRY).candidate_mev == THRESHOLD


def test_candidates_need_the_hit_count_matching() -> None:
    with pytest.raises(InputError,
                       match=r"candidate_threshold.*is 0.5 without match_hit_count.*match_hit_count on"):
        CalibrationConfig(candidate_threshold=0.5)
    with pytest.raises(InputError, match=r"candidate_threshold.*is 1.5.*in \(0, 1\]"):
        CalibrationConfig(candidate_threshold=1.5, match_hit_count=True)


def test_a_sampler_that_cannot_hand_over_candidates_is_refused_by_name() -> None:
    from caloforge.sampler import ShowerSampler

    class Plain(ShowerSampler):
        pass

    config = CalibrationConfig(n_energy_bins=1, match_hit_count=True, candidate_threshold=0.5)
    calibration = fit_cell_calibration(toy_showers(50), toy_showers(50, seed=1), THRESHOLD, config)
    with pytest.raises(InputError, match=r"calibration.candidate_threshold.*Plain for cells below its "
                       r"readout threshold.*1 for this family"):
        CalibratedSampler(Plain(), calibration)


def test_layer_energies_are_kept_when_asked() -> None:
    reference = toy_showers(500, seed=3)
    model = scaled(reference, 0.7)
    model.showers[model.showers < THRESHOLD] = 0.0
    calibration = fit_cell_calibration(model, reference, THRESHOLD, CalibrationConfig(n_energy_bins=2))
    out = apply(calibration, model)
    matrix = layer_matrix(GEOMETRY)
    np.testing.assert_allclose(out @ matrix, model.showers @ matrix, rtol=1e-4)
    assert not np.allclose(out, model.showers)  # energy moved between the cells of a layer
    assert out[out > 0].min() >= THRESHOLD


def first_layer_scaled(showers: ShowerSet, factor: float) -> ShowerSet:
    out = showers.showers.copy()
    first = layer_matrix(GEOMETRY)[:, 0] > 0
    out[:, first] *= np.float32(factor)
    return ShowerSet(out, GEOMETRY, showers.energy)


def test_layer_energies_are_mapped_to_the_reference_when_asked() -> None:
    reference = bright(600, seed=5)
    model = first_layer_scaled(reference, 1.8)  # its first layer 1.8x too bright, the others right
    mapped = fit_cell_calibration(model, reference, THRESHOLD,
                                  CalibrationConfig(n_energy_bins=2, n_quantiles=17, map_layer_energies=True))
    kept = fit_cell_calibration(model, reference, THRESHOLD,
                                CalibrationConfig(n_energy_bins=2, n_quantiles=17))
    truth = bright(300, seed=6)  # showers the fit never saw
    fresh = first_layer_scaled(truth, 1.8)
    matrix = layer_matrix(GEOMETRY)
    # every quantile of the first layer is 1.8x the reference's: the map divides each shower's by 1.8
    np.testing.assert_allclose(apply(mapped, fresh) @ matrix, truth.showers @ matrix, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(apply(kept, fresh) @ matrix, fresh.showers @ matrix, rtol=1e-4, atol=1e-3)
    assert mapped.info["layer_fitted_fraction"] == 1.0 and "layer_fitted_fraction" not in kept.info
    again = CellCalibration.from_dict(mapped.to_dict(), GEOMETRY)  # the checkpoint keeps the layer map
    np.testing.assert_array_equal(apply(again, fresh), apply(mapped, fresh))


def test_the_layer_map_needs_the_layer_energies_restored() -> None:
    with pytest.raises(InputError, match=r"calibration\.map_layer_energies.*preserve_layer_energies off.*"
                       r"preserve_layer_energies on"):
        CalibrationConfig(map_layer_energies=True, preserve_layer_energies=False)


def test_varying_angles_are_refused_by_name() -> None:
    showers = toy_showers(50)
    tilted = ShowerSet(showers.showers, GEOMETRY, showers.energy, theta=np.linspace(0.1, 0.5, 50),
                       source="tilted.h5")
    with pytest.raises(InputError, match=r"tilted\.h5.*theta.*varies across the reference showers"):
        fit_cell_calibration(showers, tilted, THRESHOLD)


def test_config_refuses_a_single_quantile() -> None:
    with pytest.raises(InputError, match=r"calibration\.n_quantiles.*is 1.*integer >= 2"):
        CalibrationConfig(n_quantiles=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_dit(tmp_path_factory.mktemp("run") / "run",
                          max_steps=6, sample_steps=2, checkpoint_every=6)


@pytest.fixture(scope="module")
def calibrated(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "calibrated.ckpt"
    calibrate_checkpoint(checkpoint, toy_showers(200, seed=4), out, CalibrationConfig(n_showers=64,
                         n_energy_bins=2, n_quantiles=9), seed=1, batch_size=32)
    return out


def test_calibrated_checkpoint_generates_the_calibrated_showers(checkpoint: Path, calibrated: Path) -> None:
    content = read_checkpoint(calibrated)
    assert content.calibration is not None and content.calibration["info"]["n_generated"] == 64
    assert content.calibration["info"]["sampling"] == {"n_steps": 2, "sampler": "heun"}
    generator = load_generator(calibrated)
    assert isinstance(generator.sampler, CalibratedSampler)
    energy = np.array([2e3, 9e3, 4e4, 9e4])
    got = generator.sample(energy, seed=3).showers
    raw = load_generator(checkpoint).sample(energy, seed=3)  # the same noise, no calibration
    calibration = generator.sampler.calibration  # type: ignore[union-attr]
    np.testing.assert_allclose(got, apply(calibration, raw), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, raw.showers)


def test_a_calibrated_checkpoint_is_calibrated_afresh(calibrated: Path, tmp_path: Path) -> None:
    config = CalibrationConfig(n_showers=64, n_energy_bins=2, n_quantiles=9)
    again = tmp_path / "again.ckpt"
    calibrate_checkpoint(calibrated, toy_showers(200, seed=4), again, config, seed=1, batch_size=32)
    first, second = read_checkpoint(calibrated).calibration, read_checkpoint(again).calibration
    assert first is not None and second is not None
    # the model's own showers were fitted, not the calibrated ones: the same map as from the raw model
    torch.testing.assert_close(second["x"], first["x"])
    torch.testing.assert_close(second["y"], first["y"])


def test_calibrated_sampler_exports_with_onnxruntime_parity(calibrated: Path, tmp_path: Path) -> None:
    generator = load_generator(calibrated)
    path = export_sampler(generator, tmp_path / "s.onnx")
    assert check_export(generator, path, n=5) < 1e-4
    par04 = export_par04(generator, tmp_path / "par04.onnx")  # the hits' gather and scatter, in-graph noise
    session = ort.InferenceSession(str(par04), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    row = np.zeros((1, inp.shape[1]), np.float32)
    row[0, :4] = [20.0, 0.0, np.pi / 2, 1.0]  # 20 GeV, phi, theta (normal incidence), detector slot 0
    (out,) = session.run(None, {inp.name: row})
    assert np.isfinite(out).all() and out.sum() > 0


def test_a_layer_map_exports_with_onnxruntime_parity(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "layers.ckpt"
    calibrate_checkpoint(checkpoint, toy_showers(200, seed=4), out, CalibrationConfig(
        n_showers=64, n_energy_bins=2, n_quantiles=9, map_layer_energies=True), seed=1, batch_size=32)
    generator = load_generator(out)
    assert generator.sampler.calibration.layer_x is not None  # type: ignore[union-attr]
    path = export_sampler(generator, tmp_path / "s.onnx")
    assert check_export(generator, path, n=5) < 1e-4


def test_candidate_calibration_of_a_dit_generates_and_exports(checkpoint: Path, tmp_path: Path) -> None:
    raw = load_generator(checkpoint)
    threshold = raw.content.preprocessor.threshold_mev  # the run's (its faintest training deposit)
    energy = np.array([2e3, 9e3, 4e4, 9e4])
    hits = raw.sample(energy, seed=3).showers
    raw.sampler.base().lower_threshold(0.1 * threshold)  # the DiT's cells down to a tenth of it come out
    lowered = raw.sample(energy, seed=3).showers
    assert ((lowered > 0) & (lowered < threshold)).any() and lowered[lowered > 0].min() >= 0.1 * threshold
    above = lowered >= threshold
    np.testing.assert_array_equal(lowered[above], hits[above])  # no layer stage: the hits are as they were

    out = tmp_path / "candidates.ckpt"
    calibrate_checkpoint(checkpoint, toy_showers(200, seed=4), out, CalibrationConfig(
        n_showers=64, n_energy_bins=2, n_quantiles=9, match_hit_count=True, candidate_threshold=0.1),
        seed=1, batch_size=32)
    generator = load_generator(out)
    assert generator.sampler.calibration.candidate_mev == pytest.approx(0.1 * threshold)  # type: ignore[union-attr]
    got = generator.sample(energy, seed=3).showers
    assert got[got > 0].min() >= threshold
    path = export_sampler(generator, tmp_path / "s.onnx")
    assert check_export(generator, path, n=5) < 1e-4


def test_the_map_is_piecewise_linear_through_the_knots_with_slope_one_outside() -> None:
    # one energy bin, one group, knots with a zero-width interval (a step); layer energies left free
    x = torch.tensor([[[-8.0, -6.0, -6.0, -3.0]]])
    y = torch.tensor([[[-7.0, -6.5, -5.0, -2.0]]])
    calibration = CellCalibration(x, y, torch.zeros(4, dtype=torch.int64), torch.eye(4), 0.0, 20.0, 1e-9,
                                  preserve_layer_energies=False)
    u = torch.tensor([-9.0, -7.0, -6.5, -5.0, -2.0])  # below, inside, before the step, after it, above
    energy = torch.tensor([1e4])
    with torch.no_grad():
        out = calibration(torch.exp(u[:4] + math.log(1e4))[None], energy)[0]
        last = calibration(torch.exp(u[4:] + math.log(1e4)).expand(1, 4), energy)[0, 0]
    mapped = torch.log(torch.cat([out, last[None]]) / 1e4)
    torch.testing.assert_close(mapped, torch.tensor([-8.0, -6.75, -6.625, -4.0, -1.0]), atol=1e-4, rtol=0)


def test_each_hit_is_mapped_by_both_energy_bins_tables_and_the_results_blended() -> None:
    # knots on points of the tables' grid (256 intervals over each row's span): the tables are then exact
    generator = torch.Generator().manual_seed(0)
    steps = torch.tensor([0, 32, 96, 200, 256], dtype=torch.float64) / 256
    lo, span = torch.randn(2, 3, 1, generator=generator, dtype=torch.float64) * 3, 2.0 + torch.rand(2, 3, 1)
    x = (lo + span * steps).float()
    y = torch.sort(torch.randn(2, 3, 5, generator=generator) * 3, dim=-1).values
    cut = torch.tensor([[0.0, 0.2, 0.0], [0.1, 0.0, 0.0]])
    calibration = CellCalibration(x, y, torch.zeros(4, dtype=torch.int64), torch.eye(4), 0.0, 20.0, 1e-9,
                                  cut=cut)
    u = torch.randn(400, generator=generator) * 5  # inside, below and above the knots
    row0, row1 = (torch.randint(0, 6, (400,), generator=generator) for _ in range(2))
    weight = torch.rand(400, generator=generator)
    mapped, kept = calibration.map_hits(u, row0, row1, weight)

    def piecewise(row: int, value: float) -> float:  # through the knots, slope 1 outside them
        knots, values = x.reshape(6, 5)[row].double().numpy(), y.reshape(6, 5)[row].double().numpy()
        inside = min(max(value, knots[0]), knots[-1])
        return float(np.interp(inside, knots, values)) + value - inside

    columns = zip(u.tolist(), row0.tolist(), row1.tolist(), weight.tolist(), strict=True)
    expected = [(1 - w) * piecewise(r0, v) + w * piecewise(r1, v) for v, r0, r1, w in columns]
    torch.testing.assert_close(mapped, torch.tensor(expected, dtype=torch.float32), atol=2e-5, rtol=0)
    first = (1 - weight) * x.reshape(6, 5)[row0, 0] + weight * x.reshape(6, 5)[row1, 0]
    cut_here = (1 - weight) * cut.reshape(-1)[row0] + weight * cut.reshape(-1)[row1]
    assert torch.equal(kept, (cut_here <= 0) | (u >= first))
    assert not kept.all() and kept.any()  # some hits below a cut group's first knot, not all


def test_showers_without_hits_come_back_empty() -> None:
    calibration = fit_cell_calibration(toy_showers(100), toy_showers(100, seed=1), THRESHOLD)
    empty = torch.zeros((3, GEOMETRY.n_voxels))
    with torch.no_grad():
        assert torch.equal(calibration(empty, torch.full((3,), 1e4)), empty)


def test_cli_calibrate_writes_the_model_and_says_what_it_fitted(
    run, checkpoint: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train.h5"
    write_showers(data, toy_showers(150, seed=5))
    out = tmp_path / "cal.ckpt"
    code, stdout, stderr = run("calibrate", checkpoint, data, "--out", out, "--n-showers", 40,
                               "--energy-bins", 2, "--quantiles", 5)
    assert code == 0, stderr
    assert f"wrote {out}: 8 (layer, radial bin) groups x 2 energy bins x 5 quantiles" in stdout
    assert "calibrating" in stderr and "150 showers" in stderr
    assert read_checkpoint(out).calibration is not None


def test_cli_calibrate_with_candidates_records_them(run, checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.h5"
    write_showers(data, toy_showers(60, seed=5))
    out = tmp_path / "cand.ckpt"
    code, stdout, stderr = run("calibrate", checkpoint, data, "--out", out, "--n-showers", 16,
                               "--energy-bins", 1, "--match-hit-count", "--candidate-threshold", 0.5)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout
    calibration = read_checkpoint(out).calibration
    assert calibration is not None and calibration["info"]["candidate_threshold"] == 0.5
    assert calibration["candidate_mev"] == pytest.approx(0.5 * calibration["threshold_mev"])


def test_cli_calibrate_maps_layer_energies_when_asked(run, checkpoint: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.h5"
    write_showers(data, toy_showers(60, seed=5))
    out = tmp_path / "layers.ckpt"
    code, stdout, stderr = run("calibrate", checkpoint, data, "--out", out, "--n-showers", 40,
                               "--energy-bins", 1, "--map-layer-energies")
    assert code == 0, stderr
    assert "; layer energies mapped (100% of (layer, energy bin) maps fitted); sampling" in stdout
    calibration = read_checkpoint(out).calibration
    assert calibration is not None and calibration["layer_x"].shape[:2] == (1, 4)
    code, _, stderr = run("calibrate", checkpoint, data, "--out", tmp_path / "x.ckpt", "--n-showers", 4,
                          "--map-layer-energies", "--free-layer-energies")
    assert code == 2 and not (tmp_path / "x.ckpt").exists()
    assert "map_layer_energies" in stderr and "preserve_layer_energies on" in stderr


def test_cli_calibrate_refuses_candidates_without_the_count_matching(
    run, checkpoint: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train.h5"
    write_showers(data, toy_showers(20, seed=5))
    code, _, stderr = run("calibrate", checkpoint, data, "--out", tmp_path / "x.ckpt", "--n-showers", 4,
                          "--candidate-threshold", 0.2)
    assert code == 2
    assert "candidate_threshold" in stderr and "without match_hit_count" in stderr
    assert not (tmp_path / "x.ckpt").exists()


def test_cli_calibrate_says_it_replaces_a_calibration(run, calibrated: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.h5"
    write_showers(data, toy_showers(80, seed=6))
    code, stdout, stderr = run("calibrate", calibrated, data, "--out", tmp_path / "x.ckpt", "--n-showers", 8,
                               "--energy-bins", 1)
    assert code == 0, stderr
    assert "is calibrated already: its model is calibrated afresh and the new map replaces the old" in stderr
    assert f"wrote {tmp_path / 'x.ckpt'}" in stdout


def test_cli_calibrate_refuses_another_readout(run, checkpoint: Path, tmp_path: Path) -> None:
    from caloforge.geometry import CylindricalGeometry

    other = CylindricalGeometry.regular("other", 3, 2, (0.0, 1.0, 2.0), 3.4, "SiW")
    data = tmp_path / "other.h5"
    write_showers(data, ShowerSet(np.ones((5, other.n_voxels), np.float32), other, np.full(5, 1e4)))
    code, _, stderr = run("calibrate", checkpoint, data, "--out", tmp_path / "x.ckpt", "--n-showers", 4)
    assert code == 2
    assert "other.h5" in stderr and "have 12 voxels" in stderr and "32, the readout of" in stderr
    assert not (tmp_path / "x.ckpt").exists()


def test_a_calibrated_model_samples_as_it_was_calibrated(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "euler.ckpt"
    calibrate_checkpoint(checkpoint, toy_showers(60), out, CalibrationConfig(n_showers=16, n_energy_bins=1),
                         n_steps=1, sampler="euler")
    generator = load_generator(out)
    assert generator.sampler.options == {"n_steps": 1, "sampler": "euler"}  # not the run's heun, 2 steps
    assert caplog.records == []
    generator.sampler_for(n_steps=3)
    assert "fitted for sampling {'n_steps': 1, 'sampler': 'euler'}" in caplog.text
