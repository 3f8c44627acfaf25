"""Shower files: round trips of both layouts, streaming against whole-file reads, layouts as published."""

import json
import math

import h5py
import numpy as np
import pytest

from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.geometry import CylindricalGeometry, LayerBinning, get_geometry
from caloforge.io import (
    GEOMETRY_ATTRIBUTE,
    ShowerWriter,
    detect_format,
    inspect_file,
    iter_showers,
    read_showers,
    summarize_file,
    write_showers,
)

TINY = CylindricalGeometry.regular("tiny", 3, 4, (0.0, 1.5, 4.0, 9.0, 20.0), 2.5, "SiW", "a test readout")


def make_showers(geometry, n, seed=0, angles=True, detector=True):
    """n random sparse showers (MeV) with float64 energies, float32 angles, int16 detector ids."""
    rng = np.random.default_rng(seed)
    values = rng.exponential(50.0, (n, geometry.n_voxels)).astype(np.float32)
    values[rng.random(values.shape) < 0.7] = 0.0
    return ShowerSet(
        showers=values, geometry=geometry, energy=rng.uniform(1e3, 1e6, n),
        theta=rng.uniform(0.87, 2.27, n).astype(np.float32) if angles else None,
        phi=rng.uniform(-math.pi, math.pi, n).astype(np.float32) if angles else None,
        detector=rng.integers(0, 5, n).astype(np.int16) if detector else None,
    )


