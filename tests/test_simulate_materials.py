"""Simulator media against hand-computed figures from the PDG tables."""

from __future__ import annotations

import math

import pytest

from caloforge.errors import UnknownNameError
from caloforge.simulate import MATERIALS, get_material
from caloforge.simulate.materials import SUBSTANCES


def test_moliere_radii_match_the_pdg_tables() -> None:
    # PDG Atomic and Nuclear Properties list R_M = 9.327 mm (W), 19.59 mm (PbWO4), 16.02 mm (Pb).
    assert SUBSTANCES["W"].moliere_mm == pytest.approx(9.327, rel=2e-3)
    assert SUBSTANCES["PbWO4"].moliere_mm == pytest.approx(19.59, rel=2e-3)
    assert SUBSTANCES["Pb"].moliere_mm == pytest.approx(16.02, rel=2e-3)


def test_pbwo4_effective_z_is_mass_weighted() -> None:
    # Mass fractions of PbWO4 (455.04 g/mol): Pb 207.2, W 183.84, O 4 x 16.00.
    z = (207.2 * 82 + 183.84 * 74 + 64.0 * 8) / (207.2 + 183.84 + 64.0)
    assert get_material("PbWO4").z_eff == pytest.approx(z, rel=1e-3)
    assert get_material("PbWO4").sampling_fraction == 1.0 and not get_material("PbWO4").sampling


def test_siw_stack_by_hand() -> None:
    # 1.4 mm W (19.30 g/cm3, X0 = 6.76 g/cm2) + 0.3 mm Si (2.329 g/cm3, X0 = 21.82 g/cm2).
    mass_w, mass_si = 1.4 * 19.30, 0.3 * 2.329
    w_w, w_si = mass_w / (mass_w + mass_si), mass_si / (mass_w + mass_si)
    x0_g = 1 / (w_w / 6.76 + w_si / 21.82)  # PDG mixture rule, g/cm2
    rho = (mass_w + mass_si) / 1.7
    x0_mm = 10 * x0_g / rho
    siw = get_material("SiW")
    assert siw.x0_mm == pytest.approx(x0_mm, rel=3e-3)
    # One CaloChallenge readout layer (3.4 mm) is ~0.8 X0 (REFERENCE: 2 x 1.4 mm W = 0.80 X0(W)).
    assert 3.4 / siw.x0_mm == pytest.approx(0.8, abs=0.01)
    assert siw.z_eff == pytest.approx(w_w * 74 + w_si * 14, rel=1e-6)
    assert siw.fs == pytest.approx(siw.x0_mm / 1.7)
    assert siw.ehat == pytest.approx(1 / 1.42)
    assert siw.threshold_mev == pytest.approx(0.01515)  # CaloChallenge cell threshold, 15.15 keV


def test_scipb_sampling_fraction_by_hand() -> None:
    # 4.4 mm Pb (1.122 MeV cm2/g) + 1.2 mm polystyrene (1.936 MeV cm2/g, 1.060 g/cm3).
    loss_pb, loss_sci = 0.44 * 11.35 * 1.122, 0.12 * 1.060 * 1.936
    f_mip = loss_sci / (loss_sci + loss_pb)
    z_poly = (8 * 12.011 * 6 + 8 * 1.008 * 1) / (8 * 12.011 + 8 * 1.008)
    scipb = get_material("SciPb")
    assert scipb.sampling_fraction == pytest.approx(f_mip / (1 + 0.007 * (82 - z_poly)), rel=1e-4)
    assert scipb.sampling_resolution == pytest.approx(0.027 * math.sqrt(1.2 / f_mip), rel=1e-4)


def test_unknown_and_atlas_media() -> None:
    assert set(MATERIALS) >= {"SiW", "SciPb", "PbWO4", "ATLAS"}  # ATLAS: tests/test_simulate_dataset1.py
    with pytest.raises(UnknownNameError, match="did you mean 'SiW'"):
        get_material("SiWW")


def test_layer_stacks_with_inert_slices_by_hand() -> None:
    # ODD ECal layer: 1.9 mm W, 0.5 mm Si read out, 2.30 mm G10-like boards and 0.35 mm air (5.05 mm).
    g10 = SUBSTANCES["G10"]
    assert g10.x0_mm / 10 * g10.density == pytest.approx(33.0, rel=1e-2)  # PDG: 33.0 g/cm2
    odd = get_material("ODD")
    masses = {"W": 1.9 * 19.30, "Si": 0.5 * 2.329, "G10": 2.30 * 1.70, "Air": 0.35 * 1.205e-3}
    rho = sum(masses.values()) / 5.05
    assert odd.density == pytest.approx(rho, rel=1e-6)
    assert odd.fs == pytest.approx(odd.x0_mm / 5.05)
    loss_si = 0.5 * 2.329 * 1.664
    loss_rest = 1.9 * 19.30 * 1.145 + 2.30 * 1.70 * 1.87 + 0.35 * 1.205e-3 * 1.815
    z_passive = (masses["W"] * 74 + masses["G10"] * g10.z + masses["Air"] * 7.3) / (
        masses["W"] + masses["G10"] + masses["Air"])
    ehat = 1 / (1 + 0.007 * (z_passive - 14))
    assert odd.sampling_fraction == pytest.approx(ehat * loss_si / (loss_si + loss_rest), rel=1e-6)
    # ALLEGRO's Pb/LAr: less dense and longer X0 than either W/Si medium, more visible than SiW.
    allegro, siw = get_material("ALLEGRO"), get_material("SiW")
    assert allegro.x0_mm > odd.x0_mm > siw.x0_mm
    assert allegro.sampling_fraction > odd.sampling_fraction > 0
    # Without inert slices the generalised stack is the two-slice one (SiW's test above still holds).
    assert {"ODD", "ALLEGRO"} <= set(MATERIALS)
