"""The vq-gpt family beyond the conformance suite: shower normalisation, E_tot/E_inc tokens, categorical
draws from uniform noise (temperature, top-k, top-p), the two stages in one run and resuming in either,
ONNX export with the sampling options, and the reconstruction-only diagnostic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from toys import TOY_GEOMETRY, toy_showers

from caloforge.calibration import CalibrationConfig
from caloforge.checkpoint import read_checkpoint
from caloforge.context import RunContext
from caloforge.errors import InputError, UnknownNameError
from caloforge.export.graphs import export_sampler
from caloforge.families import get_family
from caloforge.families.vq_gpt import VqGptConfig
from caloforge.families.vq_gpt.diagnostics import reconstruct, reconstruct_showers
from caloforge.families.vq_gpt.module import stage1_losses
from caloforge.families.vq_gpt.sampler import VqGptSampler, generate_tokens
from caloforge.families.vq_gpt.showers import (
    compose,
    decoded_fractions,
    draw_fractions,
    encoder_input,
    fractions_and_ratio,
    hurdle_nll,
)
from caloforge.families.vq_gpt.tokens import RatioTokens, filter_probabilities, inverse_cdf
from caloforge.generate import calibrate_checkpoint, load_generator
from caloforge.onnx_runtime import check_export
from caloforge.runconfig import RunConfig, run_config_from_dict
from caloforge.training import train

FAMILY = get_family("vq-gpt")


def tiny_config(max_steps: int, **model: object) -> RunConfig:
    return run_config_from_dict({
        "family": "vq-gpt", "model": {**FAMILY.tiny, **model}, "optim": {"warmup_steps": 1},
        "train": {"batch_size": 16, "max_steps": max_steps, "checkpoint_every": 1, "log_every": 1},
    })


def logged(run: Path, column: str) -> list[float]:
    """The values of ``column`` in the run's CSV log (of its last start), one per step that logged it."""
    lines = (run / "logs" / "metrics.csv").read_text().splitlines()
    index = lines[0].split(",").index(column)
    return [float(row.split(",")[index]) for row in lines[1:] if row.split(",")[index] != ""]


@pytest.fixture(scope="module")
def showers():  # type: ignore[no-untyped-def]
    return toy_showers(64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, showers) -> Path:  # type: ignore[no-untyped-def]
    """A 6-step run: 3 steps of stage 1 (progress 0, 1/6, 2/6 < 0.5), then 3 of stage 2."""
    out = tmp_path_factory.mktemp("vq") / "run"
    return train(showers, out, tiny_config(6), progress=False)