def assert_same(read, written):
    np.testing.assert_array_equal(read.showers, written.showers)
    assert read.showers.dtype == written.showers.dtype
    for name in ("energy", "theta", "phi", "detector"):
        a, b = getattr(read, name), getattr(written, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype, name
    assert read.geometry == written.geometry


@pytest.mark.parametrize("fmt", ["calochallenge", "par04"])
@pytest.mark.parametrize("geometry", [TINY, get_geometry("calochallenge-2")], ids=["custom", "preset"])
def test_round_trip_exact(tmp_path, fmt, geometry):
    showers = make_showers(geometry, 9)
    path = tmp_path / "s.h5"
    write_showers(path, showers, format=fmt)
    assert_same(read_showers(path), showers)
    info = inspect_file(path)
    assert (info.format, info.n_showers, info.geometry_source) == (fmt, 9, "file attribute")
    assert info.conditions == ("energy", "theta", "phi", "detector")
    assert info.condition_dtypes == {"energy": "float64", "theta": "float32", "phi": "float32",
                                     "detector": "int16"}


def test_float64_energy_float32_energy_and_missing_conditions_round_trip(tmp_path):
    showers = make_showers(TINY, 4, angles=False, detector=False)
    showers.energy = showers.energy.astype(np.float32)
    write_showers(tmp_path / "a.h5", showers, dtype=np.float64)
    back = read_showers(tmp_path / "a.h5")
    assert back.showers.dtype == np.float64 and back.energy.dtype == np.float32
    assert back.theta is None and back.detector is None
    np.testing.assert_array_equal(back.showers, showers.showers.astype(np.float64))


def test_irregular_geometry_round_trips_in_calochallenge_layout(tmp_path):
    g = get_geometry("calochallenge-1-photons")
    showers = make_showers(g, 3)
    write_showers(tmp_path / "d1.h5", showers)
    assert_same(read_showers(tmp_path / "d1.h5"), showers)
    with pytest.raises(InputError, match="per-layer binning"):
        write_showers(tmp_path / "d1p.h5", showers, format="par04")


@pytest.mark.parametrize("fmt", ["calochallenge", "par04"])
def test_float16_within_float16_precision(tmp_path, fmt):
    showers = make_showers(get_geometry("calochallenge-2"), 5)
    showers.showers[0, :3] = [1e-7, 3.3e-5, 60000.0]  # subnormal, near-subnormal and near-max values
    write_showers(tmp_path / "h.h5", showers, format=fmt, dtype="float16")
    back = read_showers(tmp_path / "h.h5")
    assert back.showers.dtype == np.float16
    # float16: 11 significant bits (relative error <= 2**-11), subnormal spacing 2**-24
    np.testing.assert_allclose(back.showers.astype(np.float64), showers.showers, rtol=2.0**-11, atol=2.0**-25)
    assert back.energy.dtype == np.float64
    np.testing.assert_array_equal(back.energy, showers.energy)


def test_float16_overflow_is_refused(tmp_path):
    showers = make_showers(TINY, 2)
    showers.showers[1, 0] = 70000.0  # MeV, above float16's 65504
    with pytest.raises(InputError, match="65504"):
        write_showers(tmp_path / "o.h5", showers, dtype="float16")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("fmt", ["calochallenge", "par04"])
def test_streaming_equals_whole_file(tmp_path, fmt):
    showers = make_showers(TINY, 23)
    path = tmp_path / "s.h5"
    write_showers(path, showers, format=fmt)
    whole = read_showers(path)
    for chunk_size in (1, 5, 7, 22, 23, 100):
        chunks = list(iter_showers(path, chunk_size=chunk_size))
        assert [len(c) for c in chunks[:-1]] == [chunk_size] * (len(chunks) - 1)
        assert sum(len(c) for c in chunks) == 23
        assert_same(ShowerSet.concatenate(chunks), whole)
    part = ShowerSet.concatenate(list(iter_showers(path, chunk_size=4, start=3, stop=14)))
    assert_same(part, whole[3:14])
    assert list(iter_showers(path, start=30)) == []


def test_concatenate_joins_parts_and_returns_a_single_part_uncopied():
    showers = make_showers(TINY, 9)
    assert ShowerSet.concatenate([showers]) is showers
    joined = ShowerSet.concatenate([showers[:4], showers[4:]])
    assert joined is not showers and not np.shares_memory(joined.showers, showers.showers)
    assert_same(joined, showers)
    with pytest.raises(ValueError, match="nothing to concatenate"):
        ShowerSet.concatenate([])


def test_chunked_writer_grows_and_shrinks(tmp_path):
    showers = make_showers(TINY, 17)
    for expected_n in (None, 3, 40):
        path = tmp_path / f"w{expected_n}.h5"
        with ShowerWriter(path, TINY, conditions=("energy", "theta", "phi", "detector"),
                          expected_n=expected_n) as writer:
            for begin in range(0, 17, 6):
                writer.append(showers[begin:begin + 6])
        assert_same(read_showers(path), showers)


def test_empty_file_is_well_formed_streams_nothing_and_is_refused_whole(tmp_path):
    with ShowerWriter(tmp_path / "e.h5", "calochallenge-2"):
        pass
    info = inspect_file(tmp_path / "e.h5")
    assert info.n_showers == 0 and info.showers_shape == (0, 6480) and info.geometry.name == "calochallenge-2"
    assert list(iter_showers(tmp_path / "e.h5")) == []  # streaming: nothing to yield, no error
    with pytest.raises(InputError, match="at least one shower"):  # the details: test_io_empty.py
        read_showers(tmp_path / "e.h5")


def test_writer_refuses_other_geometry_and_missing_condition(tmp_path):
    with pytest.raises(InputError, match="geometry"), ShowerWriter(tmp_path / "x.h5", "calochallenge-2") as w:
        w.append(make_showers(TINY, 2))
    with pytest.raises(InputError, match="theta"), ShowerWriter(
        tmp_path / "y.h5", TINY, conditions=("energy", "theta"),
    ) as w:
        w.append(make_showers(TINY, 2, angles=False))
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_official_calochallenge_layout_is_recognised_by_voxel_count(tmp_path):
    """A file as the CaloChallenge publishes it: two keys, energies (N, 1), no caloforge attribute."""
    g = get_geometry("calochallenge-2")
    path = tmp_path / "dataset_2_like.hdf5"
    showers = np.zeros((2, 6480), dtype=np.float32)
    showers[1, 479] = 7.5  # layer 3, alpha 5, radial 2 (3 * 144 + 5 * 9 + 2)
    with h5py.File(path, "w") as f:
        f["incident_energies"] = np.array([[1000.0], [2048.0]])
        f["showers"] = showers
    info = inspect_file(path)
    assert (info.format, info.geometry.name, info.geometry_source) == ("calochallenge", "calochallenge-2",
                                                                       "preset match")
    back = read_showers(path)
    assert g.to_grid(back.showers)[1, 3, 5, 2] == 7.5
    np.testing.assert_array_equal(back.energy, [1000.0, 2048.0])
    assert back.theta is None


def test_par04_root2h5_layout_places_voxels_like_par04(tmp_path):
    """Par04's root2h5 writes shower[r][phi][z]; the cell (r=2, phi=5, z=3) is layer 3, alpha 5, radial 2."""
    path = tmp_path / "par04.h5"
    showers = np.zeros((3, 9, 16, 45))
    showers[2, 2, 5, 3] = 11.0
    with h5py.File(path, "w") as f:
        f["incident_energy"] = np.array([1e3, 1e4, 1e5])  # (N,) MeV, as root2h5 writes it
        f["incident_theta"] = np.full(3, math.pi / 2)
        f["incident_phi"] = np.zeros(3)
        f["showers"] = showers
    back = read_showers(path)
    g = get_geometry("calochallenge-2")  # the Par04 SiW low-granularity mesh LEMURS and CaloDiT-2 use
    assert back.geometry == g
    assert back.showers[2, g.flat_index(3, 5, 2)] == 11.0
    assert back.showers.sum() == 11.0
    np.testing.assert_array_equal(back.theta, np.full(3, math.pi / 2))


def test_ambiguous_par04_mesh_needs_a_name(tmp_path):
    path = tmp_path / "vae.h5"
    with h5py.File(path, "w") as f:
        f["incident_energy"] = np.array([5e4])
        f["showers"] = np.zeros((1, 18, 50, 45), dtype=np.float32)
    with pytest.raises(InputError, match="par04-siw, par04-scipb"):
        inspect_file(path)
    assert read_showers(path, geometry="par04-scipb").geometry.name == "par04-scipb"
    # The same voxel count in CaloChallenge layout is dataset 3: the file's own family wins.
    flat = tmp_path / "ds3.h5"
    with h5py.File(flat, "w") as f:
        f["incident_energies"] = np.array([[5e4]])
        f["showers"] = np.zeros((1, 40500), dtype=np.float32)
    assert inspect_file(flat).geometry.name == "calochallenge-3"


def test_detect_format_from_keys_and_rank(tmp_path):
    path = tmp_path / "both.h5"
    with h5py.File(path, "w") as f:
        f["incident_energies"] = np.ones((1, 1))
        f["incident_energy"] = np.ones(1)
        f["showers"] = np.zeros((1, 9, 16, 45))
        assert detect_format(f) == "par04"
        del f["showers"]
        f["showers"] = np.zeros((1, 6480))
        assert detect_format(f) == "calochallenge"


def test_geometry_attribute_is_plain_json(tmp_path):
    write_showers(tmp_path / "g.h5", make_showers(TINY, 1))
    with h5py.File(tmp_path / "g.h5") as f:
        stored = json.loads(f.attrs[GEOMETRY_ATTRIBUTE])
    assert stored["layers"][0] == {"r_edges": [0.0, 1.5, 4.0, 9.0, 20.0], "n_alpha": 4}
    assert CylindricalGeometry.from_dict(stored) == TINY
    assert TINY.layers[0] == LayerBinning((0.0, 1.5, 4.0, 9.0, 20.0), 4)


def test_summary_against_hand_worked_numbers(tmp_path):
    g = get_geometry("calochallenge-2")
    showers = np.zeros((2, 6480), dtype=np.float32)
    showers[0, [0, 10, 100]] = [10.0, 15.0, 5.0]  # 30 MeV of 1000 MeV -> 0.03
    showers[1, 6479] = 10.0  # 10 MeV of 500 MeV -> 0.02
    write_showers(tmp_path / "s.h5", ShowerSet(showers, g, np.array([1000.0, 500.0])))
    for chunk_size in (1, 2):
        s = summarize_file(tmp_path / "s.h5", chunk_size=chunk_size)
        assert s.sparsity == pytest.approx(1 - 4 / 12960)
        assert s.deposit_fraction_mean == pytest.approx(0.025)
        assert s.deposit_fraction_std == pytest.approx(0.005)
        assert s.ranges == {"energy": (500.0, 1000.0)}
