"""Generation with onnxruntime: same file format as the PyTorch path, seeds, fixed steps, safeguards."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from toys import tiny_dit_config
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.export import export_extras, export_par04, export_sampler
from caloforge.generate import load_generator
from caloforge.geometry import CylindricalGeometry
from caloforge.onnx_runtime import load_onnx_generator, read_metadata
from caloforge.runconfig import TrainConfig
from caloforge.safeguards import OutOfRangeError
from caloforge.training import train

GEOMETRY = CylindricalGeometry.regular("toy-ort", 4, 3, (0.0, 2.0, 4.0), 3.4, "SiW")


def toy_showers(n: int = 64, seed: int = 0) -> ShowerSet:
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e5), n))
    showers = rng.gamma(2.0, 1.0, (n, GEOMETRY.n_voxels)) * energy[:, None] / 100
    showers[showers < 0.5] = 0.0
    return ShowerSet(showers.astype(np.float32), GEOMETRY, energy)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ort")
    config = tiny_dit_config((2, 3, 2))
    config.train = TrainConfig(batch_size=16, max_steps=4, checkpoint_every=4, accelerator="cpu", devices=1)
    config.model.sample.n_steps = 3
    checkpoint = train(toy_showers(), root / "run", config, progress=False)
    generator = load_generator(checkpoint)
    return {
        "checkpoint": checkpoint,
        "sampler": export_sampler(generator, root / "model.onnx"),
        "denoiser": export_extras(generator, root / "model.onnx")[0],
        "par04": export_par04(generator, root / "par04.onnx"),
    }


def test_samples_are_reproducible_showers(files: dict[str, Path]) -> None:
    generator = load_onnx_generator(files["sampler"], threads=1)
    assert generator.geometry == GEOMETRY and generator.options == {"n_steps": 3, "sampler": "heun"}
    energy = np.array([2e3, 1e4, 5e4, 9e4, 3e4])
    a = generator.sample(energy, seed=4, batch_size=2)
    b = generator.sample(energy, seed=4, batch_size=5)
    c = generator.sample(energy, seed=5)
    assert isinstance(a, ShowerSet) and a.showers.shape == (5, GEOMETRY.n_voxels)
    np.testing.assert_allclose(a.showers, b.showers, rtol=1e-6)  # batching does not change the showers
    assert not np.allclose(a.showers, c.showers)
    assert (a.showers >= 0).all() and np.array_equal(a.energy, energy)


def test_steps_and_sampler_are_fixed_in_the_graph(files: dict[str, Path]) -> None:
    generator = load_onnx_generator(files["sampler"])
    with pytest.raises(InputError, match="exported with"):
        next(generator.sample_batches([1e4], n_steps=8))
    with pytest.raises(InputError, match="exported with"):
        next(generator.sample_batches([1e4], sampler="euler"))


def test_par04_graph_generates_in_caloforge_order(files: dict[str, Path]) -> None:
    generator = load_onnx_generator(files["par04"])
    out = generator.sample(np.full(3, 2e4))
    assert out.showers.shape == (3, GEOMETRY.n_voxels) and (out.showers >= 0).all()
    assert np.isfinite(out.showers).all()


def test_files_that_do_not_generate_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not generate"):
        load_onnx_generator(files["denoiser"])
    assert read_metadata(files["denoiser"])["graph"] == "denoiser"
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a protobuf at all")
    with pytest.raises(InputError, match=r"bogus\.onnx"):
        load_onnx_generator(bogus)
    with pytest.raises(FileNotFoundError):
        load_onnx_generator(tmp_path / "missing.onnx")


def test_cli_generate_from_onnx_writes_the_pytorch_format(files: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--n", "7", "--energy", "log-uniform:2000,50000", "--theta", "1.5", "--seed", "3"]
    from_ckpt = runner.invoke(app, ["generate", str(files["checkpoint"]), *common,
                                    "--out", str(tmp_path / "a.h5")])
    from_onnx = runner.invoke(app, ["generate", str(files["sampler"]), *common,
                                    "--out", str(tmp_path / "b.h5")])
    assert from_ckpt.exit_code == 0, from_ckpt.output
    assert from_onnx.exit_code == 0, from_onnx.output
    assert "mean E_tot/E_inc" in from_onnx.output and "training" in from_onnx.output
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert dict(a.attrs) == dict(b.attrs)
        np.testing.assert_array_equal(a["incident_energies"][:], b["incident_energies"][:])


def test_cli_strict_refuses_out_of_range_and_leaves_no_file(files: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["generate", str(files["sampler"]), "--n", "4", "--energy", "5e6", "--out", str(tmp_path / "x.h5")]
    result = runner.invoke(app, [*args, "--strict"])
    assert isinstance(result.exception, OutOfRangeError)
    assert "energy" in str(result.exception) and "training range" in str(result.exception)
    assert not (tmp_path / "x.h5").exists()
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and (tmp_path / "x.h5").exists()
    assert "warning: 4 of 4 requested energy values lie outside the training range" in result.output
