"""Training: configs from YAML, a step lowers the loss, checkpoints carry everything, resume continues."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from toys import TOY_GEOMETRY as GEOMETRY
from toys import tiny_dit_config, toy_showers

from caloforge.checkpoint import read_checkpoint
from caloforge.errors import InputError
from caloforge.runconfig import RunConfig, TrainConfig, load_run_config, run_config_from_dict
from caloforge.training import train


def tiny_config(max_steps: int = 6, every: int = 3) -> RunConfig:
    config = tiny_dit_config((2, 2, 2))
    config.train = TrainConfig(batch_size=16, max_steps=max_steps, checkpoint_every=every, log_every=1)
    config.optim.warmup_steps = 1
    config.model.sample.n_steps = 4
    return config


def test_config_yaml_round_trip_and_unknown_keys(tmp_path: Path) -> None:
    config = tiny_config()
    assert run_config_from_dict(config.to_dict()) == config
    (tmp_path / "c.yaml").write_text(
        "family: edm-dit\nmodel:\n  dit: {size: tiny, patch_size: [1, 2, 3]}\ntrain:\n  max_steps: 7\n"
    )
    loaded = load_run_config(tmp_path / "c.yaml")
    assert loaded.model.dit.patch_size == (1, 2, 3)
    assert loaded.train.max_steps == 7
    assert loaded.optim.lr == RunConfig().optim.lr
    (tmp_path / "bad.yaml").write_text("train:\n  max_step: 7\n")
    with pytest.raises(InputError, match=r"train\.max_step.*max_steps"):
        load_run_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("train:\n  max_steps: many\n")
    with pytest.raises(InputError, match="max_steps"):
        load_run_config(tmp_path / "typo.yaml")
    # YAML 1.1 reads 2e-4 as a string; a float key takes the number, and a word is refused by name.
    (tmp_path / "lr.yaml").write_text("optim:\n  lr: 2e-4\n")
    assert load_run_config(tmp_path / "lr.yaml").optim.lr == 2e-4
    (tmp_path / "word.yaml").write_text("optim:\n  lr: fast\n")
    with pytest.raises(InputError, match=r"optim\.lr.*'fast'.*a number"):
        load_run_config(tmp_path / "word.yaml")
    # the family validates its own section, naming the key under model.
    (tmp_path / "model.yaml").write_text("model:\n  dit: {sise: tiny}\n")
    with pytest.raises(InputError, match=r"model\.dit\.sise.*size"):
        load_run_config(tmp_path / "model.yaml")
    (tmp_path / "old.yaml").write_text("model: {size: tiny}\n")  # the pre-family layout
    with pytest.raises(InputError, match=r"model\.size.*dit"):
        load_run_config(tmp_path / "old.yaml")
    with pytest.raises(InputError, match="--family"):
        load_run_config(tmp_path / "c.yaml", family="other")
    (tmp_path / "fam.yaml").write_text("family: edm-dti\n")
    with pytest.raises(KeyError, match="edm-dit"):  # an unknown family suggests the close one
        load_run_config(tmp_path / "fam.yaml")


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    from caloforge.context import RunContext
    from caloforge.families.edm_dit.module import EdmDitModule

    showers = toy_showers(32)
    context = RunContext.fit(showers)
    x = torch.from_numpy(context.preprocessor.transform(showers))
    cond = context.spec.encode(showers)
    module = EdmDitModule(tiny_config(), context)
    optimizer = torch.optim.Adam(module.edm.parameters(), lr=3e-3)

    def fixed_loss() -> torch.Tensor:
        return module.edm.loss(x, cond, generator=torch.Generator().manual_seed(0))

    losses = [fixed_loss().item()]
    # the per-voxel head's output layer starts at zero, so the first few steps move the loss little
    for _ in range(25):
        optimizer.zero_grad()
        fixed_loss().backward()
        optimizer.step()
        losses.append(fixed_loss().item())
    assert losses[1] < losses[0]  # one step already helps
    assert losses[-1] < 0.9 * losses[0]


class FirstStep(L.Callback):
    def __init__(self) -> None:
        self.first: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if self.first is None:
            self.first = trainer.global_step


def test_checkpoint_carries_everything_and_resume_continues(tmp_path: Path) -> None:
    showers = toy_showers(128)
    run = tmp_path / "run"
    model = train(showers, run, tiny_config(max_steps=6, every=3), progress=False)
    content = read_checkpoint(model)
    assert content.step == 6
    assert content.geometry == GEOMETRY
    assert content.config.model.dit.size == "tiny" and content.family == "edm-dit" and content.format == 2
    assert content.ranges.energy_min == pytest.approx(float(showers.energy.min()))
    ratio = (showers.showers.sum(axis=1) / showers.energy).mean()
    assert content.ranges.mean_energy_ratio == pytest.approx(float(ratio), rel=1e-5)
    assert content.sampler_state is not None
    assert any(k.startswith("denoiser.backbone.") for k in content.sampler_state)
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "logs" / "metrics.csv").read_text().count("\n") > 3

    with pytest.raises(InputError, match="already holds"):
        train(showers, run, tiny_config(), progress=False)

    # a longer run resumed from the last checkpoint starts at step 6, not 0
    first = FirstStep()
    model = train(
        showers, run, tiny_config(max_steps=9, every=3), resume=True, progress=False, callbacks=[first]
    )
    assert first.first == 6
    assert read_checkpoint(model).step == 9


def test_resume_without_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing to resume"):
        train(toy_showers(16), tmp_path / "none", tiny_config(), resume=True, progress=False)


def test_layer_energy_stage_trains_beside_the_dit_and_is_saved(tmp_path: Path) -> None:
    from caloforge.generate import load_generator

    config = tiny_config(max_steps=4, every=4)
    config.preprocess.layer_energies = True
    config.model.layers.width, config.model.layers.depth = 16, 1
    showers = toy_showers(64)
    model = train(showers, tmp_path / "run", config, progress=False)
    content = read_checkpoint(model)
    assert content.sampler_state is not None  # the two stages' weights kept apart
    assert "layer_denoiser.backbone.inp.weight" in content.sampler_state
    assert "denoiser.backbone.inp.weight" not in content.sampler_state
    metrics = (tmp_path / "run" / "logs" / "metrics.csv").read_text()
    assert "train/layer_loss" in metrics
    generator = load_generator(model)
    assert generator.sampler.layer_denoiser is not None and generator.sampler.layer_energies is not None
    # the DiT is conditioned on the stage's vector: the conditions, then 1 + L layer values
    cond_embed = generator.sampler.denoiser.backbone.cond_embed[0]
    assert cond_embed.in_features == content.spec.dim + 1 + showers.geometry.n_layers
    a = generator.sample(showers.energy[:5], seed=3, n_steps=2).showers
    b = load_generator(model).sample(showers.energy[:5], seed=3, n_steps=2).showers
    np.testing.assert_array_equal(a, b)
    # each shower's layers hold what the stage drew: E_tot / E_inc stays below 1
    assert np.all(a.sum(axis=1) <= showers.energy[:5] * (1 + 1e-5))
    # a checkpoint without the stage's weights while its preprocessing says it has one is refused
    state = torch.load(model, weights_only=True)
    entry = state["caloforge"]
    entry["sampler"] = {k: v for k, v in entry["sampler"].items() if not k.startswith("layer_")}
    torch.save(state, tmp_path / "broken.ckpt")
    with pytest.raises(InputError, match=r"broken\.ckpt.*missing.*layer_denoiser"):
        load_generator(tmp_path / "broken.ckpt")


class RowsSeenByLayerStage(L.Callback):
    """Records the batch size of every forward pass of the layer-energy stage's backbone."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.layer_edm.backbone.register_forward_hook(lambda m, a, out: self.rows.append(out.shape[0]))


