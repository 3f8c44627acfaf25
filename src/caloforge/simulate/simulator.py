"""The GFlash shower simulator: conditions in, ``ShowerSet`` out.

One shower (G&P hep-ex/0001020; Geant4 ``GFlashShowerModel``, ``GFlashHitMaker``):

1. draw its longitudinal parameters (T, alpha) with their correlated fluctuations
   (``gflash.sample_shower_parameters``);
2. draw N_spot spot depths from the *spot* profile and give each spot the energy the *energy* profile
   puts there: spot i carries E w_i / sum(w), w_i = f_energy(t_i) / f_spot(t_i). This is the
   continuous-step limit of GFlash, which fills each longitudinal step with dE_step / dN_step per spot;
   the mean profile is exactly E f_energy(t);
3. draw each spot's radius from the core/tail mixture at its reduced depth tau
   (``gflash.radial_parameters``; inverse CDF r = R sqrt(u / (1 - u)) per component) and a uniform azimuth;
4. sampling media: the visible energy is the sampling fraction times the deposit, and each spot's
   visible energy fluctuates by a Gamma factor of mean 1 whose variance is chosen so the shower's
   visible sum has sigma/E = a / sqrt(E/GeV) (G&P, sampling calorimeters; Geant4 ``ApplySampling`` draws
   a Gamma per step the same way);
5. place the spots along the incident direction (theta, phi; ``caloforge.data.incident_direction``)
   starting at the readout origin (or ``upstream_x0`` radiation lengths before it, for a medium with
   material in front of its readout), bin them (``deposit.deposit``) and zero the cells under the
   readout threshold. Whatever leaves the readout (or stays upstream) is lost.

Spot count and speed: GFlash's N_spot reaches ~1e5 at 1 TeV. Above ``GFlashConfig.max_spots`` the
simulator uses that many spots, each carrying proportionally more energy (the usual fast-simulation
trade of fluctuation fidelity for speed: fewer, heavier spots). Means and the total-energy resolution
are unchanged (step 2 normalises, step 4 uses the actual spot weights); voxel-to-voxel fluctuations at
the highest energies are larger than GFlash's, roughly by sqrt(N_spot / max_spots), and fewer cells
are hit. With the default cap (4000) this concerns SiW showers above ~35 GeV, SciPb above ~67 GeV and PbWO4
above ~14 GeV.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import DTypeLike, NDArray

from caloforge.data import ShowerSet, incident_direction
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry
from caloforge.simulate.deposit import VoxelMap, deposit
from caloforge.simulate.gflash import (
    GFlashTuning,
    ShowerParameters,
    n_spots,
    radial_parameters,
    sample_shower_parameters,
)
from caloforge.simulate.materials import CalorimeterMaterial, get_material
from caloforge.spectra import Spectrum, parse_spectrum

__all__ = ["GFlashConfig", "simulate", "simulate_to_file"]

F64 = NDArray[np.float64]
DEFAULT_CHUNK = 256  # showers whose parameters are drawn at once
SPOT_BATCH = 65536  # spots drawn at once (~10 MB of temporaries)


@dataclass(frozen=True)
class GFlashConfig:
    """Settings of the GFlash simulator (load from YAML with ``caloforge.config.from_dict``).

    Args:
        threshold_mev: per-cell readout threshold in MeV (cells below read 0); None takes the
            material's default (SiW: 15.15 keV as in the CaloChallenge, others 0).
        spot_multiplier: scales GFlash's N_spot (more spots: smoother showers).
        max_spots: cap on spots per shower (see the module doc for what it costs).
        sampling_fluctuations: apply the stochastic sampling term in sampling media.
        radial_scale: multiplies every radius; != 1 deliberately distorts the showers (validation).
        longitudinal_scale: multiplies every depth; != 1 deliberately distorts the showers.
        material: simulate this medium instead of ``geometry.material`` (a key of ``MATERIALS``).
        tuning: adjustments of the parameterisation (``GFlashTuning``; a ``tuning:`` section in YAML),
            e.g. fitted to a full simulation by ``caloforge fit-gflash``; the defaults change nothing.
    """

    threshold_mev: float | None = None
    spot_multiplier: float = 1.0
    max_spots: int = 4000
    sampling_fluctuations: bool = True
    radial_scale: float = 1.0
    longitudinal_scale: float = 1.0
    material: str | None = None
    tuning: GFlashTuning = field(default_factory=GFlashTuning)

    def __post_init__(self) -> None:
        for name in ("spot_multiplier", "radial_scale", "longitudinal_scale"):
            if not getattr(self, name) > 0:
                raise InputError(None, name, f"is {getattr(self, name)}", "a number > 0")
        if self.max_spots < 1:
            raise InputError(None, "max_spots", f"is {self.max_spots}", "an integer >= 1")
        if self.threshold_mev is not None and self.threshold_mev < 0:
            raise InputError(None, "threshold_mev", f"is {self.threshold_mev}", "a threshold >= 0 MeV")

    def material_for(self, geometry: CylindricalGeometry) -> CalorimeterMaterial:
        return get_material(self.material or geometry.material)

    def threshold_for(self, material: CalorimeterMaterial) -> float:
        return material.threshold_mev if self.threshold_mev is None else self.threshold_mev

    def sampling_fraction_for(self, material: CalorimeterMaterial) -> float:
        """Visible fraction of the deposit: the tuning's, else the medium's."""
        fraction = self.tuning.sampling_fraction
        return material.sampling_fraction if fraction is None else fraction

    def sampling_resolution_for(self, material: CalorimeterMaterial) -> float:
        """Stochastic term a of the visible energy (0: no sampling fluctuations)."""
        if not self.sampling_fluctuations:
            return 0.0
        if self.tuning.sampling_resolution is not None:
            return self.tuning.sampling_resolution
        return material.sampling_resolution if material.sampling else 0.0


def _as_condition(values: F64 | float | None, n: int, name: str, default: float) -> F64:
    if values is None:
        return np.full(n, default)
    array = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()
    if not np.all(np.isfinite(array)):
        raise InputError(None, name, "contains NaN or inf", "finite values in radians")
    return array


def _frame(theta: F64, phi: F64) -> tuple[F64, F64, F64]:
    """Shower axis d and two unit vectors u, v across it, each (n, 3), in the readout frame."""
    d = incident_direction(theta, phi)
    if np.any(d[:, 2] <= 1e-3):
        bad = int(np.argmin(d[:, 2]))
        raise InputError(
            None, "theta/phi", f"direction ({theta[bad]:.4g}, {phi[bad]:.4g}) does not enter the readout "
            "(its z component is <= 0)", "angles with sin(theta) cos(phi) > 0 (pi/2, 0 = normal incidence)",
        )
    # u is perpendicular to d in the x-z plane, v = d x u: a right-handed transverse frame.
    norm = np.hypot(d[:, 0], d[:, 2])
    u = np.stack([d[:, 2] / norm, np.zeros_like(norm), -d[:, 0] / norm], axis=1)
    v = np.cross(d, u)
    return d, u, v


def _simulate_chunk(
    vmap: VoxelMap,
    material: CalorimeterMaterial,
    config: GFlashConfig,
    energy: F64,
    theta: F64,
    phi: F64,
    rng: np.random.Generator,
    out: NDArray[np.floating],
) -> None:
    """Add one chunk of showers to ``out`` (n, n_voxels), zeroed, in MeV."""
    n = energy.shape[0]
    par = sample_shower_parameters(material, energy, rng, config.tuning)
    # Spot counts: GFlash mean, scaled and capped, rounded stochastically so the mean is kept.
    mean_spots = np.minimum(n_spots(material, energy) * config.spot_multiplier, config.max_spots)
    counts = np.maximum(np.floor(mean_spots + rng.random(n)).astype(np.int64), 1)
    # Work through the chunk in batches of ~SPOT_BATCH spots: numpy temporaries of that size stay in
    # the allocator's heap and in cache, which is several times faster than multi-MB arrays.
    ends = np.cumsum(counts)
    start = 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + SPOT_BATCH, side="right")))
        part = slice(start, stop)
        _add_spots(vmap, material, config, energy[part], theta[part], phi[part], par[part],
                   counts[part], rng, out[part])
        start = stop


def _gamma_per_shower(rng: np.random.Generator, shape: F64, counts: NDArray[np.int64]) -> F64:
    """Standard Gamma draws, ``counts[i]`` of them with shape ``shape[i]``, concatenated.

    One scalar-shape call per shower is ~25 % faster than numpy's per-element shape broadcasting.
    """
    out = np.empty(int(counts.sum()))
    start = 0
    for a, size in zip(shape.tolist(), counts.tolist(), strict=True):
        rng.standard_gamma(a, size, out=out[start:start + size])
        start += size
    return out


def _add_spots(
    vmap: VoxelMap,
    material: CalorimeterMaterial,
    config: GFlashConfig,
    energy: F64,
    theta: F64,
    phi: F64,
    par: ShowerParameters,
    counts: NDArray[np.int64],
    rng: np.random.Generator,
    out: NDArray[np.floating],
) -> None:
    """Draw the spots of a few showers and add them to ``out`` (n, n_voxels) in place."""
    n = energy.shape[0]
    shower = np.repeat(np.arange(n), counts)
    m = shower.shape[0]

    # Depths from the spot profile, energies from the energy profile (importance weights).
    t = np.maximum(_gamma_per_shower(rng, par.alpha_spot, counts) / par.beta_spot[shower], 1e-12)
    # w = f_energy(t) / f_spot(t) up to a per-shower constant, which the normalisation below removes:
    # log w = (alpha - alpha_spot) ln t - (beta - beta_spot) t, taken relative to its value at the spot
    # profile's mean depth so that exp() stays far from overflow.
    d_alpha, d_beta = par.alpha - par.alpha_spot, par.beta - par.beta_spot
    t_ref = par.alpha_spot / par.beta_spot
    ref = d_alpha * np.log(t_ref) - d_beta * t_ref
    log_w = d_alpha[shower] * np.log(t) - d_beta[shower] * t - ref[shower]
    w = np.exp(np.minimum(log_w, 600.0))
    w_sum = np.bincount(shower, weights=w, minlength=n)
    spot_energy = w * (energy * config.sampling_fraction_for(material) / w_sum)[shower]

    resolution = config.sampling_resolution_for(material)
    if resolution > 0:
        # Relative variance of the visible sum: a^2 / E[GeV] = (1/k) sum w^2 / (sum w)^2 for a Gamma(k, 1/k)
        # factor per spot, so k = sum w^2 / ((sum w)^2 a^2 / E[GeV]).
        w2_sum = np.bincount(shower, weights=w * w, minlength=n)
        k = w2_sum / (w_sum**2 * resolution**2 / (energy / 1000.0))
        spot_energy *= _gamma_per_shower(rng, k, counts) / k[shower]

    # Radial position: core or tail at the spot's reduced depth, in Moliere radii -> mm.
    # float32 from here on: radii and angles need no more, and it halves the memory traffic.
    tau = (t * par.tau_scale[shower]).astype(np.float32)
    r_core, r_tail, p_core = radial_parameters(material, energy, tau, shower, config.tuning)
    radius = np.where(rng.random(m, dtype=np.float32) < p_core, r_core, r_tail)
    u = rng.random(m, dtype=np.float32)
    r = radius * np.sqrt(u / (1.0 - u)) * np.float32(material.moliere_mm * config.radial_scale)
    azimuth = rng.random(m, dtype=np.float32)  # fraction of a turn, uniform (G&P ansatz: f(phi) = 1 / 2 pi)
    # Depth from the readout's front face: a medium with material upstream (``upstream_x0``) starts the
    # shower that far before it, and spots there (z < 0) are lost like any leakage.
    depth = (t - material.upstream_x0) * (material.x0_mm * config.longitudinal_scale)

    if np.all(theta == math.pi / 2) and np.all(phi == 0.0):
        # Axis along z: the spot's own azimuth is the readout alpha, its radius the readout r.
        deposit(vmap, shower, r, azimuth, depth, spot_energy, out)
        return
    d, u_hat, v_hat = _frame(theta, phi)
    angle = 2 * math.pi * azimuth
    a, b = r * np.cos(angle), r * np.sin(angle)
    x, y, z = (depth * d[shower, i] + a * u_hat[shower, i] + b * v_hat[shower, i] for i in range(3))
    alpha_frac = (np.arctan2(y, x) + math.pi) / (2 * math.pi)
    deposit(vmap, shower, np.hypot(x, y), alpha_frac, z, spot_energy, out)


def simulate(
    geometry: CylindricalGeometry,
    energy_mev: F64 | list[float],
    theta: F64 | float | None = None,
    phi: F64 | float | None = None,
    *,
    config: GFlashConfig | None = None,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    dtype: type[np.floating] = np.float32,
) -> ShowerSet:
    """Simulate one electron shower per entry of ``energy_mev`` in ``geometry``.

    Args:
        geometry: any readout; its ``material`` (or ``config.material``) picks the medium.
        energy_mev: (N,) incident energies in MeV.
        theta, phi: (N,) or scalar incident angles in radians (readout frame of ``caloforge.data``);
            None = normal incidence (pi/2, 0), and the set then records no angles.
        config: simulator settings.
        seed: seeds a fresh ``numpy.random.Generator`` when ``rng`` is not given.
        rng: generator to draw from (advanced in place).
        chunk_size: showers whose parameters are drawn at once; spots are drawn ~65k at a time, so
            memory beyond the result (N x n_voxels float32) stays ~10 MB. Same seed and chunk_size give
            the same showers.
        dtype: float type of the returned showers.

    Returns:
        ``ShowerSet`` of (N, n_voxels) visible energies in MeV with the conditions, source "gflash".
    """
    config = config or GFlashConfig()
    energy = np.asarray(energy_mev, dtype=np.float64).reshape(-1)
    if energy.size and not (np.all(np.isfinite(energy)) and np.all(energy > 0)):
        raise InputError(None, "energy", "has values that are not finite and > 0", "energies > 0 MeV")
    rng = rng if rng is not None else np.random.default_rng(seed)
    n = energy.shape[0]
    theta_all = _as_condition(theta, n, "theta", math.pi / 2)
    phi_all = _as_condition(phi, n, "phi", 0.0)
    if chunk_size < 1:
        raise InputError(None, "chunk_size", f"is {chunk_size}", "an integer >= 1")
    material = config.material_for(geometry)
    threshold = config.threshold_for(material)
    vmap = VoxelMap.of(geometry)
    # Spots are added straight into the result (float32 unless float64 is asked for): no per-chunk
    # buffers, no concatenation; float32 sums of <= max_spots deposits lose < 1e-6 relative.
    accumulate = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    showers = np.zeros((n, geometry.n_voxels), dtype=accumulate)
    for start in range(0, n, chunk_size):
        part = slice(start, start + chunk_size)
        out = showers[part]
        _simulate_chunk(vmap, material, config, energy[part], theta_all[part], phi_all[part], rng, out)
        if threshold > 0:
            out[out < threshold] = 0.0
    return ShowerSet(
        showers=showers.astype(dtype, copy=False), geometry=geometry, energy=energy,
        theta=None if theta is None else theta_all, phi=None if phi is None else phi_all, source="gflash",
    )


def simulate_to_file(
    path: str | os.PathLike[str],
    geometry: CylindricalGeometry | str,
    n: int,
    energy_spec: Spectrum | str,
    theta_spec: Spectrum | str | None = None,
    phi_spec: Spectrum | str | None = None,
    *,
    config: GFlashConfig | None = None,
    seed: int = 0,
    format: str = "calochallenge",
    dtype: DTypeLike = np.float32,
    progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    compression: str | None = None,
    detector: int | None = None,
) -> None:
    """Simulate ``n`` showers with conditions drawn from spectra and write them, chunk by chunk.

    Memory stays at one chunk whatever ``n`` is; the file appears atomically when all are written
    (``caloforge.io.ShowerWriter``). Each condition and the showers draw from their own stream spawned
    from ``seed`` (``SeedSequence(seed).spawn(4)``: energy, theta, phi, showers), so the conditions do not
    depend on ``chunk_size``.

    Args:
        path: output HDF5 file.
        geometry: readout (or preset name).
        n: number of showers; 0 writes a well-formed file that holds none (``caloforge info`` says so;
            ``read_showers``, training and evaluation refuse it).
        energy_spec, theta_spec, phi_spec: spectra (``caloforge.spectra``) in MeV and radians; angles
            left None are normal incidence and are not written.
        config: simulator settings.
        seed: seed of everything random.
        format: ``"calochallenge"`` or ``"par04"``.
        dtype: storage dtype of the showers (float16, float32, float64).
        progress: show progress on stderr (``caloforge.progress``: a bar on a terminal, a few lines
            in a log).
        chunk_size: showers per chunk.
        compression: HDF5 filter for the showers (``"gzip"``, ``"lzf"`` or None).
        detector: detector index written with every shower (the ``detector`` condition of a multi-detector
            training set, e.g. one file per medium on one readout); None writes none.
    """
    from caloforge.geometry import get_geometry
    from caloforge.io import ShowerWriter
    from caloforge.progress import progress_bar

    if n < 0:
        raise InputError(None, "n", f"is {n}", "a number of showers >= 0")
    if detector is not None and detector < 0:
        raise InputError(None, "detector", f"is {detector}", "a detector index >= 0")
    geometry = get_geometry(geometry) if isinstance(geometry, str) else geometry
    config = config or GFlashConfig()
    medium = config.material_for(geometry).name  # an unknown medium fails before the file is opened
    energy = (parse_spectrum(energy_spec, "energy", positive=True) if isinstance(energy_spec, str)
              else energy_spec)
    theta = parse_spectrum(theta_spec, "theta") if isinstance(theta_spec, str) else theta_spec
    phi = parse_spectrum(phi_spec, "phi") if isinstance(phi_spec, str) else phi_spec
    # One stream per condition and one for the showers: each is consumed in order, so the conditions do
    # not depend on the chunking.
    energy_rng, theta_rng, phi_rng, shower_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    conditions = (("energy",) + (("theta",) if theta else ()) + (("phi",) if phi else ())
                  + (("detector",) if detector is not None else ()))
    with ShowerWriter(path, geometry, format=format, dtype=dtype, conditions=conditions, expected_n=n,
                      compression=compression,
                      medium=None if medium == geometry.material else medium) as writer, progress_bar(
        n, "simulate", unit="shower", enabled=progress,
    ) as bar:
        for start in range(0, n, chunk_size):
            size = min(chunk_size, n - start)
            e = energy.sample(size, energy_rng)
            th = None if theta is None else theta.sample(size, theta_rng)
            ph = None if phi is None else phi.sample(size, phi_rng)
            showers = simulate(geometry, e, th, ph, config=config, rng=shower_rng, chunk_size=size,
                               dtype=np.float64 if np.dtype(dtype) == np.float64 else np.float32)
            if detector is not None:
                showers = dataclasses.replace(showers, detector=np.full(size, detector, dtype=np.int64))
            writer.append(showers)
            bar.update(size)
