"""The family contract beyond the conformance suite: the registry, fine-tuning (--init-from, spare detector
slots), the teacher slot, manual optimisation with clipping, what a new user hits on the CLI, and the
import boundary (generation never imports Lightning)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toys import TOY_GEOMETRY, tiny_dit_config, toy_showers

from caloforge.checkpoint import read_checkpoint
from caloforge.data import ShowerSet
from caloforge.errors import InputError, UnknownNameError
from caloforge.families import get_family
from caloforge.generate import load_generator
from caloforge.geometry import CylindricalGeometry
from caloforge.io import write_showers
from caloforge.runconfig import RunConfig, TrainConfig, run_config_from_dict
from caloforge.training import train


def short(config: RunConfig, steps: int = 2) -> RunConfig:
    config.train = TrainConfig(batch_size=16, max_steps=steps, checkpoint_every=steps, log_every=1)
    config.optim.warmup_steps = 1
    return config


def with_detectors(showers: ShowerSet, detector: int) -> ShowerSet:
    detectors = np.full(len(showers), detector)
    return ShowerSet(showers.showers, showers.geometry, showers.energy, detector=detectors)


def test_unknown_family_and_sampling_option_are_named() -> None:
    with pytest.raises(UnknownNameError, match=r"model family 'edm_dit'.*did you mean 'edm-dit'"):
        get_family("edm_dit")
    family = get_family("edm-dit")
    with pytest.raises(InputError, match=r"'temperature'.*not a sampling option of family 'edm-dit'"):
        family.sampler(family.config(), None, temperature=0.5)  # type: ignore[arg-type]


def test_init_from_adapts_a_model_to_a_new_detector_in_a_spare_slot(tmp_path: Path) -> None:
    config = short(tiny_dit_config())
    config.conditions.detector_slots = 3  # pre-trained on detector 0, two slots to spare
    source = train(with_detectors(toy_showers(64), 0), tmp_path / "pre", config, progress=False)
    assert read_checkpoint(source).spec.n_detectors == 3
    # detector 2 is new: the source's condition spec is kept, so its weights fit
    adapted = train(with_detectors(toy_showers(64, seed=1), 2), tmp_path / "new", None, init_from=source,
                    progress=False)
    content = read_checkpoint(adapted)
    assert content.spec == read_checkpoint(source).spec
    generated = load_generator(adapted).sample([1e4, 2e4], detector=2, seed=0)
    assert np.isfinite(generated.showers).all() and generated.detector is not None
    # the adapted weights start from the source's: with a learning rate of 0 they stay the source's
    frozen = short(read_checkpoint(source).config)
    frozen.optim.lr = 0.0
    kept = read_checkpoint(train(with_detectors(toy_showers(64, seed=1), 2), tmp_path / "kept", frozen,
                                 init_from=source, progress=False)).sampler_state
    before = read_checkpoint(source).sampler_state
    assert kept is not None and before is not None
    for key in before:
        torch.testing.assert_close(kept[key], before[key], msg=key)
    # a detector beyond the source's slots is refused before anything is written
    with pytest.raises(InputError, match="detector slots of the --init-from model"):
        train(with_detectors(toy_showers(64), 3), tmp_path / "beyond", None, init_from=source, progress=False)
    assert not (tmp_path / "beyond").exists()


# The toy detector (4 layers, 2 mm radius) read out with cells halved in alpha and in r.
FINE = CylindricalGeometry.regular("toy-fine", 4, 8, (0.0, 0.5, 1.0, 1.5, 2.0), 3.4, "SiW")


def _coarse_cells(fine: np.ndarray) -> np.ndarray:
    """(N, FINE cells) -> (N, toy cells): each toy cell is four FINE cells."""
    layer, alpha, radial = FINE.voxel_indices
    n_alpha, n_radial = TOY_GEOMETRY.n_alpha, TOY_GEOMETRY.n_radial
    target = layer * n_alpha * n_radial + (alpha // 2) * n_radial + radial // 2
    out = np.zeros((len(fine), TOY_GEOMETRY.n_voxels))
    np.add.at(out.T, target, fine.T)
    return out


def test_a_readout_free_model_moves_to_another_readout_of_its_detector(tmp_path: Path) -> None:
    config = short(run_config_from_dict({"family": "mdma-gan", "model": get_family("mdma-gan").tiny}))
    source = train(toy_showers(64), tmp_path / "pre", config, progress=False)
    coarse, fine = load_generator(source), load_generator(source, readout=FINE)
    for generator in (coarse, fine):
        generator.sampler.threshold_mev = 0.0  # compare every deposit, not only those above the threshold
    energies = [2e3, 1e4, 5e4]
    on_toy, on_fine = coarse.sample(energies, seed=3), fine.sample(energies, seed=3)
    assert on_fine.geometry == FINE and on_fine.showers.shape == (3, FINE.n_voxels)
    assert on_toy.showers.sum() > 0
    # the same hits, binned finer: four fine cells add up to their toy cell
    np.testing.assert_allclose(_coarse_cells(on_fine.showers), on_toy.showers, rtol=1e-5, atol=1e-6)

    # fine-tuning on the new readout starts from the same weights
    toy = toy_showers(64, seed=1)
    split = np.repeat(toy.showers.reshape(64, 4, 4, 1, 2, 1), 2, axis=3).repeat(2, axis=5) / 4
    fine_data = ShowerSet(split.reshape(64, FINE.n_voxels).astype(np.float32), FINE, toy.energy)
    tuned = read_checkpoint(train(fine_data, tmp_path / "fine", None, init_from=source, progress=False))
    assert tuned.geometry == FINE and tuned.step == 2

    # a voxel family stays on its readout, and no family moves to another detector
    dit = train(toy_showers(64), tmp_path / "dit", short(tiny_dit_config()), progress=False)
    with pytest.raises(InputError, match="learns its readout's cells"):
        load_generator(dit, readout=FINE)
    with pytest.raises(InputError, match="learns its readout's cells"):
        train(fine_data, tmp_path / "dit-fine", None, init_from=dit, progress=False)
    five = CylindricalGeometry.regular("toy-5", 5, 8, (0.0, 1.0, 2.0), 3.4, "SiW")
    with pytest.raises(InputError, match=r"another detector \(its layers 5 differ from toy's 4\)"):
        load_generator(source, readout=five)
    assert not (tmp_path / "dit-fine").exists()


def test_teacher_slot_and_manual_optimisation_with_clipping(tmp_path: Path) -> None:
    clipped: list[float] = []

    config = short(run_config_from_dict({"family": "toy-gauss", "model": {"width": 8}}), steps=6)
    config.train.grad_clip = 1e-3  # small enough that every step clips
    teacher = train(toy_showers(64), tmp_path / "teacher", config, progress=False)

    from lightning.pytorch.callbacks import Callback

    class Grab(Callback):
        def on_train_end(self, trainer, module) -> None:  # type: ignore[no-untyped-def]
            clipped.extend(module.clipped)
            assert module.teacher is not None
            assert not any(p.requires_grad for p in module.teacher.parameters())

    train(toy_showers(64), tmp_path / "student", config, teacher=teacher, callbacks=[Grab()], progress=False)
    assert len(clipped) == 3  # two optimiser steps per batch: 6 steps are 3 batches
    assert max(clipped) <= 1e-3 * 1.0001
    # a family that does not distil refuses a teacher, before anything is written
    vq = short(run_config_from_dict({"family": "vq-gpt", "model": get_family("vq-gpt").tiny}))
    with pytest.raises(InputError, match="family 'vq-gpt' does not distil"):
        train(toy_showers(64), tmp_path / "x", vq, teacher=teacher, progress=False)
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    data = root / "train.h5"
    write_showers(data, toy_showers(64))
    model = train(toy_showers(64), root / "run", short(tiny_dit_config(), steps=4), progress=False)
    return data, model


def test_resume_with_another_model_is_refused_before_anything_is_written(tiny_run, run) -> None:  # type: ignore[no-untyped-def]
    data, model = tiny_run
    config_yaml = (model.parent / "config.yaml").read_text()
    last = model.parent / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    code, _, err = run("train", "--data", data, "--out", model.parent, "--resume",
                       "--set", "model.dit.size=small")
    assert code == 2
    assert "model.dit.size" in err and "'small'" in err and "'tiny'" in err and "Traceback" not in err
    assert (model.parent / "config.yaml").read_text() == config_yaml and last.stat().st_mtime_ns == stamp
    code, _, err = run("train", "--data", data, "--out", model.parent, "--set", "train.batchsize=3")
    assert code == 2 and "train.batchsize" in err and "batch_size" in err


def test_generate_warns_once_about_conditions_outside_training(tiny_run, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    _, model = tiny_run
    code, _, err = run("generate", model, "--n", 3, "--energy", 1e7, "--out", tmp_path / "g.h5")
    assert code == 0
    assert err.count("outside the training range") == 1


def test_generate_on_another_readout_names_why_a_voxel_model_cannot(tiny_run, tmp_path: Path, run) -> None:  # type: ignore[no-untyped-def]
    _, model = tiny_run
    code, _, err = run("generate", model, "--n", 3, "--energy", 1e4, "--out", tmp_path / "g.h5",
                       "--readout", "calochallenge-3")
    assert code == 2 and "Traceback" not in err
    assert "edm-dit' learns its readout's cells" in err and str(model) in err
    assert not (tmp_path / "g.h5").exists()


def test_training_progress_in_a_log_is_a_few_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(toy_showers(64), tmp_path / "run", short(tiny_dit_config(), steps=40), progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train:")]
    assert 1 <= len(lines) <= 11
    assert lines[-1].startswith("train: 40/40 steps") and "loss" in lines[-1]


def test_generation_from_a_checkpoint_or_onnx_imports_no_lightning(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, model = tiny_run
    from caloforge.export import export_sampler

    onnx_path = export_sampler(load_generator(model), tmp_path / "m.onnx")
    script = f"""