def test_layer_stage_draws_several_noise_levels_per_shower(tmp_path: Path) -> None:
    config = tiny_config(max_steps=2, every=2)
    config.preprocess.layer_energies = True
    config.model.layers.width, config.model.layers.depth, config.model.layers.noise_draws = 16, 1, 3
    seen = RowsSeenByLayerStage()
    train(toy_showers(32), tmp_path / "run", config, callbacks=[seen], progress=False)
    assert seen.rows == [3 * config.train.batch_size] * 2  # each shower's layer vector at three noise levels
    config.model.layers.noise_draws = 0
    with pytest.raises(InputError, match="noise_draws"):
        train(toy_showers(32), tmp_path / "bad", config, progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_the_dit_declares_a_validation_loss_that_repeats_and_is_logged(tmp_path: Path) -> None:
    from caloforge.context import RunContext
    from caloforge.datamodule import voxel_batch
    from caloforge.families.edm_dit.module import EdmDitModule
    from caloforge.runconfig import DataConfig

    config = tiny_config(max_steps=4, every=4)
    config.preprocess.layer_energies = True
    showers = toy_showers(64)
    context = RunContext.fit(showers, config.preprocess)
    module = EdmDitModule(config, context)
    batch = voxel_batch(showers[:16], context)
    first, again, other = (module.validation_loss(batch, i) for i in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other) and float(first) > 0

    config.data = DataConfig(validation_fraction=0.25, validation_every=2)
    train(showers, tmp_path / "run", config, progress=False)
    lines = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    column = lines[0].split(",").index("val/loss")
    assert sum(1 for line in lines[1:] if line.split(",")[column]) == 2  # steps 2 and 4


def test_keep_best_puts_the_lowest_validation_pass_weights_in_checkpoints_and_a_resume_keeps_them() -> None:
    from types import SimpleNamespace

    from caloforge.checkpoint import CHECKPOINT_KEY
    from caloforge.context import RunContext
    from caloforge.families.edm_dit.module import EdmDitModule

    config = tiny_config()
    config.train.keep_best = True
    module = EdmDitModule(config, RunContext.fit(toy_showers(32), config.preprocess))

    def validation_pass(module: EdmDitModule, step: int, loss: float) -> None:
        module._trainer = SimpleNamespace(  # type: ignore[assignment]  # what the hook reads of a Trainer
            callback_metrics={"val/loss": torch.tensor(loss)}, sanity_checking=False, global_step=step)
        module.on_validation_epoch_end()

    def shift_weights() -> None:
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(1.0)

    validation_pass(module, 2, 0.5)
    at_best = {k: v.clone() for k, v in module.sampler_state_dict().items()}
    shift_weights()
    validation_pass(module, 4, 0.75)  # worse: the weights of step 2 stay
    shift_weights()
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    saved = checkpoint[CHECKPOINT_KEY]["sampler"]
    assert checkpoint["best_sampler"] == {"val_loss": 0.5, "step": 2}
    assert all(torch.equal(saved[k], at_best[k]) for k in at_best)
    assert not all(torch.equal(v, at_best[k]) for k, v in module.sampler_state_dict().items())

    resumed = EdmDitModule(config, module.context)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.best is not None and resumed.best[:2] == (0.5, 2)
    validation_pass(resumed, 6, 0.75)  # still worse than before the resume
    assert resumed.best[:2] == (0.5, 2)
    validation_pass(resumed, 8, 0.25)  # better: taken
    assert resumed.best[:2] == (0.25, 8)
    # without keep_best nothing is kept: checkpoints hold the last weights
    config.train.keep_best = False
    plain = EdmDitModule(config, module.context)
    validation_pass(plain, 2, 0.125)
    assert plain.best is None
