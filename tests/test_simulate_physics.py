"""The GFlash simulator against the parameterisation it implements, each figure worked out here
independently of ``caloforge.simulate`` (numbers typed from G&P hep-ex/0001020, Geant4's GFlash tuning
classes and the PDG tables)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import curve_fit
from scipy.special import gammaln
from scipy.stats import gamma as gamma_dist

from caloforge.geometry import CylindricalGeometry
from caloforge.simulate import GFlashConfig, get_material, simulate

NO_THRESHOLD = GFlashConfig(threshold_mev=0.0)


def _depth_geometry(material: str, n_layers: int = 160, step_x0: float = 0.25) -> CylindricalGeometry:
    """Layers of 0.25 X0, one ring inside one Moliere radius and one out to 100 R_M."""
    m = get_material(material)
    return CylindricalGeometry.regular(
        "depth", n_layers, 1, [0.0, m.moliere_mm, 100 * m.moliere_mm], step_x0 * m.x0_mm, material
    )


def _gamma_pdf(t: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.exp((a - 1) * np.log(b * t) + np.log(b) - b * t - gammaln(a))


def _mean_profile(material: str, energy: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(layer-centre depths in X0, mean energy fraction per X0) of n showers."""
    geometry = _depth_geometry(material)
    showers = simulate(geometry, np.full(n, energy), seed=seed, config=NO_THRESHOLD).showers
    per_layer = geometry.to_grid(showers.astype(np.float64)).sum(axis=(2, 3)).mean(axis=0)
    t = (np.arange(geometry.n_layers) + 0.5) * 0.25
    return t, per_layer / per_layer.sum() / 0.25


# Depth of the maximum of the average profile. PbWO4 (homogeneous): T = ln y - 0.858 (G&P, homogeneous media).
# SiW (sampling): T = ln y - 0.812 - 0.55 / F_S - 0.69 (1 - ê) (G&P, sampling calorimeters; Geant4
# ParsAveT1/T2), with
# F_S = X0_eff / 1.7 mm and ê = 1 / (1 + 0.007 (74 - 14)) for 1.4 mm W + 0.3 mm Si.
def _t_max_expected(material: str, energy: float) -> float:
    if material == "PbWO4":
        return math.log(energy / 9.64) - 0.858  # E_c(PbWO4) = 9.64 MeV (PDG)
    m = get_material("SiW")
    ehat = 1 / (1 + 0.007 * 60)
    return math.log(energy / m.ec_mev) - 0.812 - 0.55 / (m.x0_mm / 1.7) - 0.69 * (1 - ehat)


@pytest.mark.parametrize("material", ["PbWO4", "SiW"])
def test_depth_of_maximum_follows_ln_y(material: str) -> None:
    fitted, expected = [], []
    for energy in (2e3, 2e4, 2e5):
        t, profile = _mean_profile(material, energy, n=200, seed=11)
        (a, b), _ = curve_fit(_gamma_pdf, t, profile, p0=(4.0, 0.5))
        fitted.append((a - 1) / b)
        expected.append(_t_max_expected(material, energy))
    assert fitted == pytest.approx(expected, rel=0.05)
    # Slope dT / d ln y is 1 in both media.
    slope = np.polyfit(np.log([2e3, 2e4, 2e5]), fitted, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05)


def test_mean_longitudinal_profile_is_the_fluctuation_averaged_gamma() -> None:
    """Mean profile of PbWO4 showers vs E[gamma(t; alpha_i, beta_i)] over the log-normal (T, alpha)
    of G&P (individual profiles), drawn here with the symmetric sqrt((1 +- rho) / 2) form of the
    correlation."""
    energy = 2e4
    _, profile = _mean_profile("PbWO4", energy, n=300, seed=5)
    z, ln_y = 68.36, math.log(energy / 9.64)  # mass-weighted Z of PbWO4, E_c = 9.64 MeV
    rng = np.random.default_rng(99)
    z1, z2 = rng.standard_normal((2, 20000))
    rho = 0.705 - 0.023 * ln_y
    c1, c2 = math.sqrt((1 + rho) / 2), math.sqrt((1 - rho) / 2)
    t_max = np.exp(math.log(ln_y - 0.812) + (z1 * c1 + z2 * c2) / (-1.4 + 1.26 * ln_y))
    alpha = np.exp(math.log(0.81 + (0.458 + 2.26 / z) * ln_y) + (z1 * c1 - z2 * c2) / (-0.58 + 0.86 * ln_y))
    beta = (alpha - 1) / t_max
    edges = np.arange(161) * 0.25
    cdf = gamma_dist.cdf(edges[None, :] * beta[:, None], alpha[:, None])
    expected = np.diff(cdf, axis=1).mean(axis=0) / 0.25
    assert np.max(np.abs(profile - expected)) < 0.03 * expected.max()
    assert np.argmax(profile) == pytest.approx(np.argmax(expected), abs=1)


