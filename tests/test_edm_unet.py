"""The edm-unet family: its config, the denoiser it builds (GLaM only for irregular readouts), the
DiT's samplers and layer-energy stage unchanged, the diffusion loss training GLaM, ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from caloforge.config import from_dict
from caloforge.context import RunContext
from caloforge.data import ShowerSet
from caloforge.errors import InputError, UnknownNameError
from caloforge.families import get_family
from caloforge.families.edm_dit import SampleConfig
from caloforge.families.edm_unet import EdmUnetConfig
from caloforge.families.edm_unet.sampler import EdmUnetSampler, build_unet_denoiser
from caloforge.geometry import PRESETS
from caloforge.models.glam import GLaMBackbone
from caloforge.models.unet import UNet, UNetConfig
from caloforge.preprocess import PreprocessConfig
from caloforge.runconfig import RunConfig

PHOTONS = PRESETS["calochallenge-1-photons"]
TINY = EdmUnetConfig(unet=UNetConfig(size="tiny"), sample=SampleConfig(n_steps=2))


def _context(layer_energies: bool) -> RunContext:
    rng = np.random.default_rng(0)
    energy = np.exp(rng.uniform(np.log(1e3), np.log(1e5), 40))
    showers = rng.gamma(1.0, 1.0, (40, PHOTONS.n_voxels)) * energy[:, None] / 400
    showers[showers < 0.3] = 0.0
    data = ShowerSet(showers.astype(np.float32), PHOTONS, energy)
    return RunContext.fit(data, PreprocessConfig(layer_energies=layer_energies))


def test_config_section_is_typed_and_checked() -> None:
    family = get_family("edm-unet")
    assert family.config is EdmUnetConfig and family.sample_options == ("n_steps", "sampler", "fill_layers")
    config = from_dict(EdmUnetConfig, {"unet": {"size": "tiny", "multipliers": [1, 2, 2]},
                                       "glam": {"init_noise": 0.0}}, prefix="model")
    assert config.unet.resolved().multipliers == (1, 2, 2) and config.glam.init_noise == 0.0
    with pytest.raises(InputError, match=r"model\.unet\.widht"):
        from_dict(EdmUnetConfig, {"unet": {"widht": 3}}, prefix="model")
    with pytest.raises(UnknownNameError, match="U-Net size"):
        EdmUnetConfig(unet=UNetConfig(size="huge"))


def test_glam_only_for_irregular_readouts() -> None:
    regular = build_unet_denoiser(TINY, PRESETS["calochallenge-2"], 3, layers=False)
    assert isinstance(regular.backbone, UNet)
    irregular = build_unet_denoiser(TINY, PHOTONS, 3, layers=True)
    assert isinstance(irregular.backbone, GLaMBackbone)
    assert irregular.backbone.backbone.grid == (5, 10, 30)
    # with the layer-energy stage the U-Net also reads the 1 + 24 standardised layer values
    assert irregular.backbone.backbone.cond_embed[0].in_features == 3 + 1 + PHOTONS.n_layers


def test_the_diffusion_loss_trains_glam() -> None:
    torch.manual_seed(0)
    edm = build_unet_denoiser(TINY, PHOTONS, 2, layers=False)
    for module in edm.modules():  # leave the zero start so gradients reach the input maps
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.normal_(module.weight, std=0.1)
    loss = edm.loss(torch.randn(8, PHOTONS.n_voxels), torch.randn(8, 2), torch.Generator().manual_seed(1))
    loss.backward()
    backbone = edm.backbone
    assert isinstance(backbone, GLaMBackbone)
    for matrices in (backbone.glam.encoders, backbone.glam.decoders):
        assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in matrices)


@pytest.mark.parametrize(("sampler", "layer_energies"), [("dpmpp_2m_logsnr", True), ("stochastic", False)])
def test_sampler_reuses_the_dit_samplers_and_stage(sampler: str, layer_energies: bool) -> None:
    context = _context(layer_energies)
    family = get_family("edm-unet")
    torch.manual_seed(0)
    model = family.sampler(TINY, context, n_steps=3, sampler=sampler)
    options = {"n_steps": 3, "sampler": sampler, **({"fill_layers": False} if layer_energies else {})}
    assert isinstance(model, EdmUnetSampler) and model.options == options
    if not layer_energies:
        with pytest.raises(InputError, match="without a layer-energy stage"):
            family.sampler(TINY, context, fill_layers=True)
    names = [spec.name for spec in model.noise]
    assert names[0] == "noise" and model.noise[0].shape == (PHOTONS.n_voxels,)
    assert ("layer_noise" in names) == layer_energies and ("step_noise" in names) == (sampler == "stochastic")
    n = 3
    generator = torch.Generator().manual_seed(2)
    noise = [spec.draw(n, generator) for spec in model.noise]
    conditions = (torch.full((n,), 1e4), torch.full((n,), 1.5708), torch.zeros(n),
                  torch.zeros(n, dtype=torch.int64))
    with torch.no_grad():
        showers = model(*conditions, *noise)
    assert showers.shape == (n, PHOTONS.n_voxels) and torch.isfinite(showers).all() and (showers >= 0).all()


def test_module_weights_are_the_samplers() -> None:
    from caloforge.families.edm_unet.module import EdmUnetModule

    context = _context(True)
    run = RunConfig(family="edm-unet", model=TINY)
    module = get_family("edm-unet").module(run, context)
    assert isinstance(module, EdmUnetModule)
    state = module.sampler_state_dict()
    assert any(".glam.encoders.0" in k for k in state) and any(k.startswith("layer_denoiser.") for k in state)
    sampler = get_family("edm-unet").sampler(TINY, context)
    sampler.load_state_dict(state)  # strict: exactly the sampler's weights
    module.load_sampler_state_dict(state)


# With a patch stem that does not divide GLaM's 5 x 10 x 30 grid: padded patches, transposed conv, head.
PATCHED = EdmUnetConfig(unet=UNetConfig(size="tiny", patch=(2, 3, 4)), sample=SampleConfig(n_steps=2))


@pytest.mark.parametrize("config", [TINY, PATCHED], ids=["unet", "patch-stem"])
def test_onnx_sampler_matches_pytorch_on_dataset1(config: EdmUnetConfig) -> None:
    ort = pytest.importorskip("onnxruntime")
    import io
    import warnings

    context = _context(True)
    torch.manual_seed(0)
    model = get_family("edm-unet").sampler(config, context, n_steps=2, sampler="dpmpp_2m_logsnr").eval()
    for module in model.modules():  # a non-trivial network (the untrained U-Net outputs 0)
        if isinstance(module, torch.nn.Conv3d):
            torch.nn.init.normal_(module.weight, std=0.1)
    n = 2
    generator = torch.Generator().manual_seed(3)
    noise = [spec.draw(n, generator) for spec in model.noise]
    inputs = (torch.tensor([3e3, 4e4]), torch.full((n,), 1.5708), torch.zeros(n),
              torch.zeros(n, dtype=torch.int64), *noise)
    names = ["energy", "theta", "phi", "detector", *[s.name for s in model.noise]]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=17, input_names=names,
                          output_names=["showers"])
        expected = model(*inputs).numpy()
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(names, inputs, strict=True)
             if name in {i.name for i in session.get_inputs()}}
    (got,) = session.run(None, feeds)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    assert np.abs(expected).max() > 0