import sys
from caloforge.cli import main
for source, out in (({str(model)!r}, "a.h5"), ({str(onnx_path)!r}, "b.h5")):
    target = {str(tmp_path)!r} + "/" + out
    sys.argv = ["caloforge", "generate", source, "--n", "3", "--energy", "1e4", "--out", target]
    try:
        main()
    except SystemExit as leaving:
        assert not leaving.code, leaving.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
print("lightning modules:", loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "lightning modules: []" in result.stdout
    assert (tmp_path / "a.h5").exists() and (tmp_path / "b.h5").exists()


def _imports(path: Path, package: str) -> set[str]:
    """caloforge modules imported by a source file, at module level or inside functions, leaving out
    ``if TYPE_CHECKING:`` blocks (annotations only)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(package))
    return found


def test_no_import_cycles_in_the_package() -> None:
    import caloforge

    root = Path(caloforge.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    # a submodule reading its own package's __init__ is how packages work, not a cycle
    graph = {name: {m for m in _imports(path, "caloforge") if m in modules and not name.startswith(m + ".")}
             for name, path in modules.items()}
    assert "caloforge.checkpoint" in graph and "caloforge.runconfig" in graph["caloforge.checkpoint"]

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, nxt]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name))]
    assert cycles == [], cycles[0]