@pytest.mark.parametrize("material", ["PbWO4", "SiW"])
def test_containment_within_one_moliere_radius(material: str) -> None:
    # By definition of R_M about 90 % of an EM shower's energy lies within one Moliere radius
    # (PDG Review, "Passage of particles through matter", EM cascades); G&P's radial profile is fitted
    # to reproduce detailed simulation, so the simulator must land near 0.90.
    geometry = _depth_geometry(material)
    showers = simulate(geometry, np.full(150, 2e4), seed=3, config=NO_THRESHOLD).showers
    grid = geometry.to_grid(showers.astype(np.float64))
    inside = grid[..., 0].sum() / grid.sum()
    assert inside == pytest.approx(0.90, abs=0.03)


def test_visible_energy_is_sampling_fraction_with_its_resolution() -> None:
    # SiW 1.4 mm W + 0.3 mm Si, deep and wide enough to contain the shower: the visible sum is
    # E x ê x f_mip with f_mip from the PDG minimum dE/dx (W 1.145, Si 1.664 MeV cm2/g), and its spread is
    # a / sqrt(E / GeV), a = 2.7 % sqrt(0.3 / f_mip) (PDG Review, "Calorimetry").
    loss_si, loss_w = 0.3 * 2.329 * 1.664, 1.4 * 19.30 * 1.145
    f_mip = loss_si / (loss_si + loss_w)
    fraction = f_mip / (1 + 0.007 * (74 - 14))
    a = 0.027 * math.sqrt(0.3 / f_mip)
    geometry = CylindricalGeometry.regular("deep", 100, 1, [0.0, 500.0], 3.4, "SiW")
    energy, n = 1.6e4, 600
    totals = simulate(geometry, np.full(n, energy), seed=8, config=NO_THRESHOLD).showers.sum(axis=1)
    ratio = totals.astype(np.float64) / energy
    resolution = a / math.sqrt(energy / 1000.0)
    tolerance = 3 * fraction * resolution / math.sqrt(n) + 5e-5  # 3 sigma of the mean + ~0.2 % leakage
    assert ratio.mean() == pytest.approx(fraction * 0.998, abs=tolerance)
    assert ratio.std() / ratio.mean() == pytest.approx(resolution, rel=0.15)


def test_homogeneous_medium_keeps_all_energy_but_leakage() -> None:
    geometry = CylindricalGeometry.regular("deep", 60, 1, [0.0, 2000.0], 8.903, "PbWO4")  # 60 X0
    energy = np.array([1e3, 1e4, 1e5])
    totals = simulate(geometry, energy, seed=2, config=NO_THRESHOLD).showers.sum(axis=1)
    assert np.all(totals <= energy * (1 + 1e-6))
    assert np.all(totals > 0.995 * energy)
    # A 5 X0 deep block lets most of a 100 GeV shower (T ~ 8.4 X0) leak out of the back.
    shallow = CylindricalGeometry.regular("shallow", 5, 1, [0.0, 2000.0], 8.903, "PbWO4")
    front = simulate(shallow, np.full(50, 1e5), seed=2, config=NO_THRESHOLD).showers.sum(axis=1).mean()
    # Average-profile alpha and T at 100 GeV (G&P, homogeneous media), integrated over the first 5 X0.
    expected = gamma_dist.cdf(5.0 * (5.081 - 1) / 8.389, 5.081)
    assert front / 1e5 == pytest.approx(expected, abs=0.04)


def test_radial_scale_widens_showers() -> None:
    geometry = CylindricalGeometry.regular("fine", 40, 1, np.arange(0, 401, 0.5), 8.903, "PbWO4")
    centres = 0.5 * (geometry.r_edges_mm[:-1] + geometry.r_edges_mm[1:])

    def median_radius(scale: float) -> float:
        config = GFlashConfig(threshold_mev=0.0, radial_scale=scale)
        grid = geometry.to_grid(simulate(geometry, np.full(100, 1e4), seed=4, config=config).showers)
        radial = grid.sum(axis=(0, 1, 2)).astype(np.float64)
        return float(np.interp(0.5, np.cumsum(radial) / radial.sum(), centres))

    assert median_radius(1.2) / median_radius(1.0) == pytest.approx(1.2, rel=0.05)


def test_longitudinal_scale_stretches_showers() -> None:
    geometry = _depth_geometry("PbWO4")
    t = (np.arange(geometry.n_layers) + 0.5) * 0.25

    def centroid(scale: float) -> float:
        config = GFlashConfig(threshold_mev=0.0, longitudinal_scale=scale)
        showers = simulate(geometry, np.full(100, 1e4), seed=4, config=config).showers
        per_layer = geometry.to_grid(showers.astype(np.float64)).sum(axis=(0, 2, 3))
        return float((per_layer * t).sum() / per_layer.sum())

    assert centroid(1.2) / centroid(1.0) == pytest.approx(1.2, rel=0.02)
