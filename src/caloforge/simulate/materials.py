"""Calorimeter media for the GFlash simulator: pure substances and the homogeneous or sampling stacks
built from them.

Constants of pure substances are the PDG's "Atomic and Nuclear Properties of Materials"
(pdg.lbl.gov/AtomicNuclearProperties; R. L. Workman et al., PTEP 2022, 083C01): radiation length X0,
critical energy E_c for electrons (Rossi definition as tabulated there), density, minimum ionisation
dE/dx. The Moliere radius is the PDG's R_M = X0 E_s / E_c with E_s = 21.2052 MeV (Review of Particle
Physics, "Passage of particles through matter", sec. on EM cascades), which reproduces the tabulated
R_M (W: 9.327 mm, PbWO4: 19.59 mm).

Sampling stacks follow Grindhammer & Peters (hep-ex/0001020, section on sampling calorimeters) as
implemented in Geant4's ``GFlashSamplingShowerParameterisation::ComputeZAX0EFFetc``: mass-weighted
effective Z, an effective X0 and E_c from the weighted inverse lengths, the sampling frequency
F_S = X0_eff / (d_passive + d_active) and the e/mip ratio ê = 1 / (1 + 0.007 (Z_passive - Z_active)).
A layer's other slices (glue, circuit boards, air gaps) are ``inert``: they count as passive material
(mass-weighted into Z_passive) and are not read out.

The media with several slices per layer stand in for the calorimeters a multi-detector model is pre-trained
on (``MATERIALS``): the Open Data Detector's W/Si ECal and FCC-ee ALLEGRO's Pb/LAr ECal, each read on the
same readout as the others, so that the detector index is the only thing telling them apart. FCC-ee CLD's
ECal barrel (k4geo ``FCCee/CLD/compact/CLD_o2_v07/ECalBarrel_o2_v01_03.xml``) has exactly the ODD's eight
slices per layer (40 layers instead of 48, both deeper than the dataset-2 readout), so as a GFlash medium it
is the ``ODD`` medium: one entry serves both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from caloforge.errors import UnknownNameError

__all__ = [
    "ES_MEV",
    "MATERIALS",
    "SUBSTANCES",
    "CalorimeterMaterial",
    "Substance",
    "get_material",
    "sampling_stack",
]

ES_MEV = 21.2052  # multiple-scattering energy scale E_s = m_e sqrt(4 pi / alpha) (PDG)


@dataclass(frozen=True)
class Substance:
    """A pure element or compound (PDG Atomic and Nuclear Properties).

    Args:
        name: label.
        z: (effective) atomic number; for compounds the mass-weighted mean, as Geant4's GFlash
            ``GetEffZ`` computes it.
        a: (effective) mass number in g/mol, mass-weighted likewise.
        density: g/cm^3.
        x0_mm: radiation length in mm.
        ec_mev: critical energy for electrons in MeV.
        dedx_mip: minimum ionisation loss in MeV cm^2/g.
    """

    name: str
    z: float
    a: float
    density: float
    x0_mm: float
    ec_mev: float
    dedx_mip: float

    @property
    def moliere_mm(self) -> float:
        """Moliere radius R_M = X0 E_s / E_c in mm."""
        return self.x0_mm * ES_MEV / self.ec_mev


def _mass_weighted(parts: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(Z_eff, A_eff) of a compound from (Z, A, atoms per formula unit), weighted by mass fraction."""
    mass = sum(a * n for _, a, n in parts)
    return sum(z * a * n for z, a, n in parts) / mass, sum(a * a * n for _, a, n in parts) / mass


_PBWO4_Z, _PBWO4_A = _mass_weighted([(82, 207.2, 1), (74, 183.84, 1), (8, 15.999, 4)])
_PS_Z, _PS_A = _mass_weighted([(6, 12.011, 8), (1, 1.008, 8)])  # polystyrene (C8H8)n
_G10_Z, _G10_A = _mass_weighted([(14, 28.0855, 1), (8, 15.999, 2), (6, 12.011, 3), (1, 1.008, 3)])

# PDG Atomic and Nuclear Properties (density g/cm3, X0 in cm -> mm, E_c(e-) MeV, <dE/dx>_min MeV cm2/g).
SUBSTANCES: dict[str, Substance] = {
    s.name: s
    for s in [
        Substance("W", 74.0, 183.84, 19.30, 3.504, 7.97, 1.145),
        Substance("Si", 14.0, 28.0855, 2.329, 93.70, 40.19, 1.664),
        Substance("Pb", 82.0, 207.2, 11.35, 5.612, 7.43, 1.122),
        Substance("Polystyrene", _PS_Z, _PS_A, 1.060, 413.1, 93.11, 1.936),
        Substance("LAr", 18.0, 39.948, 1.396, 140.0, 32.84, 1.508),
        Substance("PbWO4", _PBWO4_Z, _PBWO4_A, 8.300, 8.903, 9.64, 1.229),
        Substance("Fe", 26.0, 55.845, 7.874, 17.57, 21.68, 1.451),
        Substance("Air", 7.3, 14.6, 1.205e-3, 303900.0, 87.92, 1.815),
        # G10 glass-epoxy laminate: composition as Geant4 and DD4hep define it (SiO2 + C3H3 per unit);
        # density, X0 (33.0 g/cm2) and dE/dx from the PDG's table of detector materials ("G10 plate");
        # E_c from the PDG's solid-medium fit 610 MeV / (Z + 1.24), an estimate. Printed circuit boards,
        # glue and the ground/HV foils of the layer stacks below are taken as G10 (a few % of a layer's X0).
        Substance("G10", _G10_Z, _G10_A, 1.700, 194.1, 610.0 / (_G10_Z + 1.24), 1.87),
    ]
}


