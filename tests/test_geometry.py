"""Voxel ordering and reshapes, against indices worked out by hand from the binning XML files."""

import math

import numpy as np
import pytest

from caloforge.errors import InputError, UnknownNameError
from caloforge.geometry import PRESETS, CylindricalGeometry, LayerBinning, geometries_matching, get_geometry


def test_dataset2_sizes_and_hand_worked_index():
    g = get_geometry("calochallenge-2")
    assert (g.n_layers, g.n_alpha, g.n_radial, g.n_voxels) == (45, 16, 9, 6480)
    # layer 3, alpha 5, radial 2: 3 * (16 * 9) + 5 * 9 + 2 = 432 + 45 + 2
    assert g.flat_index(3, 5, 2) == 479
    assert g.flat_index(44, 15, 8) == 6479
    np.testing.assert_allclose(g.r_edges_mm, [0, 4.65, 9.3, 13.95, 18.6, 23.25, 27.9, 32.55, 37.2, 41.85])


def test_dataset3_sizes_and_hand_worked_index():
    g = get_geometry("calochallenge-3")
    assert (g.n_layers, g.n_alpha, g.n_radial, g.n_voxels) == (45, 50, 18, 40500)
    # layer 3, alpha 5, radial 2: 3 * 900 + 5 * 18 + 2
    assert g.flat_index(3, 5, 2) == 2792
    assert g.r_edges_mm[1] == pytest.approx(2.325)
    assert g.r_edges_mm[-1] == pytest.approx(41.85)


def test_dataset1_irregular_binning():
    photons = get_geometry("calochallenge-1-photons")
    pions = get_geometry("calochallenge-1-pions")
    assert photons.n_voxels == 368 and pions.n_voxels == 533
    assert not photons.is_regular
    # photons: layer 0 has 8 r x 1 alpha, layer 1 16 r x 10 alpha, so layer 2 starts at 8 + 160
    assert photons.flat_index(2, 0, 0) == 168
    # layer 12 starts after layers 0-3: 8 + 160 + 190 + 5
    assert photons.flat_index(12, 0, 4) == 363 + 4
    assert photons.layers[4].n_voxels == 0
    with pytest.raises(ValueError, match="regular"):
        photons.to_grid(np.zeros((1, 368)))


def test_every_preset_flat_index_matches_voxel_indices():
    for g in PRESETS.values():
        layer, alpha, radial = g.voxel_indices
        picks = np.linspace(0, g.n_voxels - 1, 25).astype(int)
        for i in picks:
            assert g.flat_index(int(layer[i]), int(alpha[i]), int(radial[i])) == i, g.name


@pytest.mark.parametrize("name", [n for n, g in PRESETS.items() if g.is_regular])
def test_grid_and_par04_round_trip(name):
    g = get_geometry(name)
    flat = np.arange(2 * g.n_voxels, dtype=np.float32).reshape(2, g.n_voxels)
    grid = g.to_grid(flat)
    assert grid[1, 3, 5, 2] == flat[1, g.flat_index(3, 5, 2)]
    par04 = g.to_par04(flat)
    assert par04.shape == (2, g.n_radial, g.n_alpha, g.n_layers)
    # Par04 (R, PHI, Z): element [r, phi, z] is voxel (layer z, alpha phi, radial r)
    assert par04[1, 2, 5, 3] == flat[1, g.flat_index(3, 5, 2)]
    # Par04's C++ reads the flat buffer with z fastest: index (r * Nphi + phi) * Nz + z
    buffer = par04[1].ravel()
    assert buffer[(2 * g.n_alpha + 5) * g.n_layers + 3] == flat[1, g.flat_index(3, 5, 2)]
    np.testing.assert_array_equal(g.from_par04(par04), flat)
    np.testing.assert_array_equal(g.from_grid(grid), flat)


def test_voxel_centres_follow_calochallenge_convention():
    g = get_geometry("calochallenge-2")
    c = g.voxel_centres
    i = g.flat_index(3, 5, 2)
    alpha = -math.pi + (5 + 0.5) * 2 * math.pi / 16
    r = 2.5 * 4.65
    assert c["alpha"][i] == pytest.approx(alpha)
    assert c["r"][i] == pytest.approx(r)
    assert c["x"][i] == pytest.approx(r * math.cos(alpha))
    assert c["y"][i] == pytest.approx(r * math.sin(alpha))
    assert c["z"][i] == pytest.approx(3.5 * 3.4)
    photons = get_geometry("calochallenge-1-photons")
    assert photons.voxel_centres["alpha"][0] == pytest.approx(0.0)  # one alpha bin: centred at 0


def test_serialisation_round_trip():
    for g in PRESETS.values():
        assert CylindricalGeometry.from_dict(g.to_dict()) == g


def test_unknown_preset_suggests_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'calochallenge-2'"):
        get_geometry("calochalenge-2")


def test_matching_by_voxel_count():
    assert [g.name for g in geometries_matching(6480)] == ["calochallenge-2"]
    assert geometries_matching(12345) == []


def test_bad_shapes_are_named():
    g = get_geometry("calochallenge-2")
    with pytest.raises(InputError, match="6480"):
        g.to_grid(np.zeros((2, 100)))
    with pytest.raises(ValueError):
        LayerBinning((0.0, 5.0, 3.0), 4)
    with pytest.raises(IndexError):
        g.flat_index(0, 16, 0)


@pytest.mark.parametrize(
    ("name", "shape", "edge_mm", "depth_mm", "material", "index_352", "last"),
    [
        # (n_layers, n_alpha, n_radial); layer 3, alpha 5, radial 2 worked out by hand below
        ("par04-siw", (45, 50, 18), 2.325, 153.0, "SiW", 3 * 900 + 5 * 18 + 2, 40499),
        ("par04-scipb", (45, 50, 18), 4.0, 252.0, "SciPb", 3 * 900 + 5 * 18 + 2, 40499),
        ("par04-pbwo4", (48, 50, 40), 5.0, 240.0, "PbWO4", 3 * 2000 + 5 * 40 + 2, 95999),
    ],
)
def test_par04_presets_hand_worked(name, shape, edge_mm, depth_mm, material, index_352, last):
    g = get_geometry(name)
    assert g.grid_shape == shape
    assert g.n_voxels == shape[0] * shape[1] * shape[2]
    assert g.flat_index(3, 5, 2) == index_352
    assert g.flat_index(shape[0] - 1, shape[1] - 1, shape[2] - 1) == last
    assert g.r_edges_mm[1] == pytest.approx(edge_mm)
    assert g.r_edges_mm[-1] == pytest.approx(edge_mm * shape[2])
    assert g.depth_mm == pytest.approx(depth_mm)
    assert g.material == material
    # Par04 C++ buffer index (r * Nphi + phi) * Nz + z of voxel (layer 3, alpha 5, radial 2)
    flat = np.zeros((1, g.n_voxels), dtype=np.float32)
    flat[0, index_352] = 1.0
    buffer = g.to_par04(flat)[0].ravel()
    assert buffer[(2 * shape[1] + 5) * shape[0] + 3] == 1.0
    assert buffer.sum() == 1.0
