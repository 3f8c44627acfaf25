"""Distributed training through Lightning on the CPU: 2 processes (gloo) train what 1 process trains at twice
the batch, write one checkpoint, and resume. Runs the CLI as a subprocess, as a user would: Lightning starts
the second rank by running the same command again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from toys import toy_showers

from caloforge.checkpoint import read_checkpoint
from caloforge.io import write_showers

SCRIPT = Path(__file__).parent / "cli_with_toy.py"


def caloforge(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    write_showers(root / "train.h5", toy_showers(64))
    (root / "toy.yaml").write_text(yaml.safe_dump({
        "family": "toy-gauss", "model": {"width": 8}, "optim": {"warmup_steps": 1},
        "train": {"batch_size": 16, "max_steps": 8, "checkpoint_every": 4, "log_every": 1,
                  "accelerator": "cpu"},
    }))
    return root / "train.h5", root / "toy.yaml"


def test_two_processes_train_what_one_process_trains_at_twice_the_batch(setup: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    data, config = setup
    one = caloforge("train", "--data", data, "--config", config, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = caloforge("train", "--data", data, "--config", config, "--out", tmp_path / "two", "--devices", 2,
                    "--strategy", "ddp", "--set", "train.batch_size=8")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("model written to") == 1  # one process reports
    assert "distributed_backend=gloo" in two.stderr and "All distributed processes registered" in two.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoints", "config.yaml", "logs",
                                                                   "model.ckpt"]
    a = read_checkpoint(tmp_path / "one" / "model.ckpt")
    b = read_checkpoint(tmp_path / "two" / "model.ckpt")
    assert a.step == b.step == 8 and a.sampler_state is not None and b.sampler_state is not None
    for key, value in a.sampler_state.items():
        torch.testing.assert_close(b.sampler_state[key], value, rtol=1e-4, atol=1e-5, msg=key)

    resumed = caloforge("train", "--data", data, "--out", tmp_path / "two", "--resume", "--devices", 2,
                        "--strategy", "ddp", "--max-steps", 12)
    assert resumed.returncode == 0, resumed.stderr
    assert read_checkpoint(tmp_path / "two" / "model.ckpt").step == 12
    assert "Restoring states from the checkpoint" in resumed.stderr
