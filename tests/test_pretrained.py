"""Shipped models: the index, slim checkpoints, `caloforge models`, `--pretrained` for generate and export,
and the pretrained demo. A tiny model and sample stand in for the package's own files (monkeypatched), so
these tests check the mechanism; test_shipped_* check what the package really ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import TOY_GEOMETRY, tiny_dit_config, toy_showers

import caloforge.pretrained as pretrained
from caloforge.checkpoint import read_checkpoint, write_sampler_checkpoint
from caloforge.generate import load_generator
from caloforge.io import read_showers, write_showers
from caloforge.runconfig import TrainConfig
from caloforge.training import train


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package directory with one tiny model (slim checkpoint) and one sample, as the index lists them."""
    root = tmp_path_factory.mktemp("pretrained")
    config = tiny_dit_config()
    config.train = TrainConfig(batch_size=16, max_steps=2, checkpoint_every=2)
    config.model.sample.n_steps = 2
    full = train(toy_showers(64), root / "run", config, progress=False)
    write_sampler_checkpoint(read_checkpoint(full), root / "toy.ckpt")
    write_showers(root / "toy_sample.h5", toy_showers(40, seed=5))
    (root / "index.json").write_text(json.dumps({
        "models": [{"name": "toy-dit", "file": "toy.ckpt", "family": "edm-dit", "description": "a toy",
                    "training_data": "toy showers", "conditions": "energy 1-100 GeV",
                    "metrics": {"auc_low": 0.99, "measured": "by nobody"}}],
        "samples": [{"name": "toy-sample", "file": "toy_sample.h5", "description": "40 toy showers"}],
    }))
    return root