# ---- showers <-> fractions ---------------------------------------------------------------------------------
def test_fractions_sum_to_one_and_compose_keeps_the_total_above_the_threshold() -> None:
    showers = torch.tensor([[3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    energy = torch.tensor([8.0, 5.0])
    fractions, ratio = fractions_and_ratio(showers, energy)
    np.testing.assert_allclose(fractions.numpy(), [[0.75, 0.25, 0, 0], [0.25] * 4])
    np.testing.assert_allclose(ratio.numpy(), [0.5, 0.0])
    assert encoder_input(fractions, 4.0)[0].tolist() == pytest.approx([math.log(4), math.log(2), 0, 0])
    # 0.6/0.3/0.08/0.02 of 10 MeV with a 0.5 MeV threshold: the 0.2 MeV cell goes, the rest scale up
    out = compose(torch.tensor([[0.6, 0.3, 0.08, 0.02]]), torch.tensor([0.5]), torch.tensor([20.0]), 0.5)
    np.testing.assert_allclose(out.numpy(), [[6 / 0.98, 3 / 0.98, 0.8 / 0.98, 0.0]], rtol=1e-6)


def test_stage1_losses_vanish_for_a_perfect_decoder() -> None:
    fractions = torch.tensor([[0.5, 0.3, 0.2]])
    x = encoder_input(fractions, 3.0)
    mse, kl = stage1_losses(torch.log(fractions) + 7.0, fractions, x, 3.0)  # logits up to a constant
    assert float(mse) == pytest.approx(0.0, abs=1e-10) and float(kl) == pytest.approx(0.0, abs=1e-6)
    mse, kl = stage1_losses(torch.zeros(1, 3), fractions, x, 3.0)  # uniform guess
    expected_kl = sum(f * math.log(f * 3) for f in (0.5, 0.3, 0.2))
    assert float(kl) == pytest.approx(expected_kl, rel=1e-5) and float(mse) > 0


def hurdle_outputs(hit_p: list[float], mu: list[float], sigma: list[float]) -> torch.Tensor:
    """Hurdle decoder outputs (1, 3, V) for given hit probabilities, means and widths of ln(f x V)."""
    p = torch.tensor([hit_p])
    return torch.stack([torch.log(p / (1 - p)), torch.tensor([mu]), torch.log(torch.tensor([sigma]))], dim=1)


def test_hurdle_nll_is_the_cells_likelihood_and_is_lowest_at_the_truth() -> None:
    fractions = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # two hit cells, ln(f x V) = ln 2
    y = math.log(2.0)
    out = hurdle_outputs([0.8, 0.8, 0.2, 0.2], [y, y + 1.0, 0.0, 0.0], [0.5, 0.5, 1.0, 1.0])
    bce, nll = hurdle_nll(out, fractions)
    assert float(bce) == pytest.approx(-math.log(0.8), rel=1e-5)  # every cell guessed right with p 0.8
    # hit cells only, averaged over all 4: (0 + 0.5 x (1 / 0.5)^2) / 4 + 2 ln 0.5 / 4
    assert float(nll) == pytest.approx((0.5 * 4 + 2 * math.log(0.5)) / 4, rel=1e-5)
    better = hurdle_outputs([0.8, 0.8, 0.2, 0.2], [y, y, 0.0, 0.0], [0.5, 0.5, 1.0, 1.0])
    assert float(hurdle_nll(better, fractions)[1]) < float(nll)


def test_drawn_fractions_follow_the_hit_probabilities_and_sum_to_one() -> None:
    n, v = 4000, 3
    out = hurdle_outputs([0.9, 0.5, 0.1], [1.0, 0.0, -1.0], [0.3, 0.3, 0.3]).expand(n, 3, v)
    draws = torch.Generator().manual_seed(0)
    u, z = torch.rand(n, v, generator=draws), torch.randn(n, v, generator=draws)
    f = draw_fractions(out, u, z)
    hit = f > 0
    rows = hit.any(1)
    np.testing.assert_allclose(f[rows].sum(1).numpy(), 1.0, rtol=1e-6)
    assert (f[~rows] == 0).all()  # nothing drawn: an empty shower, not NaN
    np.testing.assert_allclose(hit.float().mean(0).numpy(), [0.9, 0.5, 0.1], atol=0.025)
    # the same noise gives the same shower; decoded_fractions dispatches on the outputs per cell
    assert torch.equal(decoded_fractions(out, u, z), f)
    logits = torch.tensor([[0.0, math.log(3.0)]])[:, None]  # (1, 1, 2): a softmax decoder
    np.testing.assert_allclose(decoded_fractions(logits).numpy(), [[0.25, 0.75]], rtol=1e-6)


def test_a_hurdle_decoder_trains_and_draws_its_cells_from_named_noise(showers) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config(2, vq={**FAMILY.tiny["vq"], "decoder": "hurdle"})
    context = RunContext.fit(showers)
    module = FAMILY.module(config, context)
    x0 = torch.from_numpy(context.preprocessor.transform(showers))
    loss = module.validation_loss((x0, context.spec.encode(showers)), 0)  # type: ignore[operator]
    assert loss is not None and torch.isfinite(loss)
    sampler = FAMILY.sampler(config.model, context)
    v = TOY_GEOMETRY.n_voxels
    assert [(s.name, s.shape, s.distribution) for s in sampler.noise][2:] == [
        ("cell_u", (v,), "uniform"), ("cell_z", (v,), "normal")]
    n = 6
    conditions = (torch.full((n,), 10_000.0), torch.zeros(n), torch.zeros(n),
                  torch.zeros(n, dtype=torch.int64))
    noise = [spec.draw(n, torch.Generator().manual_seed(1)) for spec in sampler.noise]
    with torch.no_grad():
        a = sampler(*conditions, *noise)
        noise[2] = torch.rand(n, v, generator=torch.Generator().manual_seed(9))  # other cells hit
        b = sampler(*conditions, *noise)
    assert (a >= 0).all() and not torch.equal(a > 0, b > 0)
    np.testing.assert_allclose(a.sum(1).numpy(), b.sum(1).numpy(), rtol=1e-5)  # E_tot from the tokens
    with pytest.raises(UnknownNameError, match="VQ-VAE decoder"):
        tiny_model(vq={"decoder": "gaussian"})


# ---- tokens ------------------------------------------------------------------------------------------
def test_ratio_tokens_round_trip_within_a_level_most_significant_digit_first() -> None:
    tokens = RatioTokens(mean_ratio=0.02, span=4.0, base=4, digits=2)  # 16 levels over ln 0.005 .. ln 0.08
    ratio = torch.tensor([0.005, 0.02, 0.0799, 1.0, 1e-6])
    digits = tokens.encode(ratio)
    assert digits.tolist() == [[0, 0], [2, 0], [3, 3], [3, 3], [0, 0]]  # ln 0.02 is the middle: level 8
    back = tokens.decode(digits[:3], torch.full((3,), 0.5))
    width = 2 * math.log(4) / 16  # one level in ln R
    assert np.abs(np.log(back.numpy() / ratio[:3].numpy())).max() <= width


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    keep = lambda **kw: (filter_probabilities(logits, **kw) > 0)[0].tolist()  # noqa: E731
    assert keep() == [True] * 4
    assert keep(top_k=2) == [True, True, False, False]
    assert keep(top_p=0.5) == [True, True, False, False]  # 0.4 < 0.5, 0.4 + 0.3 >= 0.5
    assert keep(top_p=0.4) == [True, False, False, False]
    assert keep(top_p=0.95) == [True] * 4
    sharp = filter_probabilities(logits, temperature=0.5)[0]
    np.testing.assert_allclose((sharp / sharp.sum()).numpy(), np.array([16, 9, 4, 1]) / 30, rtol=1e-5)


def test_inverse_cdf_draws_by_interval_and_never_a_zero_probability_token() -> None:
    probs = torch.tensor([0.2, 0.0, 0.5, 0.3])
    u = torch.tensor([0.0, 0.1, 0.2, 0.69, 0.71, 0.999])
    drawn = inverse_cdf(probs.expand(len(u), -1), u)
    assert drawn.tolist() == [0, 0, 2, 2, 3, 3]
    many = inverse_cdf(probs.expand(20000, -1), torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    np.testing.assert_allclose(np.bincount(many.numpy(), minlength=4) / 20000, probs.numpy(), atol=0.015)


# ---- the sampler: uniform noise and sampling options --------------------------------------------------
@pytest.fixture(scope="module")
def sharp_sampler(showers) -> VqGptSampler:  # type: ignore[no-untyped-def]
    """A freshly built sampler whose prior has sharp, varied logits (heads scaled up)."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the other weights too: the draws below depend on all of them
        torch.manual_seed(0)
        sampler = FAMILY.sampler(tiny_model(), RunContext.fit(showers))
    with torch.no_grad():
        for head in sampler.gpt.heads:
            head.weight.copy_(3.0 * torch.randn(head.weight.shape, generator=generator))
    return sampler.eval()


def tiny_model(**changes: object) -> VqGptConfig:
    return tiny_config(1, **changes).model  # type: ignore[no-any-return]


def tokens_of(sampler: VqGptSampler, u: torch.Tensor, **options: float) -> torch.Tensor:
    cond = torch.zeros(u.shape[0], sampler.encoder.spec.dim)
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, **options}
    with torch.no_grad():
        return generate_tokens(sampler.gpt, cond, u, **settings)  # type: ignore[arg-type]


def test_same_uniform_noise_same_showers_other_noise_other_showers(sharp_sampler: VqGptSampler) -> None:
    n = 8
    conditions = (torch.full((n,), 1e4), torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.int64))

    def noise(seed: int) -> list[torch.Tensor]:
        return [spec.draw(n, torch.Generator().manual_seed(seed)) for spec in sharp_sampler.noise]

    spec = [(s.name, s.distribution) for s in sharp_sampler.noise]
    assert spec == [("token_u", "uniform"), ("ratio_u", "uniform")]
    with torch.no_grad():
        a, b, c = (sharp_sampler(*conditions, *noise(seed)) for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == (n, TOY_GEOMETRY.n_voxels) and (a >= 0).all()


def test_sampling_options_change_the_draws(sharp_sampler: VqGptSampler) -> None:
    u = torch.rand(64, sharp_sampler.gpt.length, generator=torch.Generator().manual_seed(3))
    other = torch.rand(64, sharp_sampler.gpt.length, generator=torch.Generator().manual_seed(4))
    plain = tokens_of(sharp_sampler, u)
    for options in ({"temperature": 0.3}, {"top_k": 2}, {"top_p": 0.5}):
        assert not torch.equal(tokens_of(sharp_sampler, u, **options), plain), options
    # top-k 1 (and a tiny top-p) is greedy: the noise no longer matters
    assert torch.equal(tokens_of(sharp_sampler, u, top_k=1), tokens_of(sharp_sampler, other, top_k=1))
    assert torch.equal(tokens_of(sharp_sampler, u, top_p=1e-6), tokens_of(sharp_sampler, u, top_k=1))
    assert not torch.equal(plain, tokens_of(sharp_sampler, other))
    # a lower temperature concentrates the draws: fewer distinct first codes
    cold = tokens_of(sharp_sampler, u, temperature=0.2)
    assert cold[:, 2].unique().numel() < plain[:, 2].unique().numel()


def test_bad_sampling_options_and_config_are_refused(showers) -> None:  # type: ignore[no-untyped-def]
    context = RunContext.fit(showers)
    with pytest.raises(InputError, match="top_p"):
        FAMILY.sampler(tiny_model(), context, top_p=0.0)
    with pytest.raises(InputError, match="temperature"):
        FAMILY.sampler(tiny_model(), context, temperature=-1.0)
    with pytest.raises(InputError, match="stage1_fraction"):
        tiny_model(stage1_fraction=1.0)
    with pytest.raises(UnknownNameError, match="VQ-VAE size"):
        tiny_model(vq={"size": "huge"})
    with pytest.raises(InputError, match=r"model\.vq\.nonsense"):
        tiny_model(vq={"nonsense": 1})


# ---- training: two stages, one checkpoint, resume in either stage ------------------------------------------
def test_one_run_trains_stage1_then_stage2_into_one_checkpoint(trained: Path) -> None:
    run = trained.parent
    assert logged(run, "train/stage") == [1, 1, 1, 2, 2, 2]
    # codebook usage of the 16 codes, k-means-initialised on the first batch: well spread
    perplexities = logged(run, "train/perplexity")[:3]
    assert all(4 <= p <= 16 for p in perplexities), perplexities
    assert len(logged(run, "train/gpt_loss")) == 3
    content = read_checkpoint(trained)
    assert content.family == "vq-gpt" and content.step == 6
    state = content.sampler_state
    assert state is not None and bool(state["vqvae.quantizer.initialised"])
    assert any(k.startswith("vqvae.encoder.") for k in state)
    assert any(k.startswith("gpt.blocks.") for k in state)


def test_resume_continues_in_the_saved_stage(tmp_path: Path, showers) -> None:  # type: ignore[no-untyped-def]
    # stopped in stage 1 after one step: the resumed run finishes stage 1, then switches at progress 0.5
    out = tmp_path / "a"
    train(showers, out, tiny_config(1), progress=False)
    first = read_checkpoint(out / "model.ckpt").sampler_state
    train(showers, out, resume=True, config=tiny_config(4), progress=False)
    assert logged(out, "train/stage") == [1, 2, 2]  # steps 1 (progress 0.25), 2 (0.5) and 3
    state = read_checkpoint(out / "model.ckpt").sampler_state
    assert first is not None and state is not None
    assert not torch.equal(state["vqvae.quantizer.embedding"], first["vqvae.quantizer.embedding"])
    # stopped in stage 2: a larger budget (progress back below 0.5) keeps stage 2 and the VQ-VAE frozen
    out = tmp_path / "b"
    train(showers, out, tiny_config(4), progress=False)
    frozen = read_checkpoint(out / "model.ckpt").sampler_state
    train(showers, out, resume=True, config=tiny_config(12), progress=False)
    assert logged(out, "train/stage") == [2] * 8  # steps 4 .. 11, progress from 1/3
    state = read_checkpoint(out / "model.ckpt").sampler_state
    assert frozen is not None and state is not None
    for key in ("vqvae.quantizer.embedding", "vqvae.quantizer.ema_count", "vqvae.decoder.out.conv.weight",
                "vqvae.encoder.stem.conv.weight"):
        assert torch.equal(state[key], frozen[key]), key
    assert not torch.equal(state["gpt.heads.1.weight"], frozen["gpt.heads.1.weight"])


def test_module_reads_showers_back_from_the_batch_and_validates(showers) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config(4)
    context = RunContext.fit(showers)
    module = FAMILY.module(config, context)
    x0 = torch.from_numpy(context.preprocessor.transform(showers))
    cond = context.spec.encode(showers)
    back, energy = module.showers_of(x0, cond)  # type: ignore[operator]
    np.testing.assert_allclose(energy.numpy(), showers.energy, rtol=1e-5)
    np.testing.assert_allclose(back.numpy(), showers.showers, rtol=1e-4, atol=1e-4)
    loss = module.validation_loss((x0, cond), 0)  # type: ignore[operator]
    assert loss is not None and torch.isfinite(loss)
    assert torch.equal(loss, module.validation_loss((x0, cond), 0))  # type: ignore[operator]
    # --init-from: another run's sampler weights load into both stages and the prior's average
    other = FAMILY.module(tiny_config(4, vq={**FAMILY.tiny["vq"], "kmeans_iters": 3}), context)
    state = module.sampler_state_dict()  # type: ignore[operator]
    other.load_sampler_state_dict(state)  # type: ignore[operator]
    loaded = other.sampler_state_dict()  # type: ignore[operator]
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


# ---- export with the sampling options ---------------------------------------------------------------
def test_export_with_top_k_and_top_p_matches_onnxruntime(trained: Path, tmp_path: Path) -> None:
    generator = load_generator(trained)
    path = export_sampler(generator, tmp_path / "m.onnx", temperature=0.8, top_k=3, top_p=0.9)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"TopK", "CumSum", "Gather"} <= ops
    assert check_export(generator, path, n=5, seed=2) < 1e-4
    assert check_export(generator, path, n=1, seed=3) < 1e-4


def test_a_hurdle_model_exports_whole_and_reconstructs_reproducibly(  # type: ignore[no-untyped-def]
    showers, tmp_path: Path
) -> None:
    model = train(showers, tmp_path / "run", tiny_config(2, vq={**FAMILY.tiny["vq"], "decoder": "hurdle"}),
                  progress=False)
    generator = load_generator(model)
    path = export_sampler(generator, tmp_path / "m.onnx")
    inputs = [i.name for i in onnx.load(str(path)).graph.input]
    assert inputs[-2:] == ["cell_u", "cell_z"]
    assert check_export(generator, path, n=4, seed=5) < 1e-4
    part = type(showers)(showers.showers[:6], showers.geometry, showers.energy[:6])
    a, b = (reconstruct_showers(generator, part, seed=s).showers for s in (1, 1))
    c = reconstruct_showers(generator, part, seed=2).showers
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a > 0, c > 0)  # another draw lights other cells
    np.testing.assert_allclose(a.sum(1), part.showers.sum(1), rtol=1e-4)  # each keeps its E_tot


# ---- the reconstruction diagnostic ------------------------------------------------------------------
def test_reconstruction_only_showers_keep_shape_conditions_and_energy(trained: Path, showers) -> None:  # type: ignore[no-untyped-def]
    generator = load_generator(trained)
    part = showers.showers[:10]
    rebuilt = reconstruct_showers(generator, type(showers)(part, showers.geometry, showers.energy[:10]),
                                  batch_size=4)
    assert rebuilt.showers.shape == (10, TOY_GEOMETRY.n_voxels) and (rebuilt.showers >= 0).all()
    np.testing.assert_array_equal(rebuilt.energy, showers.energy[:10])
    np.testing.assert_allclose(rebuilt.showers.sum(1), part.sum(1), rtol=1e-4)  # E_tot kept exactly
    assert not np.allclose(rebuilt.showers, part)  # a 6-step autoencoder is not the identity
    # the tensor form agrees
    sampler = generator.sampler
    assert isinstance(sampler, VqGptSampler)
    n = 3
    tensor = reconstruct(sampler, torch.from_numpy(part[:n]), torch.from_numpy(showers.energy[:n]).float(),
                         torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.int64))
    np.testing.assert_allclose(tensor.numpy(), rebuilt.showers[:n], rtol=1e-5)


def test_a_calibrated_checkpoint_reconstructs_through_its_calibration(  # type: ignore[no-untyped-def]
    trained: Path, showers, tmp_path: Path
) -> None:
    calibrated = tmp_path / "calibrated.ckpt"
    calibrate_checkpoint(trained, showers, calibrated, CalibrationConfig(n_showers=32, n_energy_bins=1,
                         n_quantiles=5, match_hit_count=True), seed=1, batch_size=16)
    generator = load_generator(calibrated)
    part = type(showers)(showers.showers[:8], showers.geometry, showers.energy[:8])
    got = reconstruct_showers(generator, part, batch_size=3).showers
    raw = reconstruct_showers(load_generator(trained), part).showers
    calibration = generator.sampler.calibration  # type: ignore[union-attr]
    expected = calibration(torch.from_numpy(raw), torch.from_numpy(part.energy).float()).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, raw)  # the map moved the cells
