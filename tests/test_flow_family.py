"""The ``flow`` family end to end with its layer-energy flow: a MAF teacher trained from the CLI, an IAF
student distilled from it through ``caloforge train --teacher``, both exported to ONNX with onnxruntime
parity, the teacher slot required for a student, and exact log-likelihoods of a ShowerSet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from toys import TOY_GEOMETRY, toy_showers

from caloforge.checkpoint import read_checkpoint
from caloforge.errors import InputError
from caloforge.families.flow import FlowConfig
from caloforge.families.flow.likelihood import shower_log_likelihoods
from caloforge.families.flow.sampler import FlowSampler
from caloforge.generate import load_generator
from caloforge.io import write_showers
from caloforge.onnx_runtime import check_export


def _config(path: Path, role: str, splines: int = 0) -> Path:
    path.write_text(yaml.safe_dump({
        "family": "flow", "model": {"size": "tiny", "role": role, "splines": splines},
        "preprocess": {"layer_energies": True, "standardize": "global" if splines else "voxel"},
        "optim": {"warmup_steps": 1},
        "train": {"batch_size": 16, "max_steps": 4, "checkpoint_every": 4, "log_every": 1},
    }))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flow") / "train.h5"
    write_showers(path, toy_showers(64))
    return path


def test_config_rejects_bad_settings() -> None:
    with pytest.raises(InputError, match=r"model\.role"):
        FlowConfig(role="pupil")
    with pytest.raises(InputError, match=r"model\.shape"):
        FlowConfig(shape="cubes")
    with pytest.raises(InputError, match=r"model\.splines"):
        FlowConfig(size="tiny", splines=3)  # tiny has 2 transforms
    layer, shape = FlowConfig(size="tiny", transforms=3, hidden=24, splines=1).resolved()
    assert (layer.transforms, shape.transforms, shape.hidden, layer.hidden) == (3, 3, 24, 16)
    assert (layer.splines, shape.splines) == (1, 1)


def test_spline_teacher_and_student_train_and_export(data: Path, tmp_path: Path, run) -> None:
    # One spline transform at the data end (model.splines) in both roles: the spline's bin search and its
    # inverse (the teacher's sampling) trace into ONNX with onnxruntime parity.
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    code, _, err = run("train", "--data", data, "--config", _config(tmp_path / "t.yaml", "teacher", 1),
                       "--out", teacher)
    assert code == 0, err
    code, _, err = run("train", "--data", data, "--config", _config(tmp_path / "s.yaml", "student", 1),
                       "--out", student, "--teacher", teacher / "model.ckpt")
    assert code == 0, err
    for run_dir, role in ((teacher, "teacher"), (student, "student")):
        generator = load_generator(run_dir / "model.ckpt")
        sampler = generator.sampler
        assert isinstance(sampler, FlowSampler) and sampler.metadata()["splines"] == 1
        kinds = [type(t).__name__ for t in sampler.shape_flow.flow.transforms]
        data_end = kinds[0] if role == "teacher" else kinds[-1]  # a MAF reads the data first, an IAF last
        assert data_end == "AutoregressiveSpline" and kinds.count("AutoregressiveSpline") == 1
        onnx = tmp_path / f"{role}.onnx"
        code, _, err = run("export", run_dir / "model.ckpt", "--out", onnx)
        assert code == 0, err
        assert check_export(generator, onnx, n=3, seed=3) < 1e-4


def test_teacher_and_student_train_export_and_score(data: Path, tmp_path: Path, run) -> None:
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    code, _, err = run("train", "--data", data, "--config", _config(tmp_path / "t.yaml", "teacher"),
                       "--out", teacher)
    assert code == 0, err
    student_config = _config(tmp_path / "s.yaml", "student")

    # a student needs the teacher slot; a teacher refuses one
    code, _, err = run("train", "--data", data, "--config", student_config, "--out", tmp_path / "none")
    assert code == 2 and "--teacher" in err and "student" in err
    code, _, err = run("train", "--data", data, "--config", _config(tmp_path / "t2.yaml", "teacher"),
                       "--out", tmp_path / "twice", "--teacher", teacher / "model.ckpt")
    assert code == 2 and "model.role" in err

    code, _, err = run("train", "--data", data, "--config", student_config, "--out", student,
                       "--teacher", teacher / "model.ckpt")
    assert code == 0, err
    assert read_checkpoint(student / "model.ckpt").step == 4
    # a student resumes with its teacher handed in again
    code, _, err = run("train", "--data", data, "--out", student, "--resume", "--max-steps", 6,
                       "--teacher", teacher / "model.ckpt")
    assert code == 0, err
    assert read_checkpoint(student / "model.ckpt").step == 6
    # a student cannot teach
    code, _, err = run("train", "--data", data, "--config", student_config, "--out", tmp_path / "again",
                       "--teacher", student / "model.ckpt")
    assert code == 2 and "flow student" in err

    for run_dir, role in ((teacher, "teacher"), (student, "student")):
        generator = load_generator(run_dir / "model.ckpt")
        sampler = generator.sampler
        assert isinstance(sampler, FlowSampler) and sampler.role == role
        assert [(s.name, s.shape, s.distribution) for s in sampler.noise] == [
            ("layer_noise", (1 + TOY_GEOMETRY.n_layers,), "normal"),
            ("noise", (TOY_GEOMETRY.n_voxels,), "normal"),
        ]
        assert sampler.shape_flow.n_layers == TOY_GEOMETRY.n_layers  # layer by layer on a regular readout
        showers = generator.sample(np.full(3, 1e4), seed=1).showers
        assert showers.shape == (3, TOY_GEOMETRY.n_voxels) and np.isfinite(showers).all()
        assert showers.sum() > 0

        onnx = tmp_path / f"{role}.onnx"
        code, _, err = run("export", run_dir / "model.ckpt", "--out", onnx)
        assert code == 0, err
        for n in (1, 3):
            assert check_export(generator, onnx, n=n, seed=n) < 1e-4
        code, _, err = run("export", run_dir / "model.ckpt", "--out", tmp_path / f"{role}_par04.onnx",
                           "--target", "par04")
        assert code == 0, err

    # log-likelihoods of a ShowerSet: one finite number per shower, batching changes nothing, and they are
    # the sampler's own log_prob; a student's density (D passes) agrees in kind with its teacher's
    showers = toy_showers(7, seed=5)
    scores = shower_log_likelihoods(teacher / "model.ckpt", showers, batch_size=3)
    assert scores.shape == (7,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, shower_log_likelihoods(teacher / "model.ckpt", showers), rtol=1e-6)
    sampler = load_generator(teacher / "model.ckpt").sampler
    assert isinstance(sampler, FlowSampler)
    with torch.no_grad():
        direct = sampler.log_prob(torch.from_numpy(showers.showers), torch.from_numpy(showers.energy).float(),
                                  torch.zeros(7), torch.zeros(7), torch.zeros(7, dtype=torch.int64))
    np.testing.assert_allclose(scores, direct.double().numpy(), rtol=1e-5)
    assert np.isfinite(shower_log_likelihoods(student / "model.ckpt", showers)).all()
    # a shower far from the training distribution (all energy in the last cell) scores lower
    odd = toy_showers(7, seed=5)
    odd.showers[:] = 0.0
    odd.showers[:, -1] = odd.energy * 0.02
    assert shower_log_likelihoods(teacher / "model.ckpt", odd).mean() < scores.mean()

    # the same from the command line, two files side by side
    write_showers(tmp_path / "typical.h5", showers)
    write_showers(tmp_path / "odd.h5", odd)
    code, out, err = run("likelihood", teacher / "model.ckpt", tmp_path / "typical.h5", tmp_path / "odd.h5",
                         "--out", tmp_path / "ll.npz")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'typical.h5'}: 7 showers, log-likelihood mean")
    assert f"{scores.mean():.6g}" in lines[0] and lines[1].startswith(f"{tmp_path / 'odd.h5'}: 7 showers")
    saved = np.load(tmp_path / "ll.npz")
    np.testing.assert_allclose(saved["file0"], scores, rtol=1e-6)
    code, _, err = run("likelihood", tmp_path / "none.ckpt", tmp_path / "typical.h5")
    assert code == 2 and "none.ckpt" in err

    # the report compares the log-likelihoods of generated and reference showers
    write_showers(tmp_path / "generated.h5", load_generator(teacher / "model.ckpt").sample(
        toy_showers(24, seed=6).energy, seed=2))
    write_showers(tmp_path / "reference.h5", toy_showers(24, seed=7))
    report = tmp_path / "report"
    code, out, err = run("evaluate", tmp_path / "generated.h5", tmp_path / "reference.h5", "--out", report,
                         "--classifier", "none", "--likelihood", teacher / "model.ckpt")
    assert code == 0, err
    assert "log-likelihood under the flow: median generated" in out
    metrics = json.loads((report / "metrics.json").read_text())
    summary = metrics["likelihood"]
    assert summary["generated"]["n"] == summary["reference"]["n"] == 24
    assert 0 <= summary["separation_power"] <= 1 and summary["checkpoint"] == str(teacher / "model.ckpt")
    assert (report / "likelihood.png").stat().st_size > 0
    assert "likelihood.png" in (report / "index.html").read_text()
    assert "likelihood.separation_power" in (report / "index.html").read_text()
    code, _, err = run("evaluate", tmp_path / "generated.h5", tmp_path / "reference.h5", "--out",
                       tmp_path / "no_report", "--likelihood", tmp_path / "none.ckpt")
    assert code == 2 and "none.ckpt" in err and not (tmp_path / "no_report").exists()


def test_log_prob_matches_a_sampled_shower_s_latents() -> None:
    # The density is that of the flows' latents: scoring a generated shower's model-space values recovers
    # the log N of the noise that drew it plus the flows' log-determinants (whole-shower flow II here).
    from caloforge.context import RunContext
    from caloforge.preprocess import PreprocessConfig

    showers = toy_showers(32)
    context = RunContext.fit(showers, PreprocessConfig(layer_energies=True))
    sampler = FlowSampler(FlowConfig(size="tiny", shape="whole"), context).double()
    assert sampler.shape_flow.n_layers == 1
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sampler.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.2)
        cond = torch.rand(5, context.spec.dim, generator=generator, dtype=torch.float64) * 2 - 1
        y_noise = torch.randn(5, 1 + TOY_GEOMETRY.n_layers, generator=generator, dtype=torch.float64)
        x_noise = torch.randn(5, TOY_GEOMETRY.n_voxels, generator=generator, dtype=torch.float64)
        assert sampler.layer_flow is not None
        y = sampler.layer_flow.to_data(y_noise, cond)
        x = sampler.shape_flow.sample(x_noise, torch.cat([cond, y], dim=1))
        layer_part, shape_part = sampler.log_prob_parts(x, cond, y)
        _, layer_logdet = sampler.layer_flow.to_latent(y, cond)
        normal = torch.distributions.Normal(0.0, 1.0)
        torch.testing.assert_close(layer_part, normal.log_prob(y_noise).sum(1) + layer_logdet)
        _, shape_logdet = sampler.shape_flow.flow.to_latent(x, torch.cat([cond, y], dim=1))
        torch.testing.assert_close(shape_part, normal.log_prob(x_noise).sum(1) + shape_logdet)


def test_dequantised_empty_cells_still_read_zero() -> None:
    from caloforge.context import RunContext
    from caloforge.datamodule import voxel_batch

    showers = toy_showers(16)
    showers.showers[:6, -10:] = 0.0  # a few empty cells
    context = RunContext.fit(showers)
    sampler = FlowSampler(FlowConfig(size="tiny"), context)
    x, cond = voxel_batch(showers, context)[:2]
    w = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    spread = sampler.dequantizer(x, cond, w)
    empty = torch.from_numpy(showers.showers == 0)
    assert empty.any() and (~empty).any()
    assert torch.equal(spread[~empty], x[~empty])  # deposits untouched
    assert (spread[empty] > x[empty]).all()  # empty cells moved up into their interval
    back = sampler.transform.inverse(spread, torch.from_numpy(showers.energy).float())
    torch.testing.assert_close(back, sampler.transform.inverse(x, torch.from_numpy(showers.energy).float()))
    assert (back[empty] == 0).all()


def test_a_wild_draw_gives_a_finite_shower_inside_the_support() -> None:
    # An untrained-looking flow fed far-out noise: each layer is held inside the data's support (empty cell
    # to log_max) before it conditions the next, so the shower stays finite (a MAF run on Geant4 showers
    # overflowed to NaN in 1 shower of 10 before the bound).
    from caloforge.context import RunContext
    from caloforge.preprocess import PreprocessConfig

    showers = toy_showers(32)
    context = RunContext.fit(showers, PreprocessConfig(layer_energies=True))
    sampler = FlowSampler(FlowConfig(size="tiny"), context)
    assert sampler.shape_flow.n_layers == TOY_GEOMETRY.n_layers > 1
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sampler.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 2.0)
        energy = torch.tensor([1e3, 1e4, 1e5, 5e5])
        zeros = torch.zeros(4)
        noise = [30 * torch.randn((4, *spec.shape), generator=generator) for spec in sampler.noise]
        out = sampler(energy, zeros, zeros, zeros.long(), *noise)
    assert torch.isfinite(out).all()
    assert (out >= 0).all() and (out.sum(dim=1) <= energy * (1 + 1e-5)).all()  # E_tot <= E_inc
