"""Every kind of bad input file gives an InputError naming the file, the field and what was expected."""

import math

import h5py
import numpy as np
import pytest

from caloforge.errors import InputError, UnknownNameError
from caloforge.io import inspect_file, iter_showers, read_showers


def h5file(path, **datasets):
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return path


def good(n=4, voxels=6480):
    rng = np.random.default_rng(1)
    return {"incident_energies": rng.uniform(1e3, 1e6, (n, 1)),
            "showers": rng.exponential(1.0, (n, voxels)).astype(np.float32)}


def expect(path, field, *fragments, geometry=None):
    """read_showers fails with an InputError naming ``path`` and ``field`` and containing ``fragments``."""
    with pytest.raises(InputError) as caught:
        read_showers(path, geometry=geometry)
    error = caught.value
    assert error.path == str(path)
    assert error.field == field
    assert error.expected
    for fragment in fragments:
        assert fragment in str(error)
    return error


def test_missing_file(tmp_path):
    expect(tmp_path / "nope.h5", None, "does not exist")


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("incident_energies,showers\n1,2\n")
    expect(path, None, "not an HDF5 file")
    expect(tmp_path, None, "directory")


def test_truncated_file(tmp_path):
    path = h5file(tmp_path / "cut.h5", **good(n=50))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    expect(path, None, "truncated or corrupt")


def test_corrupt_compressed_chunk_is_reported_with_rows(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["incident_energies"] = np.full((40, 1), 1e4)
        rng = np.random.default_rng(0)
        f.create_dataset("showers", data=rng.exponential(1.0, (40, 6480)).astype(np.float32),
                         chunks=(10, 6480), compression="gzip")
        offset = f["showers"].id.get_chunk_info(2).byte_offset  # third chunk: rows 20-29
    with open(path, "r+b") as f:
        f.seek(offset + 16)
        f.write(b"\x00garbage\xff" * 64)
    assert inspect_file(path).n_showers == 40  # structure intact: only the data is damaged
    with pytest.raises(InputError) as caught:
        for _ in iter_showers(path, chunk_size=10):
            pass
    assert caught.value.field == "showers" and "rows 20:30" in str(caught.value)


def test_missing_keys(tmp_path):
    data = good()
    expect(h5file(tmp_path / "a.h5", showers=data["showers"]), "incident_energies", "is missing",
           "keys found: showers")
    expect(h5file(tmp_path / "b.h5", incident_energies=data["incident_energies"]), "showers", "is missing")


def test_wrong_rank(tmp_path):
    data = good()
    path = h5file(tmp_path / "r.h5", incident_energies=data["incident_energies"],
                  showers=data["showers"].reshape(4, 45, 144))
    expect(path, "showers", "rank 3", "rank 2")
    path = h5file(tmp_path / "e.h5", incident_energies=np.ones((4, 2)), showers=data["showers"])
    expect(path, "incident_energies", "shape (4, 2)", "(N, 1)")
    path = h5file(tmp_path / "t.h5", **data, incident_theta=np.ones((4, 1)))
    expect(path, "incident_theta", "shape (4, 1)")


def test_length_mismatch(tmp_path):
    data = good()
    path = h5file(tmp_path / "m.h5", incident_energies=data["incident_energies"][:3], showers=data["showers"])
    expect(path, "incident_energies", "3 entries", "4 showers")


def test_voxel_count_matching_no_geometry_lists_those_tried(tmp_path):
    path = h5file(tmp_path / "v.h5", **good(voxels=1000))
    error = expect(path, "showers", "1000 voxels", "calochallenge-2 (6480)", "calochallenge-3 (40500)",
                   "par04-pbwo4 (96000)")
    assert "--geometry" in error.expected
    par04 = h5file(tmp_path / "p.h5", incident_energy=np.ones(2), showers=np.zeros((2, 9, 16, 40)))
    expect(par04, "showers", "(9, 16, 40)", "calochallenge-2 (9, 16, 45)")
    expect(h5file(tmp_path / "w.h5", **good()), "showers", "6480", "40500", geometry="calochallenge-3")


@pytest.mark.parametrize(
    ("field", "change", "fragment"),
    [
        ("showers", lambda d: d["showers"].__setitem__((2, 17), np.nan), "NaN or inf"),
        ("showers", lambda d: d["showers"].__setitem__((1, 3), np.inf), "NaN or inf"),
        ("showers", lambda d: d["showers"].__setitem__((3, 0), -0.5), "negative"),
        ("incident_energies", lambda d: d["incident_energies"].__setitem__((1, 0), 0.0), "<= 0"),
        ("incident_energies", lambda d: d["incident_energies"].__setitem__((0, 0), -5.0), "<= 0"),
        ("incident_energies", lambda d: d["incident_energies"].__setitem__((0, 0), np.nan), "NaN"),
    ],
)
def test_bad_values(tmp_path, field, change, fragment):
    data = good()
    change(data)
    expect(h5file(tmp_path / "bad.h5", **data), field, fragment, "rows 0:4")


def test_bad_values_name_the_rows_of_the_chunk(tmp_path):
    data = good(n=12)
    data["showers"][7, 5] = np.nan
    path = h5file(tmp_path / "late.h5", **data)
    chunks = iter_showers(path, chunk_size=5)
    assert len(next(chunks)) == 5  # rows 0:5 are fine
    with pytest.raises(InputError, match=r"rows 5:10"):
        next(chunks)


def test_angles_in_degrees_are_caught(tmp_path):
    data = good()
    path = h5file(tmp_path / "deg.h5", incident_energy=data["incident_energies"][:, 0],
                  showers=data["showers"].reshape(4, 45, 16, 9).transpose(0, 3, 2, 1),
                  incident_theta=np.full(4, 90.0), incident_phi=np.zeros(4))
    expect(path, "incident_theta", "90", "radians")
    ok = h5file(tmp_path / "rad.h5", **good(), incident_theta=np.full(4, math.pi / 2))
    assert read_showers(ok).theta[0] == pytest.approx(math.pi / 2)


def test_detector_must_be_integer(tmp_path):
    expect(h5file(tmp_path / "d.h5", **good(), detector=np.full(4, 0.5)), "detector", "float64", "integer")


def test_bad_geometry_attribute(tmp_path):
    path = h5file(tmp_path / "attr.h5", **good())
    with h5py.File(path, "r+") as f:
        f.attrs["caloforge_geometry"] = "{not json"
    expect(path, "attribute caloforge_geometry", "not a valid geometry")


def test_unknown_preset_name_suggests_closest(tmp_path):
    path = h5file(tmp_path / "u.h5", **good())
    with pytest.raises(UnknownNameError, match="did you mean 'calochallenge-2'"):
        read_showers(path, geometry="calochalenge-2")


def test_iter_showers_fails_when_called_not_when_iterated(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        iter_showers(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="chunk_size"):
        iter_showers(tmp_path / "missing.h5", chunk_size=0)