@dataclass(frozen=True)
class CalorimeterMaterial:
    """The medium a shower develops in, as the GFlash parameterisation sees it.

    Args:
        name: key in ``MATERIALS`` (what ``CylindricalGeometry.material`` names).
        z_eff: effective atomic number Z.
        x0_mm: (effective) radiation length in mm; depth t in X0 is mm / x0_mm.
        moliere_mm: (effective) Moliere radius in mm; radial profiles are in these units.
        ec_mev: (effective) critical energy in MeV; y = E / E_c.
        density: (effective) density in g/cm^3.
        sampling: True for a sampling stack (G&P sampling corrections apply).
        fs: sampling frequency F_S = X0_eff / (d_p + d_a) (sampling only; 0 for homogeneous).
        ehat: e/mip ratio ê (1 for homogeneous).
        sampling_fraction: visible fraction of the deposited energy for electrons, ê x f_mip
            (1 for homogeneous).
        sampling_resolution: stochastic term a of sigma/E = a / sqrt(E / GeV) (0 for homogeneous).
        threshold_mev: default per-cell readout threshold in MeV.
        upstream_x0: material in front of the readout's first layer, in X0 of this medium: the shower
            starts developing there, and what it deposits there is not read out (ATLAS: inner detector,
            solenoid and cryostat in front of the presampler).
        description: one line for people.
    """

    name: str
    z_eff: float
    x0_mm: float
    moliere_mm: float
    ec_mev: float
    density: float
    sampling: bool = False
    fs: float = 0.0
    ehat: float = 1.0
    sampling_fraction: float = 1.0
    sampling_resolution: float = 0.0
    threshold_mev: float = 0.0
    upstream_x0: float = 0.0
    description: str = ""


def homogeneous(name: str, substance: Substance, threshold_mev: float = 0.0, description: str = "") -> (
    CalorimeterMaterial
):
    """A homogeneous medium: every deposit is visible, no sampling fluctuations."""
    return CalorimeterMaterial(
        name, substance.z, substance.x0_mm, substance.moliere_mm, substance.ec_mev, substance.density,
        threshold_mev=threshold_mev, description=description,
    )


def sampling_stack(
    name: str,
    passive: Substance,
    d_passive_mm: float,
    active: Substance,
    d_active_mm: float,
    threshold_mev: float = 0.0,
    description: str = "",
    upstream_x0: float = 0.0,
    inert: tuple[tuple[Substance, float], ...] = (),
) -> CalorimeterMaterial:
    """Effective medium of a passive/active stack (G&P, sampling calorimeters; Geant4 ``ComputeZAX0EFFetc``).

    ``inert`` lists a layer's other slices as (substance, thickness in mm): passive material that is not
    read out. The visible fraction for electrons is ê x f_mip, f_mip = d_a S_a / (d_a S_a + sum d_p S_p)
    with S the minimum-ionisation loss per length (G&P: e/mip = ê). The stochastic resolution uses the
    PDG review "Calorimetry" estimate for EM sampling calorimeters, a = 2.7 % sqrt(d_a[mm] / f_mip).
    """
    passive_slices = ((passive, d_passive_mm), *inert)
    slices = (*passive_slices, (active, d_active_mm))
    masses = [d * s.density for s, d in slices]
    total_mass, depth = sum(masses), sum(d for _, d in slices)
    weights = [m / total_mass for m in masses]
    rho = total_mass / depth
    x0 = 1.0 / sum(w * rho / (s.x0_mm * s.density) for w, (s, _) in zip(weights, slices, strict=True))
    ec_over_x0 = sum(w * s.ec_mev / s.x0_mm for w, (s, _) in zip(weights, slices, strict=True))  # MeV / mm
    passive_mass = sum(masses[:-1])
    z_passive = sum(m * s.z for m, (s, _) in zip(masses, passive_slices, strict=False)) / passive_mass
    ehat = 1.0 / (1.0 + 0.007 * (z_passive - active.z))
    loss_p = sum(d * s.density * s.dedx_mip for s, d in passive_slices)
    loss_a = d_active_mm * active.density * active.dedx_mip
    f_mip = loss_a / (loss_a + loss_p)
    return CalorimeterMaterial(
        name=name,
        z_eff=sum(w * s.z for w, (s, _) in zip(weights, slices, strict=True)),
        x0_mm=x0,
        moliere_mm=ES_MEV / ec_over_x0,
        ec_mev=x0 * ec_over_x0,
        density=rho,
        sampling=True,
        fs=x0 / depth,
        ehat=ehat,
        sampling_fraction=ehat * f_mip,
        sampling_resolution=0.027 * math.sqrt(d_active_mm / f_mip),
        threshold_mev=threshold_mev,
        upstream_x0=upstream_x0,
        description=description,
    )


