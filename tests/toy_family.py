"""A test-only model family, ``toy-gauss``, that exercises what edm-dit does not: manual optimisation with
two optimisers, gradient clipping under it, a teacher, a uniform noise input and a sampling option.

Registered by ``conftest.py``, so the conformance suite runs it beside the real families. The model is a
per-voxel Gaussian in the preprocessed space: mean = MLP(conditions), scale = exp(log_scale) x spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from caloforge.context import RunContext
from caloforge.families import Family
from caloforge.runconfig import RunConfig
from caloforge.sampler import NoiseSpec, ShowerSampler


@dataclass
class ToyConfig:
    """width: hidden units of the mean MLP; teacher_weight: weight of the match to a teacher's mean."""

    width: int = 16
    teacher_weight: float = 1.0


class ToySampler(ShowerSampler):
    """showers = inverse preprocessing of (mean(cond) + spread x exp(log_scale) x z), times 0.95 + 0.1 u."""

    def __init__(self, config: ToyConfig, context: RunContext, spread: float | None = None) -> None:
        super().__init__()
        n_voxels = context.geometry.n_voxels
        self.encoder = context.spec.encoder()
        self.transform = context.preprocessor.module()
        self.net = nn.Sequential(nn.Linear(context.spec.dim, config.width), nn.SiLU(),
                                 nn.Linear(config.width, n_voxels))
        self.log_scale = nn.Parameter(torch.zeros(n_voxels))
        self.spread = 1.0 if spread is None else float(spread)
        self.noise = (NoiseSpec("z", (n_voxels,)), NoiseSpec("u", (), "uniform"))
        self.options = {"spread": self.spread}

    def forward(self, energy: Tensor, theta: Tensor, phi: Tensor, detector: Tensor, *noise: Tensor) -> Tensor:
        z, u = noise
        cond = self.encoder(energy, theta, phi, detector)
        x = self.net(cond) + self.spread * self.log_scale.exp() * z
        return self.transform.inverse(x, energy) * (0.95 + 0.1 * u)[:, None]


def build_module(config: RunConfig, context: RunContext, teacher: ShowerSampler | None = None):  # type: ignore[no-untyped-def]
    from caloforge.optim import build_optimizer
    from caloforge.training import FamilyModule

    class ToyModule(FamilyModule):
        def __init__(self) -> None:
            super().__init__(config, context)
            self.automatic_optimization = False
            with torch.random.fork_rng():
                torch.manual_seed(config.train.seed)
                self.sampler = ToySampler(config.model, context)
            self.teacher = teacher
            self.ema = self.average(self.sampler)
            self.clipped: list[float] = []  # the gradient norm after each clip, for the tests

        def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
            x0, cond = batch[0], batch[1]
            mean_opt, scale_opt = self.optimizers()  # type: ignore[misc]
            mean = self.sampler.net(cond)
            loss = ((mean - x0) ** 2).mean()
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher.net(cond)  # type: ignore[operator]
                loss = loss + config.model.teacher_weight * ((mean - target) ** 2).mean()
            mean_opt.zero_grad()
            self.manual_backward(loss)
            self.clip(mean_opt)
            self.clipped.append(float(torch.cat([p.grad.flatten() for p in self.sampler.net.parameters()
                                                 if p.grad is not None]).norm()))
            mean_opt.step()
            residual = (x0 - mean.detach()) ** 2
            log_scale = self.sampler.log_scale
            nll = (log_scale + 0.5 * residual * torch.exp(-2 * log_scale)).mean()
            scale_opt.zero_grad()
            self.manual_backward(nll)
            scale_opt.step()
            for scheduler in self.lr_schedulers():  # type: ignore[union-attr]
                scheduler.step()
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/nll", nll)

        def validation_loss(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
            return ((self.ema.module.net(batch[1]) - batch[0]) ** 2).mean()

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            mean_opt = build_optimizer(self.sampler.net.parameters(), config.optim, config.train.precision)
            scale_opt = torch.optim.SGD([self.sampler.log_scale], lr=1e-2)
            schedulers = [self.schedule(mean_opt)["scheduler"], self.schedule(scale_opt)["scheduler"]]
            return [mean_opt, scale_opt], schedulers

        def sampler_state_dict(self) -> dict[str, Tensor]:
            return dict(self.ema.module.state_dict())

        def load_sampler_state_dict(self, state: dict[str, Tensor]) -> None:
            self.sampler.load_state_dict(state)
            self.ema.module.load_state_dict(state)

    return ToyModule()


FAMILY = Family(
    name="toy-gauss",
    summary="test family: per-voxel Gaussian, two optimisers by hand, optional teacher",
    config=ToyConfig,
    build_module=build_module,
    build_sampler=ToySampler,
    sample_options=("spread",),
    takes_teacher=True,
    tiny={"width": 8},
)
