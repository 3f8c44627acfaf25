"""GLaM: the regular grid, overlap initialisation, exact round trip, even angular spreading, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.errors import InputError
from caloforge.geometry import PRESETS, CylindricalGeometry, LayerBinning
from caloforge.models.glam import GLaM, GLaMConfig, alpha_overlap, latent_geometry, radial_overlap

PHOTONS = PRESETS["calochallenge-1-photons"]


def test_the_regular_grid_of_dataset1_photons_is_calodiffusions() -> None:
    latent = latent_geometry(PHOTONS)
    assert latent.is_regular and latent.grid_shape == (5, 10, 30)  # CaloDiffusion: 368 -> 5 x 10 x 30
    assert latent.r_edges_mm[0] == 0 and latent.r_edges_mm[-1] == 2000
    assert latent_geometry(PRESETS["calochallenge-1-pions"]).grid_shape == (7, 10, 23)


def test_overlaps_by_hand() -> None:
    # rings [0, 1], [1, 3] against [0, 2]: areas / pi 1 and 4 - 1 = 3
    np.testing.assert_allclose(radial_overlap((0.0, 1.0, 3.0), (0.0, 2.0)), [[1.0], [3.0]])
    np.testing.assert_allclose(radial_overlap((0.0, 1.0), (2.0, 3.0)), [[0.0]])
    # 2 bins against 3: [0, 1/2] meets [0, 1/3] and [1/3, 2/3]
    np.testing.assert_allclose(alpha_overlap(2, 3), [[1 / 3, 1 / 6, 0.0], [0.0, 1 / 6, 1 / 3]])


def test_initialisation_is_the_normalised_overlap() -> None:
    geometry = CylindricalGeometry(
        "two", (LayerBinning((0.0, 2.0, 4.0), 1), LayerBinning((0.0, 1.0, 4.0), 2)), (1.0, 1.0), "SiW"
    )
    glam = GLaM(geometry, GLaMConfig(init_noise=0.0))
    assert glam.latent.grid_shape == (2, 2, 3)  # union edges 0, 1, 2, 4
    # layer 0, rings (0-2, 2-4) onto grid rings (0-1, 1-2, 2-4): each grid ring inside one layer ring
    torch.testing.assert_close(glam.encoders[0], torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    # back: ring 0-2 is the area-weighted mean of grid rings 0-1 (area 1) and 1-2 (area 3)
    torch.testing.assert_close(glam.decoders[0], torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]))
    # the tiny noise perturbs it, and only by about its scale
    noisy = GLaM(geometry, GLaMConfig(init_noise=1e-5))
    difference = (noisy.encoders[0] - glam.encoders[0]).abs()
    assert 0 < float(difference.detach().max()) < 1e-4


@pytest.mark.parametrize("name", ["calochallenge-1-photons", "calochallenge-1-pions"])
def test_decode_inverts_encode_at_initialisation(name: str) -> None:
    geometry = PRESETS[name]
    glam = GLaM(geometry, GLaMConfig(init_noise=0.0))
    x = torch.randn(3, geometry.n_voxels)
    z = glam.encode(x)
    assert z.shape == (3, glam.latent.n_voxels)
    torch.testing.assert_close(glam.decode(z), x, atol=1e-5, rtol=1e-5)


def test_a_layer_already_on_the_grid_maps_one_to_one() -> None:
    # layer 1 has the grid's own binning (the union of edges, the most alpha bins)
    geometry = CylindricalGeometry(
        "grid", (LayerBinning((0.0, 2.0), 1), LayerBinning((0.0, 1.0, 2.0), 4)), (1.0, 1.0), "SiW"
    )
    glam = GLaM(geometry, GLaMConfig(init_noise=0.0))
    torch.testing.assert_close(glam.encoders[1], torch.eye(2))
    torch.testing.assert_close(glam.decoders[1], torch.eye(2))
    x = torch.randn(2, geometry.n_voxels)
    torch.testing.assert_close(glam.encode(x).reshape(2, 2, 4, 2)[:, 1].reshape(2, -1), x[:, 1:])


def test_one_alpha_bin_spreads_evenly_and_reads_back_as_the_mean() -> None:
    glam = GLaM(PHOTONS, GLaMConfig(init_noise=0.0))
    x = torch.zeros(1, PHOTONS.n_voxels)
    x[0, :8] = torch.arange(1.0, 9.0)  # layer 0: 8 radial bins, one alpha bin
    grid = glam.encode(x).reshape(5, 10, 30)
    assert torch.equal(grid[0], grid[0, :1].expand(10, 30))  # every alpha bin alike
    assert grid[1:].abs().sum() == 0
    back = torch.zeros(1, glam.latent.n_voxels)
    # the grid rings 0-2, 2-4 and 4-5 mm inside layer 0's first bin (0-5 mm) vary in alpha only
    back.reshape(5, 10, 30)[0, :, :3] = torch.arange(10.0)[:, None]
    with torch.no_grad():
        assert float(glam.decode(back)[0, 0]) == pytest.approx(4.5)  # that bin reads their mean


def test_maps_learn_or_stay_fixed_and_config_checks() -> None:
    assert all(p.requires_grad for p in GLaM(PHOTONS).parameters())
    assert not any(p.requires_grad for p in GLaM(PHOTONS, GLaMConfig(trainable=False)).parameters())
    assert sum(p.numel() for p in GLaM(PHOTONS).parameters()) == 3180  # ~3k, as CaloDiffusion's
    with pytest.raises(InputError, match="init_noise"):
        GLaMConfig(init_noise=-1.0)