S = SUBSTANCES
MATERIALS: dict[str, CalorimeterMaterial] = {
    m.name: m
    for m in [
        # Par04 SiW (CaloChallenge datasets 2 and 3): 1.4 mm W + 0.3 mm Si, Si read out; 15.15 keV cell
        # threshold (CaloChallenge README).
        sampling_stack("SiW", S["W"], 1.4, S["Si"], 0.3, threshold_mev=0.01515,
                       description="Par04 SiW: 1.4 mm W + 0.3 mm Si (Si read out)"),
        # Par04 SciPb (its training-data macro): 4.4 mm Pb + 1.2 mm polystyrene, scintillator read out.
        sampling_stack("SciPb", S["Pb"], 4.4, S["Polystyrene"], 1.2,
                       description="Par04 SciPb: 4.4 mm Pb + 1.2 mm polystyrene (scintillator read out)"),
        homogeneous("PbWO4", S["PbWO4"], description="lead tungstate crystals (homogeneous)"),
        # CaloChallenge dataset 1 (ATLAS barrel, 0.2 < |eta| < 0.25), simulated as ONE effective medium:
        # the EM barrel's accordion, 1.53 mm Pb absorbers (|eta| < 0.8) and 2 x 2.1 mm LAr gaps (ATLAS
        # detector paper, JINST 3 (2008) S08003, sec. 5.2.2). Its layer depths are given in mm of this
        # medium, equivalent to each layer's published thickness in X0 (``caloforge.geometry``,
        # ``ATLAS_DATASET1_X0``), so the Tile layers are approximated by Pb/LAr of the same X0. About 2 X0
        # of inner detector, solenoid and cryostat lie in front of the presampler at |eta| ~ 0.2 (same paper,
        # material-budget figures of sec. 5.2; a round approximation), x cosh(0.225) for the path length.
        sampling_stack("ATLAS", S["Pb"], 1.53, S["LAr"], 4.2, upstream_x0=2.0 * math.cosh(0.225),
                       description="ATLAS barrel (CaloChallenge dataset 1): Pb/LAr accordion, 1.53 mm Pb + "
                       "4.2 mm LAr, ~2 X0 upstream"),
        # Open Data Detector ECal (acts-project/OpenDataDetector, xml/OpenDataECal.xml; the same slices as
        # FCC-ee CLD's ECal barrel, module doc): per layer 1.9 mm W, 0.15 G10, 0.10 ground/HV foil,
        # 0.50 Si (read out), 0.10 air, 1.30 PCB, 0.25 air, 0.75 G10; 5.05 mm pitch.
        sampling_stack("ODD", S["W"], 1.9, S["Si"], 0.5,
                       inert=((S["G10"], 0.15), (S["G10"], 0.10), (S["Air"], 0.10), (S["G10"], 1.30),
                              (S["Air"], 0.25), (S["G10"], 0.75)),
                       description="Open Data Detector / FCC-ee CLD ECal: 1.9 mm W + 0.5 mm Si (read out) "
                       "+ 2.65 mm boards and gaps"),
        # FCC-ee ALLEGRO noble-liquid ECal barrel (k4geo FCCee/ALLEGRO/compact/ALLEGRO_o1_v03/
        # ECalBarrel_thetamodulemerged.xml): absorber plates of 1.8 mm Pb + 0.1 mm steel + 0.1 mm glue,
        # 2 x 1.246 mm LAr gaps (read out) around a 1.2 mm PCB electrode. The plates' 50 degree inclination
        # changes the path per plate, not the volume fractions an effective medium is made of.
        sampling_stack("ALLEGRO", S["Pb"], 1.8, S["LAr"], 2 * 1.246,
                       inert=((S["Fe"], 0.1), (S["G10"], 0.1), (S["G10"], 1.2)),
                       description="FCC-ee ALLEGRO ECal: 1.8 mm Pb + 0.1 mm steel + 0.1 mm glue, 2.49 mm "
                       "LAr (read out), 1.2 mm PCB"),
    ]
}
del S


def get_material(name: str) -> CalorimeterMaterial:
    """The medium called ``name`` (a key of ``MATERIALS``)."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise UnknownNameError("simulator material", name, MATERIALS.keys()) from None
