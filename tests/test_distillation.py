"""Consistency distillation through the teacher slot: the consistency function's boundary condition, a
student that starts from its teacher and learns, 1- and 2-step samplers, and ONNX graphs that match
PyTorch (the Par04 graph included)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import tiny_dit_config, toy_showers

from caloforge.checkpoint import read_checkpoint
from caloforge.diffusion import (
    EDM,
    ConsistencyEDM,
    EDMConfig,
    consistency_distillation_loss,
    consistency_sigmas,
)
from caloforge.errors import InputError
from caloforge.export import export_par04, export_sampler
from caloforge.generate import load_generator
from caloforge.onnx_runtime import check_export
from caloforge.runconfig import RunConfig, TrainConfig
from caloforge.training import train


class Linear(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(dim + 1, dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.layer(torch.cat([x, c_noise[:, None]], dim=1))


def test_a_consistency_function_is_the_identity_at_sigma_min_and_shares_the_teachers_weights() -> None:
    torch.manual_seed(0)
    teacher = EDM(Linear(5), EDMConfig())
    student = ConsistencyEDM(teacher.backbone, teacher.config)
    x, cond = torch.randn(3, 5), torch.zeros(3, 0)
    torch.testing.assert_close(student(x, torch.full((3,), 0.002), cond), x)
    assert set(student.state_dict()) == set(teacher.state_dict())
    levels = consistency_sigmas(teacher, 2)
    assert levels[0] == pytest.approx(80.0) and levels[-1] == 0 and 0.002 < float(levels[1]) < 80
    loss = consistency_distillation_loss(student, teacher, x, cond, n_grid=6,
                                         generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad


def short(config: RunConfig, steps: int) -> RunConfig:
    config.train = TrainConfig(batch_size=16, max_steps=steps, checkpoint_every=steps, log_every=1)
    config.optim.warmup_steps = 1
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(teacher, 1-step consistency student) checkpoints on the toy showers, with the layer-energy stage."""
    root = tmp_path_factory.mktemp("distil")
    config = short(tiny_dit_config(), 6)
    config.preprocess.layer_energies = True
    teacher = train(toy_showers(64), root / "teacher", config, progress=False)
    student_config = short(read_checkpoint(teacher).config, 4)
    student_config.model.distill.method = "consistency"
    student_config.model.sample = dataclasses.replace(student_config.model.sample, sampler="consistency",
                                                      n_steps=1)
    student = train(toy_showers(64), root / "student", student_config, teacher=teacher, progress=False)
    return teacher, student


def test_the_student_starts_from_its_teacher_and_samples_in_one_or_two_steps(runs: tuple[Path, Path]) -> None:
    teacher, student = runs
    before, after = read_checkpoint(teacher).sampler_state, read_checkpoint(student).sampler_state
    assert before is not None and after is not None and set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    generator = load_generator(student)
    one = generator.sample([1e4, 5e4], seed=0)
    two = generator.sample([1e4, 5e4], seed=0, n_steps=2)
    assert np.isfinite(one.showers).all() and (one.showers >= 0).all() and one.showers.sum() > 0
    assert not np.allclose(one.showers, two.showers)
    with pytest.raises(InputError, match="consistency for a distilled model"):
        generator.sample([1e4], sampler="heun")
    with pytest.raises(InputError, match="consistency for a distilled model"):
        load_generator(teacher).sample([1e4], sampler="consistency")


def test_a_teacher_is_required_and_must_match(runs: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, _ = runs
    config = short(read_checkpoint(teacher).config, 2)
    config.model.distill.method = "consistency"
    config.model.sample = dataclasses.replace(config.model.sample, sampler="consistency", n_steps=1)
    with pytest.raises(InputError, match=r"--teacher.*is missing"):
        train(toy_showers(64), tmp_path / "a", config, progress=False)
    with pytest.raises(InputError, match="trained on other showers"):
        train(toy_showers(64, seed=5), tmp_path / "b", config, teacher=teacher, progress=False)
    plain = short(read_checkpoint(teacher).config, 2)
    with pytest.raises(InputError, match=r"--teacher.*is given"):
        train(toy_showers(64), tmp_path / "c", plain, teacher=teacher, progress=False)


@pytest.mark.parametrize("n_steps", [1, 2])
def test_the_distilled_samplers_onnx_graphs_match_pytorch(runs: tuple[Path, Path], tmp_path: Path,
                                                          n_steps: int) -> None:
    pytest.importorskip("onnxruntime")
    generator = load_generator(runs[1])
    path = export_sampler(generator, tmp_path / "student.onnx", n_steps=n_steps)
    assert check_export(generator, path, n=3) < 1e-4
    par04 = export_par04(generator, tmp_path / "par04.onnx", n_steps=n_steps)
    assert par04.exists()
