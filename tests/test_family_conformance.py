"""The conformance suite: every registered family (``caloforge.families``, plus the test-only toy family
registered in conftest.py) trains from the CLI, checkpoints, resumes, generates, exports to ONNX and runs in
onnxruntime with the PyTorch sampler's numbers. A new family is covered by registering it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from toys import TOY_GEOMETRY, toy_showers

from caloforge.checkpoint import read_checkpoint
from caloforge.data import ShowerSet
from caloforge.families import family_names, get_family
from caloforge.generate import load_generator
from caloforge.geometry import CylindricalGeometry, LayerBinning
from caloforge.io import read_showers, write_showers
from caloforge.models.glam import GLaM, GLaMConfig
from caloforge.onnx_runtime import check_export, load_onnx_generator, summing_scatters


def test_the_flagship_and_the_toy_family_are_registered(run) -> None:
    names = family_names()
    assert names[0] == "edm-dit" and "toy-gauss" in names
    code, out, _ = run("families")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(names)
    assert lines[0].startswith("edm-dit ") and "(default)" in lines[0] and "n_steps, sampler" in lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.h5"
    write_showers(path, toy_showers(96))
    return path


@pytest.mark.parametrize("name", family_names())
def test_family_trains_resumes_generates_and_exports(name: str, data: Path, tmp_path: Path, run) -> None:
    family = get_family(name)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "family": name, "model": family.tiny,
        "optim": {"warmup_steps": 1},
        "train": {"batch_size": 16, "max_steps": 4, "checkpoint_every": 2, "log_every": 1},
    }))
    out = tmp_path / "run"

    # train, from the CLI
    code, stdout, err = run("train", "--data", data, "--config", config, "--out", out)
    assert code == 0, err
    assert f"model written to {out / 'model.ckpt'}" in stdout and f"training {name} on 96 showers" in err
    content = read_checkpoint(out / "model.ckpt")
    assert content.family == name and content.format == 2 and content.step == 4
    assert content.geometry == TOY_GEOMETRY and content.sampler_state
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["family"] == name and saved["train"]["max_steps"] == 4

    # resume: the run continues from its last checkpoint to the new step budget
    code, _, err = run("train", "--data", data, "--out", out, "--resume", "--max-steps", 6)
    assert code == 0, err
    assert read_checkpoint(out / "model.ckpt").step == 6

    # generate: showers in MeV, the same seed gives the same showers
    spectrum = "log-uniform:2000,50000"
    for target in ("a.h5", "b.h5"):
        code, stdout, err = run("generate", out / "model.ckpt", "--n", 5, "--energy", spectrum, "--seed", 4,
                                "--batch-size", 2, "--out", tmp_path / target)
        assert code == 0, err
        assert "wrote 5 showers" in stdout
    a, b = read_showers(tmp_path / "a.h5"), read_showers(tmp_path / "b.h5")
    assert a.showers.shape == (5, TOY_GEOMETRY.n_voxels) and np.isfinite(a.showers).all()
    assert (a.showers >= 0).all() and a.showers.sum() > 0
    np.testing.assert_array_equal(a.showers, b.showers)

    # export: the whole sampler, checked against PyTorch by the CLI itself
    code, stdout, err = run("export", out / "model.ckpt", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert f"wrote {tmp_path / 'm.onnx'}" in stdout and "largest difference" in stdout
    # onnxruntime and PyTorch agree on the same conditions and noise, at batch 1 and above
    generator = load_generator(out / "model.ckpt")
    for n in (1, 3):
        assert check_export(generator, tmp_path / "m.onnx", n=n, seed=n) < 1e-4
    exported = load_onnx_generator(tmp_path / "m.onnx", threads=2)
    assert [s.name for s in exported.noise] == [s.name for s in generator.sampler.noise]
    showers = exported.sample(np.full(3, 1e4), seed=1).showers
    assert showers.shape == (3, TOY_GEOMETRY.n_voxels) and np.isfinite(showers).all()
    # a graph whose scatters add (onnxruntime loses colliding updates across threads) runs on one thread
    threads = exported.session.get_session_options().intra_op_num_threads
    summing = summing_scatters(onnx.load(str(tmp_path / "m.onnx")))
    assert threads == (1 if summing else 2)
    assert summing == (name == "mdma-gan")

    # the Geant4 Par04 graph draws the declared noise inside and returns GeV in Par04's order
    code, _, err = run("export", out / "model.ckpt", "--out", tmp_path / "p.onnx", "--target", "par04")
    assert code == 0, err
    par04 = load_onnx_generator(tmp_path / "p.onnx").sample(np.full(2, 2e4), theta=math.pi / 2)
    assert par04.showers.shape == (2, TOY_GEOMETRY.n_voxels) and (par04.showers >= 0).all()


# ---- GLaM: a family that handles irregular readouts runs the same pipeline on one ------------------------
IRREGULAR_FAMILIES = ["edm-unet"]
# 4 slots, one empty, binned differently (one alpha bin, finer and coarser radii): 2 + 12 + 4 = 18 voxels.
IRREGULAR_TOY = CylindricalGeometry(
    "toy-irregular",
    (LayerBinning((0.0, 1.0, 2.0), 1), LayerBinning((0.0, 0.5, 1.0, 2.0), 4), LayerBinning((0.0,), 1),
     LayerBinning((0.0, 2.0), 4)),
    (3.4, 3.4, 3.4, 3.4), "SiW",
)


@pytest.mark.parametrize("name", [n for n in IRREGULAR_FAMILIES if n in family_names()])
def test_family_on_an_irregular_geometry_trains_generates_and_exports(name: str, tmp_path: Path, run) -> None:
    rng = np.random.default_rng(3)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e5), 64))
    showers = rng.gamma(2.0, 1.0, (64, IRREGULAR_TOY.n_voxels)) * energy[:, None] / 40
    showers[showers < 0.5] = 0.0
    write_showers(tmp_path / "irregular.h5", ShowerSet(showers.astype(np.float32), IRREGULAR_TOY, energy))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "family": name, "model": get_family(name).tiny, "optim": {"warmup_steps": 1},
        "train": {"batch_size": 16, "max_steps": 3, "checkpoint_every": 3, "log_every": 1},
    }))
    out = tmp_path / "run"
    code, _, err = run("train", "--data", tmp_path / "irregular.h5", "--config", config, "--out", out)
    assert code == 0, err
    content = read_checkpoint(out / "model.ckpt")
    assert content.geometry == IRREGULAR_TOY
    # GLaM's maps are sampler weights: one encoder and decoder per non-empty layer, near their overlap start
    start = GLaM(IRREGULAR_TOY, GLaMConfig(init_noise=0.0)).state_dict()
    saved = {k.split(".glam.")[1]: v for k, v in content.sampler_state.items() if ".glam." in k}
    assert sorted(k for k in saved if "coders." in k) == sorted(k for k in start if "coders." in k)
    assert len([k for k in saved if k.startswith("encoders.")]) == 3
    for key, value in start.items():
        torch.testing.assert_close(saved[key], value, atol=0.05, rtol=0)

    code, _, err = run("generate", out / "model.ckpt", "--n", 4, "--energy", "5000", "--seed", 2,
                            "--out", tmp_path / "g.h5")
    assert code == 0, err
    generated = read_showers(tmp_path / "g.h5")
    assert generated.geometry == IRREGULAR_TOY and generated.showers.shape == (4, IRREGULAR_TOY.n_voxels)
    assert np.isfinite(generated.showers).all() and (generated.showers >= 0).all()

    code, _, err = run("export", out / "model.ckpt", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    generator = load_generator(out / "model.ckpt")
    for n in (1, 3):
        assert check_export(generator, tmp_path / "m.onnx", n=n, seed=n) < 1e-4
    # Par04's mesh is regular: the export says so in one line rather than writing a wrong graph
    code, _, err = run("export", out / "model.ckpt", "--out", tmp_path / "p.onnx", "--target", "par04")
    assert code == 2 and "per-layer binning" in err and not (tmp_path / "p.onnx").exists()
