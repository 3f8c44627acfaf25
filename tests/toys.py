"""Toy showers for the model tests (imported by the test files, which pytest puts on sys.path)."""

import math
from pathlib import Path

import numpy as np

from caloforge.data import ShowerSet
from caloforge.families.edm_dit import EdmDitConfig
from caloforge.geometry import CylindricalGeometry
from caloforge.models import DiTConfig
from caloforge.runconfig import RunConfig

# 4 layers x 4 alpha x 2 radial bins: small enough for tiny DiT runs in seconds.
TOY_GEOMETRY = CylindricalGeometry.regular("toy", 4, 4, (0.0, 1.0, 2.0), 3.4, "SiW")


def toy_showers(n: int, seed: int = 0) -> ShowerSet:
    """n showers (MeV) with energies log-uniform 1-100 GeV, a falling profile and empty cells."""
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e5), n))
    profile = np.exp(-np.arange(TOY_GEOMETRY.n_voxels) / 10.0)
    showers = profile * rng.gamma(2.0, 1.0, (n, TOY_GEOMETRY.n_voxels)) * energy[:, None] / 40
    showers[showers < 0.5] = 0.0
    return ShowerSet(showers.astype(np.float32), TOY_GEOMETRY, energy)


def tiny_dit_config(patch_size: tuple[int, int, int] = (2, 2, 2)) -> RunConfig:
    """An edm-dit run config with the tiny DiT (the model tests' default)."""
    return RunConfig(model=EdmDitConfig(dit=DiTConfig(size="tiny", patch_size=patch_size)))


def train_tiny_dit(run_dir: Path, max_steps: int, sample_steps: int, checkpoint_every: int) -> Path:
    """model.ckpt of the tiny DiT trained on 96 toy showers (batch 16) for ``max_steps`` steps, sampling
    with Heun and ``sample_steps`` steps by default."""
    from caloforge.runconfig import TrainConfig
    from caloforge.training import train

    config = tiny_dit_config((2, 2, 2))
    config.train = TrainConfig(batch_size=16, max_steps=max_steps, checkpoint_every=checkpoint_every)
    config.model.sample.n_steps = sample_steps
    return train(toy_showers(96), run_dir, config, progress=False)
