"""The GFlash simulator's readout: incident angles, any geometry, thresholds, seeds and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.errors import InputError, UnknownNameError
from caloforge.geometry import PRESETS, CylindricalGeometry, LayerBinning
from caloforge.simulate import GFlashConfig, simulate

NO_THRESHOLD = GFlashConfig(threshold_mev=0.0)
# Fine readout: 2 mm rings to 120 mm, 48 angular bins, 40 layers of 1 X0 of PbWO4.
FINE = CylindricalGeometry.regular("fine", 40, 48, np.arange(0.0, 120.5, 2.0), 8.903, "PbWO4")


def _centroids(showers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer energy-weighted mean x and y (mm), layer-centre z (mm) and layer energy."""
    centres = FINE.voxel_centres
    e = FINE.to_grid(showers.astype(np.float64)).sum(axis=0).reshape(FINE.n_layers, -1)
    x = FINE.to_grid(centres["x"]).reshape(FINE.n_layers, -1)
    y = FINE.to_grid(centres["y"]).reshape(FINE.n_layers, -1)
    layer_e = e.sum(axis=1)
    z = (np.arange(FINE.n_layers) + 0.5) * 8.903
    safe = np.maximum(layer_e, 1e-30)
    return (e * x).sum(axis=1) / safe, (e * y).sum(axis=1) / safe, z, layer_e


def test_normal_incidence_is_centred() -> None:
    showers = simulate(FINE, np.full(100, 1e4), seed=1, config=NO_THRESHOLD).showers
    x, y, _, layer_e = _centroids(showers)
    # Whole showers centred to 0.2 mm; the layers around the maximum (many spots each) to 1 mm.
    assert abs((layer_e * x).sum() / layer_e.sum()) < 0.2 and abs((layer_e * y).sum() / layer_e.sum()) < 0.2
    core = layer_e > 0.2 * layer_e.max()
    assert np.all(np.abs(x[core]) < 1.0) and np.all(np.abs(y[core]) < 1.0)


@pytest.mark.parametrize(("theta", "phi"), [(math.pi / 2 - 0.3, 0.0), (math.pi / 2, 0.25)])
def test_deposits_move_with_the_incident_angle(theta: float, phi: float) -> None:
    # Direction (cos theta, sin theta sin phi, sin theta cos phi) in the readout frame (caloforge.data):
    # the axis crosses depth z at x = z cos(theta) / (sin theta cos phi), y = z tan(phi). Lateral
    # spread averages out over the whole shower, so its energy-weighted centre (x, y, z) lies on the axis.
    slope_x = math.cos(theta) / (math.sin(theta) * math.cos(phi))
    slope_y = math.tan(phi)
    result = simulate(FINE, np.full(100, 1e4), theta=theta, phi=phi, seed=2, config=NO_THRESHOLD)
    assert result.theta is not None and np.allclose(result.theta, theta)
    x, y, z, layer_e = _centroids(result.showers)
    z_bar = (layer_e * z).sum() / layer_e.sum()
    x_bar, y_bar = (layer_e * x).sum() / layer_e.sum(), (layer_e * y).sum() / layer_e.sum()
    assert x_bar == pytest.approx(slope_x * z_bar, abs=0.3 + 0.02 * z_bar * slope_x)  # mm
    assert y_bar == pytest.approx(slope_y * z_bar, abs=0.3 + 0.02 * z_bar * slope_y)


def test_tilted_showers_are_shorter_in_depth() -> None:
    # The same path length crosses fewer layers: the depth centroid scales by sin(theta) cos(phi).
    z = (np.arange(FINE.n_layers) + 0.5) * 8.903

    def depth_centroid(theta: float) -> float:
        showers = simulate(FINE, np.full(100, 1e4), theta=theta, seed=3, config=NO_THRESHOLD).showers
        grid = FINE.to_grid(showers)
        layer_e = grid.astype(np.float64).sum(axis=(0, 2, 3))
        return float((layer_e * z).sum() / layer_e.sum())

    ratio = depth_centroid(math.pi / 2 - 0.5) / depth_centroid(math.pi / 2)
    assert ratio == pytest.approx(math.cos(0.5), abs=0.04)