@pytest.fixture
def shipped(shelf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(pretrained, "_root", lambda: shelf)
    return shelf


def test_slim_checkpoint_generates_what_the_full_one_does(shelf: Path) -> None:
    full, slim = shelf / "run" / "model.ckpt", shelf / "toy.ckpt"
    assert slim.stat().st_size < 0.5 * full.stat().st_size  # no optimiser state, no training copies
    assert set(torch.load(slim, weights_only=True)) == {"caloforge", "global_step"}
    assert read_checkpoint(slim).step == 2
    a = load_generator(full).sample([2e3, 3e4], seed=1).showers
    b = load_generator(slim).sample([2e3, 3e4], seed=1).showers
    np.testing.assert_array_equal(a, b)


def test_models_lists_the_shipped_models(shipped: Path, run) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run("models")
    assert code == 0
    assert "toy-dit  (edm-dit) a toy" in out and "toy showers" in out and "auc_low 0.99" in out
    assert "reference sample toy-sample: 40 toy showers" in out


def test_generate_and_export_take_a_pretrained_name(shipped: Path, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run("generate", "--pretrained", "toy-dit", "--n", 4, "--energy", "log-uniform:1e3,1e5",
                         "--out", tmp_path / "g.h5")
    assert code == 0, err
    assert "wrote 4 showers" in out and read_showers(tmp_path / "g.h5").geometry == TOY_GEOMETRY
    code, out, err = run("export", "--pretrained", "toy-dit", "--out", tmp_path / "m.onnx", "--no-extras")
    assert code == 0, err
    assert "largest difference" in out
    code, _, err = run("generate", "--pretrained", "toy-dt", "--n", 1, "--energy", 1e4,
                       "--out", tmp_path / "x.h5")
    assert code == 2 and "unknown pretrained model 'toy-dt'" in err and "toy-dit" in err
    code, _, err = run("generate", "--n", 1, "--energy", 1e4, "--out", tmp_path / "x.h5")
    assert code == 2 and "--pretrained" in err and "neither given" in err
    assert not (tmp_path / "x.h5").exists()


def test_pretrained_demo_writes_a_report_against_the_shipped_sample(shipped: Path, tmp_path: Path) -> None:
    import dataclasses

    from caloforge.demo import PRETRAINED_DEMO, run_pretrained_demo

    config = dataclasses.replace(PRETRAINED_DEMO, model="toy-dit", sample="toy-sample", classifier_epochs=1,
                                 plots=False)
    result = run_pretrained_demo(tmp_path / "demo", config=config, progress=False)
    assert result.report.exists() and result.report.stat().st_size > 1000
    assert result.headline["auc_low"] is not None
    generated, reference = read_showers(result.generated), read_showers(result.reference)
    np.testing.assert_array_equal(generated.energy, reference.energy)
    assert len(reference) == 40


def test_shipped_model_generates_from_the_package_alone() -> None:
    (model,) = [m for m in pretrained.list_models() if m.name == "g4-siw-dit"]
    assert model.family == "edm-dit" and 0.5 <= model.metrics["auc_low"] <= 1.0
    generator = load_generator(pretrained.model_path("g4-siw-dit"))
    showers = generator.sample([2e3, 5e4], seed=0, n_steps=2).showers
    assert showers.shape == (2, 6480) and np.isfinite(showers).all() and (showers >= 0).all()
    sample = read_showers(pretrained.sample_path("g4-siw-electrons"))
    assert len(sample) == 2500 and sample.geometry.name == "calochallenge-2"
    assert 1e3 <= sample.energy.min() and sample.energy.max() <= 1e5


def test_shipped_vq_model_draws_sparse_showers_with_their_energy() -> None:
    """The shipped vq-gpt (hurdle decoder) generates from the package alone: each shower keeps an
    E_tot / E_inc near the sampling fraction it learned, lights a few hundred of 6480 cells (Geant4: ~650),
    and the same seed gives the same showers."""
    (model,) = [m for m in pretrained.list_models() if m.name == "g4-siw-vq"]
    assert model.family == "vq-gpt" and 0.5 <= model.metrics["auc_low"] <= 1.0
    generator = load_generator(pretrained.model_path("g4-siw-vq"))
    energy = np.array([2e3, 1e4, 5e4, 9e4])
    a, b = (generator.sample(energy, seed=5).showers for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 6480) and np.isfinite(a).all() and (a >= 0).all()
    ratio = a.sum(1) / energy
    assert ((0.02 < ratio) & (ratio < 0.045)).all(), ratio  # SiW samples ~3 % of the energy
    hits = (a > 0).sum(1)
    assert ((100 < hits) & (hits < 2000)).all(), hits


def test_shipped_pretraining_model_adapts_offline_then_generates_and_exports(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The multi-detector model in the package is a start for `caloforge adapt --pretrained`: a new
    detector claims its spare slot, the adapted run generates and exports the Par04 graph, and a
    one-step student distilled from it exports too."""
    import onnx

    from caloforge.export import METADATA_KEY
    from caloforge.simulate import simulate_to_file

    (model,) = [m for m in pretrained.list_models() if m.name == "sim3-dit"]
    content = read_checkpoint(pretrained.model_path("sim3-dit"), weights=False)
    trained = content.ranges.detectors
    assert model.family == "edm-dit" and content.config.conditions.detector_slots == 5
    assert trained is not None and len(trained) == 3
    spare = min(set(range(5)) - set(trained))  # the first slot it was not trained on
    data = tmp_path / "new.h5"
    simulate_to_file(data, "calochallenge-2", 24, "log-uniform:1e3,1e5", progress=False)
    code, out, err = run("adapt", "--pretrained", "sim3-dit", "--data", data, "--method", "bias",
                         "--max-steps", "2", "--set", "train.batch_size=8", "--out", tmp_path / "run")
    assert code == 0, err
    assert f"adapted to detector slot {spare} (bias)" in out
    adapted = tmp_path / "run" / "model.ckpt"
    code, out, err = run("generate", adapted, "--n", "2", "--energy", "10000", "--steps", "2",
                         "--out", tmp_path / "g.h5")
    assert code == 0 and "wrote 2 showers" in out, err
    assert read_showers(tmp_path / "g.h5").showers.shape == (2, 6480)
    code, out, err = run("export", adapted, "--out", tmp_path / "par04.onnx", "--target", "par04",
                         "--steps", "1")
    assert code == 0, err
    entries = {p.key: p.value for p in onnx.load(str(tmp_path / "par04.onnx")).metadata_props}
    assert json.loads(entries[METADATA_KEY])["graph"] == "par04"
    # then distilled to one step through the teacher slot, and exported again (CaloDiT-2's order)
    code, out, err = run("train", "--data", data, "--teacher", adapted, "--max-steps", "2",
                         "--set", "model.distill.method=consistency",
                         "--set", "model.sample.sampler=consistency",
                         "--set", "model.sample.n_steps=1", "--set", "train.batch_size=8",
                         "--out", tmp_path / "student")
    assert code == 0, err
    code, out, err = run("export", tmp_path / "student" / "model.ckpt", "--out", tmp_path / "student.onnx",
                         "--target", "par04")
    assert code == 0 and (tmp_path / "student.onnx").exists(), err


def test_shipped_distilled_model_samples_in_one_call_and_declares_its_teacher() -> None:
    (model,) = [m for m in pretrained.list_models() if m.name == "g4-siw-dit-cd"]
    assert "g4-siw-dit" in model.training_data and model.metrics["ms_per_shower_cpu_1step"] > 0
    content = read_checkpoint(pretrained.model_path("g4-siw-dit-cd"), weights=False)
    assert content.config.model.distill.method == "consistency"
    assert content.config.model.sample.sampler == "consistency"
    generator = load_generator(pretrained.model_path("g4-siw-dit-cd"))
    showers = generator.sample([2e3, 5e4], seed=0, n_steps=1).showers
    assert showers.shape == (2, 6480) and np.isfinite(showers).all() and (showers >= 0).all()
