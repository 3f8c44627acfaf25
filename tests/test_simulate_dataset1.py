"""The GFlash simulator fills CaloChallenge dataset 1 (ATLAS barrel): depths from the published X0,
the effective Pb/LAr medium, upstream material, and ``caloforge simulate`` on the photon preset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from caloforge.geometry import ATLAS_DATASET1_X0, ATLAS_X0_MM, PRESETS
from caloforge.io import read_showers
from caloforge.simulate import get_material, simulate
from caloforge.simulate.materials import SUBSTANCES, sampling_stack

PHOTONS = PRESETS["calochallenge-1-photons"]
BARREL = [0, 1, 2, 3, 12, 13, 14]  # PreSamplerB, EMB1-3, TileBar0-2


def test_depths_are_the_published_radiation_lengths() -> None:
    atlas = get_material("ATLAS")
    assert atlas.x0_mm == pytest.approx(ATLAS_X0_MM, rel=1e-9)
    # the accordion: 1.53 mm Pb and 4.2 mm LAr, X0 between lead's and argon's, ~10 %/sqrt(E) resolution
    assert atlas == sampling_stack("ATLAS", SUBSTANCES["Pb"], 1.53, SUBSTANCES["LAr"], 4.2,
                                   upstream_x0=2.0 * math.cosh(0.225), description=atlas.description)
    assert 18.0 < atlas.x0_mm < 20.0 and atlas.sampling_resolution == pytest.approx(0.099, abs=0.002)
    for geometry in (PHOTONS, PRESETS["calochallenge-1-pions"]):
        x0 = np.asarray(geometry.layer_thickness_mm) / atlas.x0_mm / math.cosh(0.225)
        expected = [ATLAS_DATASET1_X0.get(i, 0.0) for i in range(24)]
        np.testing.assert_allclose(x0, expected, atol=1e-4)
        assert x0[1] == pytest.approx(4.3, abs=1e-3) and x0[2] == pytest.approx(16.0, abs=1e-3)
        assert sum(x0[1:4]) > 22  # the EM barrel's "> 22 X0"
        # every layer with voxels has a depth; slots off the barrel path have none
        assert all((geometry.layer_thickness_mm[i] > 0) == (i in BARREL) for i in range(24))
        assert all(geometry.layers[i].n_voxels == 0 for i in range(24) if i not in BARREL)


def test_photon_showers_fill_the_barrel_layers() -> None:
    energy = np.repeat([1e3, 1e4, 1e5], 30)
    result = simulate(PHOTONS, energy, seed=3)
    result.check()
    showers = result.showers.astype(np.float64)
    assert showers.shape == (90, 368) and (showers >= 0).all()
    offsets = PHOTONS.layer_offsets
    per_layer = np.stack([showers[:, offsets[i]:offsets[i + 1]].sum(1) for i in range(24)], 1)
    fraction = per_layer / energy[:, None]
    mean = {e: fraction[energy == e].mean(0) for e in (1e3, 1e4, 1e5)}
    visible = get_material("ATLAS").sampling_fraction
    for e, f in mean.items():
        # most of the visible energy is read out; some stays upstream or leaks
        assert 0.7 * visible < f.sum() < 1.02 * visible, (e, f.sum())
        assert f[2] > f[3] and f[2] > f[0]  # EMB2 (16 X0) holds more than the presampler and EMB3
    # the maximum moves deeper with energy: EMB1's share falls, EMB2's rises (GFlash T ~ ln E)
    assert mean[1e3][1] > mean[1e4][1] > mean[1e5][1]
    assert mean[1e3][2] < mean[1e4][2] < mean[1e5][2]
    # the shower starts ~2 X0 upstream, so the 0.08 X0 presampler sees it (it would not from t = 0)
    assert (fraction[:, 0] > 0).mean() > 0.5


def test_simulate_command_makes_dataset1_photon_files(run, tmp_path) -> None:
    out = tmp_path / "photons.h5"
    code, _, err = run("simulate", "-g", "calochallenge-1-photons", "--n", 12, "--energy",
                            "log-uniform:1000,100000", "--out", out)
    assert code == 0, err
    back = read_showers(out)
    assert back.geometry == PHOTONS and back.showers.shape == (12, 368)
    assert np.all(back.showers.sum(axis=1) > 0)
