"""Checkpoints: format 2's entry, the committed format-1 file still generating the same showers, and a
training run that reproduces the weights the code before the family contract trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from toys import toy_showers

from caloforge.checkpoint import FORMAT_VERSION, read_checkpoint
from caloforge.errors import InputError
from caloforge.generate import load_generator
from caloforge.runconfig import TrainConfig
from caloforge.training import train

DATA = Path(__file__).parent / "data"
FORMAT1 = DATA / "format1_tiny_layers.ckpt"  # written by a6b00ce (tiny DiT + layer-energy stage, 6 steps)


def test_format1_checkpoint_reads_as_edm_dit() -> None:
    content = read_checkpoint(FORMAT1)
    assert content.format == 1 and content.family == "edm-dit" and content.step == 6
    assert content.config.model.dit.size == "tiny" and content.config.model.sample.n_steps == 3
    assert content.config.preprocess.layer_energies
    assert content.sampler_state is not None
    assert {k.split(".")[0] for k in content.sampler_state} == {"denoiser", "layer_denoiser"}


def test_format1_checkpoint_generates_the_showers_it_generated_before() -> None:
    expected = np.load(DATA / "format1_tiny_layers_showers.npz")
    generator = load_generator(FORMAT1)
    heun = generator.sample(expected["energy"], seed=5, batch_size=3).showers  # the run's Heun, 3 steps
    euler = generator.sample(expected["energy"], seed=5, n_steps=2, sampler="euler").showers
    # Up to float rounding: the CPU's kernels may differ in the last bit from the machine that wrote them.
    np.testing.assert_allclose(heun, expected["heun3_seed5_batch3"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(euler, expected["euler2_seed5"], rtol=1e-5, atol=1e-4)
    assert heun.sum() > 0


def test_a_format1_run_is_not_resumed_but_can_seed_a_new_one(tmp_path: Path) -> None:
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(FORMAT1.read_bytes())
    with pytest.raises(InputError, match=r"format 2 to resume.*--init-from"):
        train(toy_showers(64), run, None, resume=True, progress=False)
    config = read_checkpoint(FORMAT1).config
    config.train = TrainConfig(batch_size=16, max_steps=2, checkpoint_every=2)
    model = train(toy_showers(64), tmp_path / "new", config, init_from=FORMAT1, progress=False)
    assert read_checkpoint(model).format == FORMAT_VERSION


def test_unreadable_and_future_checkpoints_are_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.ckpt.*cannot be read as a checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")
    state = torch.load(FORMAT1, weights_only=True)
    state["caloforge"]["format"] = 9
    torch.save(state, tmp_path / "future.ckpt")
    with pytest.raises(InputError, match=r"caloforge\.format.*is 9"):
        read_checkpoint(tmp_path / "future.ckpt")
