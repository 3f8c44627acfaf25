"""Family ``vq-gpt``: a Calo-VQ-style two-stage model, a VQ-VAE and a GPT prior over its codes.

Stage 1 (``caloforge.models.vqvae``): each shower is divided by E_inc and by its own R = E_tot / E_inc
(``showers.py``); a cylindrical-convolution VQ-VAE encodes the log1p-scaled cell fractions to a grid of
codes and decodes codes to a softmax over all cells. Stage 2 (``caloforge.models.gpt``): a causal
transformer, conditioned on the run's condition vector (energy, angles, detector), generates R as
digitised tokens and then the codes (``tokens.py``). Both train in one ``caloforge train``, stage 1 for
``stage1_fraction`` of the run, then frozen; one checkpoint holds both (``module.py``).

Generation (``sampler.py``) is one ``ShowerSampler``: the autoregressive loop (unrolled, with a key/value
cache) and the decoder, driven by uniform noise through inverse-CDF draws, so it exports to ONNX whole.
``diagnostics.reconstruct`` gives reconstruction-only showers (encoder -> codes -> decoder, no prior).
Design notes and every config key: docs/families/vq-gpt.md.

Layout: ``sampler.py``, ``showers.py``, ``tokens.py``, ``diagnostics.py`` (no Lightning), ``module.py``
(the LightningModule, imported only to train).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caloforge.errors import InputError
from caloforge.families import Family
from caloforge.models.gpt import GPTConfig
from caloforge.models.vqvae import VQConfig

__all__ = ["FAMILY", "RatioConfig", "SampleConfig", "VqGptConfig"]


@dataclass
class RatioConfig:
    """E_tot / E_inc as tokens of the prior (``tokens.RatioTokens``).

    Args:
        digits: tokens per shower for R (most significant first).
        base: levels per token; R takes ``base ** digits`` levels in ln R.
        span: R covers [mean / span, mean x span] around the training mean (clamped outside).
    """

    digits: int = 2
    base: int = 32
    span: float = 4.0

    def check(self) -> None:
        if self.digits < 1:
            raise InputError(None, "model.ratio.digits", f"is {self.digits}", "an integer >= 1")
        if self.base < 2:
            raise InputError(None, "model.ratio.base", f"is {self.base}", "an integer >= 2")
        if self.span <= 1:
            raise InputError(None, "model.ratio.span", f"is {self.span}", "a number > 1")


@dataclass
class SampleConfig:
    """Default sampling of the prior (``caloforge generate --set``-free overrides: the sampling options
    ``temperature``, ``top_k``, ``top_p``).

    Args:
        temperature: logits are divided by it (> 0; < 1 sharpens).
        top_k: draw among the k most likely tokens only (0 = all).
        top_p: draw among the most likely tokens holding probability p (1 = all).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def check(self, prefix: str = "model.sample.") -> None:
        check_sampling(self.temperature, self.top_k, self.top_p, prefix)


def check_sampling(temperature: float, top_k: int, top_p: float, prefix: str = "") -> None:
    """Raise ``InputError`` for sampling settings that draw nothing sensible."""
    if not temperature > 0:
        raise InputError(None, f"{prefix}temperature", f"is {temperature}", "a number > 0")
    if top_k < 0:
        raise InputError(None, f"{prefix}top_k", f"is {top_k}", "an integer >= 0 (0 = no top-k cut)")
    if not 0 < top_p <= 1:
        raise InputError(None, f"{prefix}top_p", f"is {top_p}", "a number in (0, 1]")


@dataclass
class VqGptConfig:
    """The ``model`` section of a ``vq-gpt`` run.

    Args:
        vq: the stage-1 VQ-VAE (size preset, down-sampling, codebook, losses).
        gpt: the stage-2 prior (size preset).
        ratio: E_tot / E_inc tokens.
        sample: default sampling options.
        stage1_fraction: share of the run (the larger of steps / max_steps and time / max_minutes) spent
            on stage 1 before it is frozen and stage 2 starts.
        gpt_lr: learning rate of stage 2 (``None``: ``optim.lr``); stage 1 uses ``optim.lr``.
    """

    vq: VQConfig = field(default_factory=VQConfig)
    gpt: GPTConfig = field(default_factory=GPTConfig)
    ratio: RatioConfig = field(default_factory=RatioConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    stage1_fraction: float = 0.5
    gpt_lr: float | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``InputError`` for settings no model can be built with (also after in-place changes)."""
        self.vq.check()
        self.gpt.resolved()
        self.ratio.check()
        self.sample.check()
        if not 0 < self.stage1_fraction < 1:
            raise InputError(None, "model.stage1_fraction", f"is {self.stage1_fraction}",
                             "a number in (0, 1)")
        if self.gpt_lr is not None and self.gpt_lr <= 0:
            raise InputError(None, "model.gpt_lr", f"is {self.gpt_lr}", "a number > 0 (or null)")


FAMILY = Family(
    name="vq-gpt",
    summary="VQ-VAE with cylindrical convolutions + GPT prior over its codes and E_tot/E_inc (Calo-VQ)",
    config=VqGptConfig,
    build_module="caloforge.families.vq_gpt.module:VqGptModule",
    build_sampler="caloforge.families.vq_gpt.sampler:VqGptSampler",
    representation="voxels",
    sample_options=("temperature", "top_k", "top_p"),
    tiny={"vq": {"size": "tiny", "down_layers": 1, "down_alpha": 1, "kmeans_iters": 2},
          "gpt": {"size": "tiny"}, "ratio": {"digits": 2, "base": 4}},
)