def test_irregular_geometry_bins_like_the_regular_one() -> None:
    # Same seed -> same spots whatever the readout (the draws do not depend on it), so per-layer sums
    # of an irregular readout equal those of a one-ring readout with the same outer radius, and an empty
    # layer reads nothing.
    outer = 60.0
    layers = (
        LayerBinning((0.0, 5.0, 20.0, outer), 8),
        LayerBinning((0.0,), 1),
        LayerBinning((0.0, 3.0, 7.5, 12.0, outer), 3),
        LayerBinning((0.0, outer), 1),
    ) * 5
    irregular = CylindricalGeometry("mixed", layers, (8.903,) * 20, "PbWO4")
    ring = CylindricalGeometry.regular("ring", 20, 1, [0.0, outer], 8.903, "PbWO4")
    energy = np.array([3e3, 3e4, 3e5])
    a = simulate(irregular, energy, seed=4, config=NO_THRESHOLD).showers.astype(np.float64)
    b = simulate(ring, energy, seed=4, config=NO_THRESHOLD).showers.astype(np.float64)
    offsets = irregular.layer_offsets
    per_layer = np.stack([a[:, offsets[i]:offsets[i + 1]].sum(axis=1) for i in range(20)], axis=1)
    empty = [i for i, layer in enumerate(layers) if layer.n_voxels == 0]
    assert np.allclose(np.delete(per_layer, empty, axis=1), np.delete(b, empty, axis=1), rtol=1e-5)
    assert b[:, empty].sum() > 0  # energy did fall where the irregular readout has no cells


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_simulable_preset(name: str) -> None:
    geometry = PRESETS[name]
    result = simulate(geometry, [1e3, 1e5], seed=5)
    assert result.showers.shape == (2, geometry.n_voxels) and result.showers.dtype == np.float32
    result.check()
    assert np.all(result.showers.sum(axis=1) > 0)


def test_unknown_media_are_refused_clearly() -> None:
    unknown = CylindricalGeometry.regular("u", 2, 1, (0.0, 1.0), 1.0, "Unobtainium")
    with pytest.raises(UnknownNameError, match="unknown simulator material 'Unobtainium'"):
        simulate(unknown, [1e4])


def test_threshold_zeroes_exactly_the_small_cells() -> None:
    geometry = PRESETS["calochallenge-2"]
    energy = np.geomspace(1e3, 1e6, 12)
    raw = simulate(geometry, energy, seed=6, config=NO_THRESHOLD).showers
    cut = simulate(geometry, energy, seed=6, config=GFlashConfig(threshold_mev=0.05)).showers
    assert np.array_equal(cut, np.where(raw < 0.05, 0.0, raw).astype(np.float32))
    assert np.count_nonzero(cut) < np.count_nonzero(raw)
    # The SiW default is the CaloChallenge's 15.15 keV.
    default = simulate(geometry, energy, seed=6).showers
    assert np.array_equal(default, np.where(raw < 0.01515, 0.0, raw).astype(np.float32))


def test_same_seed_same_showers() -> None:
    geometry = PRESETS["calochallenge-2"]
    energy = np.geomspace(1e3, 1e5, 20)
    first = simulate(geometry, energy, theta=1.2, phi=0.1, seed=7, chunk_size=8).showers
    again = simulate(geometry, energy, theta=1.2, phi=0.1, rng=np.random.default_rng(7), chunk_size=8).showers
    other = simulate(geometry, energy, theta=1.2, phi=0.1, seed=8, chunk_size=8).showers
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_bad_conditions_raise_input_errors() -> None:
    geometry = PRESETS["calochallenge-2"]
    with pytest.raises(InputError, match="energy"):
        simulate(geometry, [1e3, -5.0])
    with pytest.raises(InputError, match="does not enter the readout"):
        simulate(geometry, [1e3], theta=math.pi / 2, phi=math.pi)
    with pytest.raises(InputError, match="radial_scale"):
        GFlashConfig(radial_scale=0.0)


@pytest.mark.parametrize("name", ["calochallenge-2", "par04-pbwo4"])
def test_energies_far_below_the_fit_range_stay_finite(name: str) -> None:
    # A few MeV (y ~ 1) is outside G&P's fits; the guards keep the showers finite and within E x f_s.
    geometry = PRESETS[name]
    result = simulate(geometry, [3.0, 10.0, 30.0], seed=12, config=NO_THRESHOLD)
    result.check()
    f_s = 1.0 if name == "par04-pbwo4" else 0.0255
    assert np.all(result.showers.sum(axis=1) <= np.array([3.0, 10.0, 30.0]) * f_s * 3)
