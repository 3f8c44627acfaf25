"""The Grindhammer-Peters parameterisation of electromagnetic showers (GFlash).

References: G. Grindhammer and S. Peters, "The Parameterized Simulation of Electromagnetic Showers in
Homogeneous and Sampling Calorimeters", hep-ex/0001020 (below "G&P"): its parameterisation ansatz
dE(r) = E f(t) dt f(r) dr f(phi) dphi and its sections on homogeneous media and on sampling calorimeters;
Geant4 Physics Reference Manual, "Gflash Shower Parameterizations" (below "PRM"); constants as in
Geant4's ``GVFlashHomoShowerTuning.hh`` and ``GFlashSamplingShowerTuning.hh``.

Units: t in radiation lengths, r in Moliere radii, energies in MeV unless a name says GeV, y = E / E_c.
Every function here is vectorised over showers (arrays of shape (N,)) or over spots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammainc, gammaln

from caloforge.errors import InputError
from caloforge.simulate.materials import CalorimeterMaterial

__all__ = [
    "GFlashTuning",
    "ShowerParameters",
    "gamma_profile",
    "gamma_profile_integral",
    "mean_alpha",
    "mean_depth_of_maximum",
    "n_spots",
    "radial_parameters",
    "sample_shower_parameters",
]

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class GFlashTuning:
    """Adjustments of the parameterisation, for fitting it to a full simulation (``caloforge fit-gflash``).

    The defaults change nothing: G&P's formulas and the medium's constants as they are. Physicists tune
    GFlash to their detector's full simulation the same way (G&P, "parameterisation of sampling
    calorimeters": the constants are fits; Geant4 lets a user replace the tuning class). Each field says
    which formula it enters.

    Args:
        sampling_fraction: visible fraction of the deposited energy; None takes the medium's ê f_mip
            (``CalorimeterMaterial.sampling_fraction``).
        sampling_resolution: stochastic term a of the visible energy's sigma/E = a / sqrt(E / GeV); None
            takes the medium's. It sets the per-spot fluctuations only: the spot count keeps GFlash's
            formula with the medium's a (scale it with ``GFlashConfig.spot_multiplier``). Given for a
            homogeneous medium it adds that resolution there too.
        depth_offset: X0 added to the centre of the per-shower depth of maximum T (the log-normal's
            <T> = ln y - 0.812 - sampling corrections).
        depth_slope: multiplies ln y in that centre (how fast the depth grows with energy).
        depth_spread: multiplies sigma(ln T), the shower-to-shower fluctuation of the depth.
        alpha_offset: added to the centre of the profile's shape parameter alpha (<alpha> = 0.81 +
            (0.458 + 2.26 / Z) ln y - 0.476 / F_S in a sampling medium); larger alpha: a longer, relatively
            narrower profile around the same maximum.
        alpha_slope: multiplies the ln y coefficient (0.458 + 2.26 / Z) of that centre.
        alpha_spread: multiplies sigma(ln alpha).
        correlation_offset: added to the correlation rho of ln T and ln alpha (0.784 - 0.023 ln y in a
            sampling medium; clipped to [-0.99, 0.99]): how much deeper showers are also longer.
        core_radius_scale: multiplies the core radius R_C of the radial profile.
        tail_radius_scale: multiplies the tail radius R_T.
        core_fraction_scale: multiplies the core probability p (then clipped to [0, 1]).
    """

    sampling_fraction: float | None = None
    sampling_resolution: float | None = None
    depth_offset: float = 0.0
    depth_slope: float = 1.0
    depth_spread: float = 1.0
    alpha_offset: float = 0.0
    alpha_slope: float = 1.0
    alpha_spread: float = 1.0
    correlation_offset: float = 0.0
    core_radius_scale: float = 1.0
    tail_radius_scale: float = 1.0
    core_fraction_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not math.isfinite(value):
                raise InputError(None, f"tuning.{f.name}", f"is {value}", "a finite number")
        if self.sampling_fraction is not None and not 0 < self.sampling_fraction <= 1:
            raise InputError(None, "tuning.sampling_fraction", f"is {self.sampling_fraction}",
                             "a fraction in (0, 1]")
        if self.sampling_resolution is not None and self.sampling_resolution < 0:
            raise InputError(None, "tuning.sampling_resolution", f"is {self.sampling_resolution}",
                             "a stochastic term >= 0 (e.g. 0.1 for 10 % / sqrt(E / GeV))")
        for name in ("depth_slope", "alpha_slope", "core_radius_scale", "tail_radius_scale"):
            if not getattr(self, name) > 0:
                raise InputError(None, f"tuning.{name}", f"is {getattr(self, name)}", "a number > 0")
        for name in ("depth_spread", "alpha_spread", "core_fraction_scale"):
            if not getattr(self, name) >= 0:
                raise InputError(None, f"tuning.{name}", f"is {getattr(self, name)}", "a number >= 0")


NO_TUNING = GFlashTuning()


def gamma_profile(t: F64, alpha: F64, beta: F64) -> F64:
    """Longitudinal profile f(t) = (beta t)^(alpha-1) beta exp(-beta t) / Gamma(alpha).

    G&P ansatz; PRM "Longitudinal Shower Profiles". t in X0, shapes broadcast.
    """
    t = np.maximum(t, 1e-300)
    return np.exp((alpha - 1) * np.log(beta * t) + np.log(beta) - beta * t - gammaln(alpha))


def gamma_profile_integral(t0: F64, t1: F64, alpha: F64, beta: F64) -> F64:
    """Fraction of the energy between depths t0 and t1 (X0): regularised incomplete gamma differences."""
    return gammainc(alpha, beta * np.maximum(t1, 0)) - gammainc(alpha, beta * np.maximum(t0, 0))


# ---- averages of the longitudinal profile -------------------------------------------------------------
def mean_depth_of_maximum(material: CalorimeterMaterial, energy_mev: F64) -> F64:
    """Depth of the maximum of the average profile in X0.

    Homogeneous: the fit to average profiles T_hom = ln y - 0.858 (G&P, homogeneous media, average
    longitudinal profiles). Sampling: the log-normal centre used for simulating, (ln y - 0.812) - 0.55 / F_S
    - 0.69 (1 - ê) (G&P, sampling calorimeters; Geant4 ``GFlashSamplingShowerTuning`` ParsAveT1/T2).
    """
    ln_y = np.log(np.asarray(energy_mev, dtype=np.float64) / material.ec_mev)
    if not material.sampling:
        return ln_y - 0.858
    return ln_y - 0.812 - 0.55 / material.fs - 0.69 * (1 - material.ehat)


def mean_alpha(material: CalorimeterMaterial, energy_mev: F64) -> F64:
    """Shape parameter of the average profile.

    Homogeneous: alpha_hom = 0.21 + (0.492 + 2.38 / Z) ln y (G&P, homogeneous media). Sampling: the log-normal
    centre 0.81 + (0.458 + 2.26 / Z) ln y - 0.476 / F_S (G&P, sampling calorimeters; Geant4 ParsAveA1).
    """
    ln_y = np.log(np.asarray(energy_mev, dtype=np.float64) / material.ec_mev)
    if not material.sampling:
        return 0.21 + (0.492 + 2.38 / material.z_eff) * ln_y
    return 0.81 + (0.458 + 2.26 / material.z_eff) * ln_y - 0.476 / material.fs


# ---- individual showers ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShowerParameters:
    """Per-shower parameters, each shape (N,).

    Attributes:
        t_max, alpha, beta: energy profile (gamma distribution; T = (alpha - 1) / beta in X0).
        t_spot, alpha_spot, beta_spot: profile of the spot *density* along t (differs from the energy
            profile; G&P, energy spots).
        tau_scale: tau = t * tau_scale, the reduced depth of the radial profile (Geant4 ``ComputeTau``:
            t / T_i scaled by the individual-to-average centre of gravity ratio).
    """

    t_max: F64
    alpha: F64
    beta: F64
    t_spot: F64
    alpha_spot: F64
    beta_spot: F64
    tau_scale: F64

    def __getitem__(self, index: slice) -> ShowerParameters:
        """The parameters of a subset of showers."""
        return ShowerParameters(*(getattr(self, f.name)[index] for f in fields(self)))


def _log_normal_moments(
    material: CalorimeterMaterial, ln_y: F64, tuning: GFlashTuning = NO_TUNING
) -> tuple[F64, F64, F64, F64, F64]:
    """(<ln T>, <ln alpha>, sigma(ln T), sigma(ln alpha), rho) of the correlated log-normal fluctuations.

    Homogeneous (G&P, individual profiles; Geant4 ``GVFlashHomoShowerTuning``): <ln T> = ln(ln y - 0.812),
    <ln alpha> = ln(0.81 + (0.458 + 2.26 / Z) ln y), sigma(ln T) = 1 / (-1.4 + 1.26 ln y),
    sigma(ln alpha) = 1 / (-0.58 + 0.86 ln y), rho = 0.705 - 0.023 ln y.
    Sampling (G&P, sampling calorimeters; ``GFlashSamplingShowerTuning``):
    <T_sam> = <T_hom> - 0.55 / F_S - 0.69 (1 - ê),
    <alpha_sam> = <alpha_hom> - 0.476 / F_S, sigma(ln T) = 1 / (-2.5 + 1.25 ln y),
    sigma(ln alpha) = 1 / (-0.82 + 0.79 ln y), rho = 0.784 - 0.023 ln y.
    Floors and the 0.5 cap on the sigmas keep low y finite, as Geant4's sampling code does. ``tuning``
    scales the ln y terms and the sigmas and shifts the centres (identity by default).
    """
    z = material.z_eff
    t_mean = np.maximum(tuning.depth_slope * ln_y - 0.812, 0.1)
    a_mean = np.maximum(0.81 + tuning.alpha_slope * (0.458 + 2.26 / z) * ln_y, 0.1)
    if not material.sampling:
        sig_t = 1.0 / (-1.4 + 1.26 * ln_y)
        sig_a = 1.0 / (-0.58 + 0.86 * ln_y)
        rho = 0.705 - 0.023 * ln_y
    else:
        t_mean = np.maximum(t_mean - 0.55 / material.fs - 0.69 * (1 - material.ehat), 0.1)
        a_mean = np.maximum(a_mean - 0.476 / material.fs, 1.1)
        sig_t = 1.0 / (-2.5 + 1.25 * ln_y)
        sig_a = 1.0 / (-0.82 + 0.79 * ln_y)
        rho = 0.784 - 0.023 * ln_y
    # A non-positive denominator (very low y) means "no fit there": fall back to the cap.
    sig_t = np.where(sig_t > 0, np.minimum(sig_t, 0.5), 0.5)
    sig_a = np.where(sig_a > 0, np.minimum(sig_a, 0.5), 0.5)
    if tuning != NO_TUNING:  # the floors again, after the shifts (no-ops at the defaults)
        t_mean = np.maximum(t_mean + tuning.depth_offset, 0.1)
        a_mean = np.maximum(a_mean + tuning.alpha_offset, 1.1 if material.sampling else 0.1)
        sig_t, sig_a = sig_t * tuning.depth_spread, sig_a * tuning.alpha_spread
        rho = rho + tuning.correlation_offset
    return np.log(t_mean), np.log(a_mean), sig_t, sig_a, np.clip(rho, -0.99, 0.99)


def sample_shower_parameters(
    material: CalorimeterMaterial, energy_mev: F64, rng: np.random.Generator,
    tuning: GFlashTuning = NO_TUNING,
) -> ShowerParameters:
    """Draw correlated (ln T, ln alpha) per shower and derive the spot profile (G&P, individual
    profiles and energy spots).

    The pair is normal with the correlation matrix [[1, rho], [rho, 1]]; its Cholesky factor
    [[1, 0], [rho, sqrt(1 - rho^2)]] turns two independent standard normals into the correlated pair
    (the same distribution as G&P's symmetric sqrt((1 +- rho)/2) form). ``tuning`` adjusts the
    log-normal moments (``GFlashTuning``).
    """
    energy_mev = np.asarray(energy_mev, dtype=np.float64)
    ln_y = np.log(energy_mev / material.ec_mev)
    mu_t, mu_a, sig_t, sig_a, rho = _log_normal_moments(material, ln_y, tuning)
    z1, z2 = rng.standard_normal((2, energy_mev.shape[0]))
    t_max = np.exp(mu_t + sig_t * z1)
    alpha = np.maximum(np.exp(mu_a + sig_a * (rho * z1 + np.sqrt(1 - rho**2) * z2)), 1.1)
    beta = (alpha - 1) / t_max
    z = material.z_eff
    # Spot profile: T_spot = T (0.698 + 0.00212 Z), alpha_spot = alpha (0.639 + 0.00334 Z) homogeneous
    # (G&P, energy spots); sampling: (0.813 + 0.0019 Z), (0.844 + 0.0026 Z) (ParsSpotT1/T2, A1/A2).
    if material.sampling:
        t_spot = np.maximum(t_max * (0.813 + 0.0019 * z), 0.5)
        alpha_spot = alpha * (0.844 + 0.0026 * z)
    else:
        t_spot = t_max * (0.698 + 0.00212 * z)
        alpha_spot = alpha * (0.639 + 0.00334 * z)
    alpha_spot = np.maximum(alpha_spot, 1.05)
    beta_spot = (alpha_spot - 1) / t_spot
    a_bar = np.maximum(np.exp(mu_a), 1.1)  # <alpha> -> 1 only far below the parameterisation's range
    # Geant4 ComputeTau: tau = t / T_i * (alpha_i - 1) / alpha_i * <alpha> / (<alpha> - 1), i.e. depth
    # measured in units of the shower's own centre of gravity, rescaled to the average T.
    tau_scale = (alpha - 1) / alpha / t_max * a_bar / (a_bar - 1)
    return ShowerParameters(t_max, alpha, beta, t_spot, alpha_spot, beta_spot, tau_scale)


def n_spots(material: CalorimeterMaterial, energy_mev: F64) -> F64:
    """Mean number of energy spots per shower (not rounded).

    Homogeneous (G&P, energy spots): N = 93 ln(Z) E^0.876; sampling (ParsSpotN1/N2):
    N = 10.3 / a E^0.959 with a the stochastic sampling term, E in GeV.
    """
    e_gev = np.asarray(energy_mev, dtype=np.float64) / 1000.0
    if material.sampling:
        return 10.3 / material.sampling_resolution * e_gev**0.959
    return 93.0 * np.log(material.z_eff) * e_gev**0.876


def radial_parameters(
    material: CalorimeterMaterial,
    energy_mev: F64 | float,
    tau: NDArray[np.floating],
    shower: NDArray[np.int64] | None = None,
    tuning: GFlashTuning = NO_TUNING,
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.floating]]:
    """(R_C, R_T, p) of the two-component radial profile at reduced depth tau (G&P, radial profiles;
    PRM "Radial Shower Profiles"; constants of Geant4's GFlash tuning classes).

    f(r) = p 2 r R_C^2 / (r^2 + R_C^2)^2 + (1 - p) 2 r R_T^2 / (r^2 + R_T^2)^2, r in Moliere radii, with
    R_C = z1 + z2 tau, z1 = 0.0251 + 0.00319 ln E, z2 = 0.1162 - 0.000381 Z;
    R_T = k1 [exp(k3 (tau - k2)) + exp(k4 (tau - k2))], k1 = 0.659 - 0.00309 Z, k2 = 0.645, k3 = -2.59,
    k4 = 0.3585 + 0.0412 ln E; p = p1 exp[(p2 - tau)/p3 - exp((p2 - tau)/p3)], p1 = 2.632 - 0.00094 Z,
    p2 = 0.401 + 0.00187 Z, p3 = 1.313 - 0.0686 ln E (E in GeV). Sampling adds
    R_C += -0.0203 (1 - ê) + 0.0397 / F_S exp(-tau), R_T += -0.14 (1 - ê) - 0.495 / F_S exp(-tau),
    p += (1 - ê) (0.348 - 0.642 / F_S exp(-(tau - 1)^2)).

    Args:
        material: the medium.
        energy_mev: incident energies in MeV; (N,) per shower when ``shower`` is given, else anything
            that broadcasts against ``tau``.
        tau: (M,) reduced depths; float32 in gives float32 out.
        shower: (M,) shower index of each tau, or None.
        tuning: scales R_C, R_T and p after the formulas above (identity by default).
    """
    z = material.z_eff
    ln_e = np.log(np.asarray(energy_mev, dtype=np.float64) / 1000.0)
    z1 = 0.0251 + 0.00319 * ln_e
    k4 = 0.3585 + 0.0412 * ln_e
    inv_p3 = 1.0 / (1.313 - 0.0686 * ln_e)
    dtype = np.asarray(tau).dtype if np.asarray(tau).dtype == np.float32 else np.float64
    z1, k4, inv_p3 = (np.asarray(c, dtype=dtype) for c in (z1, k4, inv_p3))
    if shower is not None:  # per-shower coefficients, gathered per spot
        z1, k4, inv_p3 = z1[shower], k4[shower], inv_p3[shower]
    k1, k2, k3 = 0.659 - 0.00309 * z, 0.645, -2.59
    p1, p2 = 2.632 - 0.00094 * z, 0.401 + 0.00187 * z
    r_core = z1 + (0.1162 - 0.000381 * z) * tau
    shifted = tau - k2
    r_tail = k1 * (np.exp(k3 * shifted) + np.exp(k4 * shifted))
    x = (p2 - tau) * inv_p3
    p = p1 * np.exp(x - np.exp(x))
    if material.sampling:
        one_minus_e, fs = 1.0 - material.ehat, material.fs
        e_tau = np.exp(-tau)
        r_core += -0.0203 * one_minus_e + (0.0397 / fs) * e_tau
        r_tail += -0.14 * one_minus_e - (0.495 / fs) * e_tau
        p += one_minus_e * (0.348 - (0.642 / fs) * np.exp(-((tau - 1) ** 2)))
    r_core, r_tail, p = np.maximum(r_core, 1e-3), np.maximum(r_tail, 1e-3), np.clip(p, 0.0, 1.0)
    if tuning.core_radius_scale != 1.0:
        r_core *= np.asarray(tuning.core_radius_scale, dtype=r_core.dtype)
    if tuning.tail_radius_scale != 1.0:
        r_tail *= np.asarray(tuning.tail_radius_scale, dtype=r_tail.dtype)
    if tuning.core_fraction_scale != 1.0:
        p = np.clip(p * np.asarray(tuning.core_fraction_scale, dtype=p.dtype), 0.0, 1.0)
    return r_core, r_tail, p
