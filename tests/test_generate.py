"""Generation from a checkpoint alone: reproducible with a seed, identical after reload, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from toys import TOY_GEOMETRY as GEOMETRY
from toys import toy_showers, train_tiny_dit
from typer.testing import CliRunner

from caloforge.checkpoint import read_checkpoint
from caloforge.cli import app
from caloforge.errors import InputError
from caloforge.generate import load_generator
from caloforge.io import read_showers, write_showers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_dit(tmp_path_factory.mktemp("run") / "run",
                          max_steps=8, sample_steps=4, checkpoint_every=4)


def test_same_seed_same_showers_across_reloads(checkpoint: Path) -> None:
    energy = np.array([2e3, 5e3, 2e4, 8e4])
    a = load_generator(checkpoint).sample(energy, seed=7, batch_size=3)
    b = load_generator(checkpoint).sample(energy, seed=7, batch_size=3)
    np.testing.assert_array_equal(a.showers, b.showers)
    c = load_generator(checkpoint).sample(energy, generator=torch.Generator().manual_seed(7), batch_size=3)
    np.testing.assert_array_equal(a.showers, c.showers)
    d = load_generator(checkpoint).sample(energy, seed=8, batch_size=3)
    assert not np.array_equal(a.showers, d.showers)


def test_samples_are_physical_showers(checkpoint: Path) -> None:
    generator = load_generator(checkpoint)
    energy = np.full(6, 1e4)
    out = generator.sample(energy, theta=1.2, n_steps=3, sampler="euler")
    assert out.showers.shape == (6, GEOMETRY.n_voxels)
    assert out.geometry == GEOMETRY
    assert np.isfinite(out.showers).all() and (out.showers >= 0).all()
    nonzero = out.showers[out.showers > 0]
    assert nonzero.size == 0 or nonzero.min() >= generator.content.preprocessor.threshold_mev
    np.testing.assert_array_equal(out.energy, energy)
    assert out.theta is not None and np.allclose(out.theta, 1.2)
    assert out.phi is None  # not requested, so not recorded
    assert generator.sampler_for(n_steps=3, sampler="euler").options == {"n_steps": 3, "sampler": "euler"}
    assert generator.sampler.options == {"n_steps": 4, "sampler": "heun"}  # the run's own


def test_out_of_range_requests_are_reported(checkpoint: Path) -> None:
    generator = load_generator(checkpoint)
    assert generator.range_warnings([5e3]) == []
    (problem,) = generator.range_warnings([5e3, 1e7])
    assert "1 of 2 requested energy values" in problem
    with pytest.raises(InputError, match="energy"):
        generator.sample([-1.0])


def test_cli_train_then_generate(tmp_path: Path) -> None:
    data = tmp_path / "train.h5"
    write_showers(data, toy_showers(64))
    (tmp_path / "tiny.yaml").write_text(
        "model: {dit: {size: tiny, patch_size: [2, 2, 2]}, sample: {n_steps: 3}}\n"
        "train: {batch_size: 16, max_steps: 4, checkpoint_every: 2}\n"
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    model = tmp_path / "run" / "model.ckpt"
    assert str(model) in result.stdout

    # --resume continues the saved run; --max-steps overrides the saved config instead of being ignored
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--resume",
                                 "--max-steps", "6"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint(model).step == 6

    out = tmp_path / "gen.h5"
    result = runner.invoke(
        app,
        [
            "generate",
            str(model),
            "--n",
            "5",
            "--energy",
            "log-uniform:2000,50000",
            "--batch-size",
            "2",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    generated = read_showers(out)
    assert len(generated) == 5 and generated.geometry == GEOMETRY
    assert ((generated.energy >= 2000) & (generated.energy <= 50000)).all()

    result = runner.invoke(
        app,
        [
            "generate",
            str(model),
            "--n",
            "2",
            "--energy",
            "1e7",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "far.h5"),
        ],
    )
    assert result.exit_code == 0
    assert "outside the training range" in result.stderr

    result = runner.invoke(
        app,
        [
            "generate",
            str(model),
            "--n",
            "2",
            "--energy",
            "1000",
            "--sampler",
            "nope",
            "--out",
            str(tmp_path / "x.h5"),
        ],
    )
    assert result.exit_code != 0 and not (tmp_path / "x.h5").exists()


def test_generator_moves_between_devices_with_the_same_showers(checkpoint: Path) -> None:
    generator = load_generator(checkpoint, device="cpu")
    assert generator.device.type == "cpu"
    energy = np.array([3e3, 3e4])
    a = generator.sample(energy, seed=2, n_steps=2).showers
    # the same seed gives the same showers after a move: every random number is drawn on the CPU
    assert generator.to("cpu") is generator
    np.testing.assert_array_equal(generator.sample(energy, seed=2, n_steps=2).showers, a)
    if torch.cuda.is_available():
        b = load_generator(checkpoint, device="cuda").sample(energy, seed=2, n_steps=2).showers
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-3 * a.max())


def test_cli_refuses_a_device_this_machine_lacks(checkpoint: Path, tmp_path: Path, run) -> None:
    bad = ["gpu9"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        code, _, err = run("generate", checkpoint, "--n", 2, "--energy", 1e4, "--out", tmp_path / "g.h5",
                           "--device", device)
        assert code == 2 and "--device" in err and device in err
    assert not (tmp_path / "g.h5").exists()


def test_cli_sampling_options_by_name(checkpoint: Path, tmp_path: Path, run) -> None:
    args = ("generate", checkpoint, "--n", 4, "--energy", 5000, "--seed", 3)
    code, _, err = run(*args, "--out", tmp_path / "a.h5", "--option", "n_steps=2",
                       "--option", "sampler=euler")
    assert code == 0, err
    code, _, err = run(*args, "--out", tmp_path / "b.h5", "--steps", 2, "--sampler", "euler")
    assert code == 0, err
    a, b = (read_showers(tmp_path / name).showers for name in ("a.h5", "b.h5"))
    np.testing.assert_array_equal(a, b)
    code, _, err = run(*args, "--out", tmp_path / "c.h5", "--option", "top_k=5")
    assert code == 2 and "top_k" in err and "not a sampling option of family 'edm-dit'" in err
    assert "n_steps, sampler" in err and not (tmp_path / "c.h5").exists()
    code, _, err = run(*args, "--out", tmp_path / "d.h5", "--option", "top_k")
    assert code == 2 and "--option" in err and "KEY=VALUE" in err
