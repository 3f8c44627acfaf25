"""Adapting a pre-trained model to a new detector: adapters train only what they should, merged weights
reproduce the adapted network, a spare slot is claimed, balanced passes over several detectors, and
`caloforge adapt` -> generate -> export --target par04 from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from toys import tiny_dit_config, toy_showers

from caloforge.adaptation import adapt, claim_slot
from caloforge.adapters import add_adapters, merged_state_dict, trainable_count
from caloforge.checkpoint import read_checkpoint
from caloforge.data import ShowerSet
from caloforge.datamodule import balanced_pass
from caloforge.errors import InputError
from caloforge.export import METADATA_KEY
from caloforge.generate import load_generator
from caloforge.io import write_showers
from caloforge.runconfig import RunConfig, TrainConfig
from caloforge.training import train


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.SiLU(), nn.Linear(5, 3), nn.LayerNorm(3))


def short(config: RunConfig, steps: int = 3) -> RunConfig:
    config.train = TrainConfig(batch_size=16, max_steps=steps, checkpoint_every=steps, log_every=1)
    config.optim.warmup_steps = 1
    return config


def with_detector(showers: ShowerSet, detector: int) -> ShowerSet:
    return ShowerSet(showers.showers, showers.geometry, showers.energy,
                     detector=np.full(len(showers), detector))


def test_bias_adapter_trains_the_biases_only() -> None:
    network = net()
    add_adapters(network, "bias")
    trained = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trained == {"0.bias", "2.bias", "3.bias"}
    assert trainable_count(network) == (5 + 3 + 3, sum(p.numel() for p in net().parameters()))


def test_lora_adapter_trains_low_rank_updates_and_merges_into_plain_weights() -> None:
    network, plain = net(), net()
    add_adapters(network, "lora", rank=2, alpha=4.0)
    trained = {n for n, p in network.named_parameters() if p.requires_grad}
    assert trained == {f"{i}.parametrizations.weight.0.{part}" for i in (0, 2) for part in ("down", "up")}
    x = torch.randn(4, 6)
    torch.testing.assert_close(network(x), plain(x))  # B starts at zero: the pre-trained network
    optimiser = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        network(x).pow(2).sum().backward()
        optimiser.step()
    changed = network(x)
    assert not torch.allclose(changed, plain(x))
    merged = merged_state_dict(network.state_dict())
    assert set(merged) == set(plain.state_dict())
    difference = merged["0.weight"] - plain.state_dict()["0.weight"]
    assert torch.linalg.matrix_rank(difference, atol=1e-5) <= 2  # rank r (up to float32 rounding of W + BA)
    torch.testing.assert_close(merged["0.bias"], plain.state_dict()["0.bias"])
    plain.load_state_dict(merged)
    torch.testing.assert_close(plain(x), changed)


def test_balanced_pass_gives_every_detector_as_many_rows_as_the_largest() -> None:
    detectors = np.array([0] * 10 + [1] * 3 + [2] * 4)
    blocks = balanced_pass(np.ones(17, dtype=np.int64), detectors, seed=0)
    assert np.bincount(detectors[blocks]).tolist() == [10, 10, 10]
    assert set(blocks[detectors[blocks] == 1]) == {10, 11, 12}
    single = balanced_pass(np.ones(5, dtype=np.int64), np.zeros(5, dtype=np.int64), seed=0)
    np.testing.assert_array_equal(single, np.arange(5))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DiT pre-trained on detectors 0 and 1 with 4 slots (2 spare)."""
    config = short(tiny_dit_config())
    config.conditions.detector_slots = 4
    showers = ShowerSet.concatenate([with_detector(toy_showers(48, seed=0), 0),
                                     with_detector(toy_showers(16, seed=1), 1)])
    return train(showers, tmp_path_factory.mktemp("pre") / "run", config, progress=False)


def test_pretraining_records_its_detectors_and_a_new_one_claims_a_spare_slot(pretrained: Path) -> None:
    content = read_checkpoint(pretrained)
    assert content.ranges.detectors == (0, 1) and content.spec.n_detectors == 4
    assert claim_slot(content) == 2
    assert claim_slot(content, 3) == 3
    with pytest.raises(InputError, match=r"--slot.*is 4.*slots 0\.\.3"):
        claim_slot(content, 4)


def test_bias_adaptation_keeps_every_pre_trained_weight_matrix(pretrained: Path, tmp_path: Path) -> None:
    config = short(read_checkpoint(pretrained).config)
    path, slot = adapt(pretrained, with_detector(toy_showers(32, seed=2), 7), tmp_path / "bias", "bias",
                       config=config, progress=False)
    assert slot == 2
    before, after = read_checkpoint(pretrained), read_checkpoint(path)
    assert after.ranges.detectors == (2,) and after.config.adapt.method == "bias"
    assert before.sampler_state is not None and after.sampler_state is not None
    assert set(after.sampler_state) == set(before.sampler_state)
    moved = [k for k, v in before.sampler_state.items() if not torch.equal(v, after.sampler_state[k])]
    assert moved and all(k.endswith("bias") for k in moved)
    # the adapted model generates in its own slot unless asked otherwise
    generated = load_generator(path).sample([1e4, 2e4], seed=0)
    assert generated.detector is not None and set(generated.detector.tolist()) == {2}


def test_adaptation_refuses_several_detectors_and_a_model_without_spare_slots(
    pretrained: Path, tmp_path: Path
) -> None:
    mixed = ShowerSet.concatenate([with_detector(toy_showers(16), 5), with_detector(toy_showers(16), 6)])
    with pytest.raises(InputError, match="holds 2 detectors"):
        adapt(pretrained, mixed, tmp_path / "mixed", "lora", progress=False)
    config = short(tiny_dit_config())
    both = ShowerSet.concatenate([with_detector(toy_showers(16), d) for d in (0, 1)])
    full = train(both, tmp_path / "full", config, progress=False)
    with pytest.raises(InputError, match=r"detector slots.*all trained on \(2 of 2\)"):
        adapt(full, toy_showers(16), tmp_path / "none", "full", progress=False)
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "none").exists()


def test_cli_adapt_then_generate_and_export_par04(run, pretrained: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "new.h5"
    write_showers(data, toy_showers(32, seed=3))
    code, out, err = run("adapt", pretrained, "--data", data, "--method", "lora", "--lora-rank", "2",
                         "--max-steps", "2", "--set", "train.batch_size=16", "--out", tmp_path / "lora")
    assert code == 0, err
    assert "adapted to detector slot 2 (lora)" in out
    model = tmp_path / "lora" / "model.ckpt"
    content = read_checkpoint(model)
    assert content.sampler_state is not None
    assert not any("parametrizations" in k for k in content.sampler_state)  # merged: a plain checkpoint
    code, out, err = run("generate", model, "--n", "4", "--energy", "10000", "--out", tmp_path / "g.h5",
                         "--detector", "2")
    assert code == 0 and "wrote 4 showers" in out, err
    code, out, err = run("export", model, "--out", tmp_path / "par04.onnx", "--target", "par04",
                         "--steps", "2")
    assert code == 0, err
    entries = {p.key: p.value for p in onnx.load(str(tmp_path / "par04.onnx")).metadata_props}
    assert json.loads(entries[METADATA_KEY])["graph"] == "par04"
    code, out, err = run("adapt", pretrained, "--data", data, "--method", "prefix", "--out", tmp_path / "x")
    assert code == 2 and "'--method': is 'prefix'; expected one of full, bias, lora" in err
    assert not (tmp_path / "x").exists()
