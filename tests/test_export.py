"""ONNX export: parity with PyTorch (denoiser, whole sampler, batch 1 and > 1) and Geant4 Par04's contract.

A tiny DiT trained for a few steps on toy showers, its weights then jittered (seeded) so the backbone
contributes to every output rather than the near-zero adaLN-Zero initialisation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from toys import tiny_dit_config
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.export import METADATA_KEY, export_extras, export_par04, export_sampler, par04_permutation
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.geometry import CylindricalGeometry
from caloforge.onnx_runtime import check_export
from caloforge.runconfig import TrainConfig
from caloforge.training import train

# Every axis a different length (layers 5, alpha 4, radial 3), so a swapped axis cannot go unnoticed.
GEOMETRY = CylindricalGeometry.regular("toy-export", 5, 4, (0.0, 2.0, 4.0, 6.0), 3.4, "SiW")


def toy_showers(n: int = 96, seed: int = 0) -> ShowerSet:
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(math.log(1e3), math.log(1e5), n))
    profile = np.exp(-np.arange(GEOMETRY.n_voxels) / 15.0)
    showers = profile * rng.gamma(2.0, 1.0, (n, GEOMETRY.n_voxels)) * energy[:, None] / 40
    showers[showers < 0.5] = 0.0
    return ShowerSet(
        showers.astype(np.float32), GEOMETRY, energy, theta=rng.uniform(1.3, 1.8, n),
        phi=rng.uniform(-0.4, 0.4, n), detector=rng.integers(0, 2, n),
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_dit_config((2, 2, 3))
    config.train = TrainConfig(batch_size=16, max_steps=4, checkpoint_every=4, accelerator="cpu", devices=1)
    config.model.sample.n_steps = 4
    return train(toy_showers(), tmp_path_factory.mktemp("run") / "run", config, progress=False)


@pytest.fixture(scope="module")
def generator(checkpoint: Path) -> ShowerGenerator:
    gen = load_generator(checkpoint)
    noise = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in gen.sampler.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    return rebased(gen)


def rebased(gen: ShowerGenerator) -> ShowerGenerator:
    """The generator with its jittered weights as the checkpoint's, so samplers built with other options
    (``sampler_for``) get them too."""
    content = dataclasses.replace(gen.content, sampler_state=dict(gen.sampler.state_dict()))
    return dataclasses.replace(gen, content=content, _built={})


def conditions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "energy": np.exp(rng.uniform(math.log(2e3), math.log(8e4), n)).astype(np.float32),
        "theta": rng.uniform(1.35, 1.75, n).astype(np.float32),
        "phi": rng.uniform(-0.3, 0.3, n).astype(np.float32),
        "detector": (np.arange(n) % 2).astype(np.int64),
    }


def assert_close_to_scale(got: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """allclose with an absolute tolerance relative to the largest value (showers span decades)."""
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def test_denoiser_graph_matches_pytorch(generator: ShowerGenerator, tmp_path: Path) -> None:
    (path,) = export_extras(generator, tmp_path / "m.onnx")
    assert path.name == "m.denoiser.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # a run without a layer-energy stage has no layer vector to condition on
    assert [i.name for i in session.get_inputs()] == ["x", "sigma", "energy", "theta", "phi", "detector"]
    for n in (1, 5):
        cond = conditions(n, seed=n)
        x = np.random.default_rng(n).standard_normal((n, GEOMETRY.n_voxels)).astype(np.float32) * 3
        sigma = np.geomspace(0.01, 40.0, n).astype(np.float32)
        got = session.run(["denoised"], {"x": x, "sigma": sigma, **cond})[0]
        with torch.no_grad():
            sampler = generator.sampler
            encoded = sampler.encoder(*(torch.from_numpy(cond[k]) for k in ("energy", "theta", "phi")),
                                      torch.from_numpy(cond["detector"]))
            expected = sampler.denoiser(torch.from_numpy(x), torch.from_numpy(sigma), encoded).numpy()
        assert not np.allclose(expected, x, atol=1e-3)  # the backbone contributes
        assert_close_to_scale(got, expected)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "dpmpp_2m_logsnr"])
def test_sampler_graph_matches_generator_on_the_same_noise(
    generator: ShowerGenerator, tmp_path: Path, sampler: str
) -> None:
    path = export_sampler(generator, tmp_path / "sampler.onnx", n_steps=3, sampler=sampler)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["showers"]
    for n in (1, 6):
        cond = conditions(n, seed=10 + n)
        # ShowerGenerator.sample draws its noise as randn((n, V), generator seeded with seed) * sigma_max.
        noise = torch.randn((n, GEOMETRY.n_voxels), generator=torch.Generator().manual_seed(5)).numpy()
        got = session.run(["showers"], {"noise": noise, **cond})[0]
        expected = generator.sample(
            cond["energy"], cond["theta"], cond["phi"], cond["detector"], n_steps=3, sampler=sampler,
            seed=5, batch_size=n,
        ).showers
        assert got.shape == (n, GEOMETRY.n_voxels) and got.dtype == np.float32
        assert (expected > 0).any() and (got >= 0).all()
        assert_close_to_scale(got, expected)


def test_metadata_names_the_graph_and_its_sampling(generator: ShowerGenerator, tmp_path: Path) -> None:
    path = export_sampler(generator, tmp_path / "s.onnx", n_steps=2, sampler="euler")
    entries = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = json.loads(entries[METADATA_KEY])
    assert meta["graph"] == "sampler" and meta["family"] == "edm-dit"
    assert meta["options"] == {"n_steps": 2, "sampler": "euler"}
    assert [spec["name"] for spec in meta["noise"]] == ["noise"]
    assert CylindricalGeometry.from_dict(meta["context"]["geometry"]) == GEOMETRY
    assert meta["sigmas"] == pytest.approx(generator.sampler.denoiser.sigmas(2).tolist())
    assert meta["context"]["ranges"]["energy_min"] == pytest.approx(generator.content.ranges.energy_min)
    assert [p.name for p in tmp_path.iterdir()] == ["s.onnx"]  # atomic write left no temporary file


def test_stochastic_sampler_exports_with_its_step_noise_as_inputs(
    generator: ShowerGenerator, tmp_path: Path
) -> None:
    # Every random number is a declared input, so even the stochastic sampler is a function of them.
    path = export_sampler(generator, tmp_path / "s.onnx", sampler="stochastic", n_steps=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][-2:] == ["noise", "step_noise"]
    assert check_export(generator, path, n=3) < 1e-4
    expected = generator.sample([2e4, 3e4], [1.5, 1.6], [0.0, 0.1], [0, 1], seed=4, sampler="stochastic",
                                n_steps=3).showers
    again = generator.sample([2e4, 3e4], [1.5, 1.6], [0.0, 0.1], [0, 1], seed=4, sampler="stochastic",
                             n_steps=3).showers
    np.testing.assert_array_equal(expected, again)
    with pytest.raises(InputError, match="n_steps"):
        export_sampler(generator, tmp_path / "bad.onnx", n_steps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx"]


def test_par04_permutation_is_geometry_to_par04(generator: ShowerGenerator) -> None:
    flat = np.random.default_rng(0).random((3, GEOMETRY.n_voxels))
    expected = GEOMETRY.to_par04(flat).reshape(3, -1)  # (N, R*PHI*Z), z fastest
    np.testing.assert_array_equal(flat[:, par04_permutation(generator).numpy()], expected)
    # by hand: Par04 position 1 is (r 0, phi 0, z 1) = caloforge (layer 1, alpha 0, radial 0) = 4 * 3
    assert int(par04_permutation(generator)[1]) == GEOMETRY.flat_index(1, 0, 0) == 12


def par04_cpp_run(
    session: ort.InferenceSession, energy_mev: float, theta: float, phi: float, slot: int
) -> np.ndarray:
    """What Par04's C++ does with a CaloDiT-2 ONNX model (Geant4 examples/extended/parameterisations/
    Par04: Par04InferenceSetup.cc GetEnergies, Par04OnnxInference.cc RunInference); one session, one
    run per particle."""
    gen_vector = np.zeros(8, dtype=np.float32)  # genVector.assign(8, 0)
    gen_vector[0] = energy_mev / 1000  # "convert to GeV"
    gen_vector[1], gen_vector[2] = phi, theta
    gen_vector[3 + slot] = 1.0
    input_name = session.get_inputs()[-1].name  # fInames holds the last input's name
    outputs = session.run([o.name for o in session.get_outputs()], {input_name: gen_vector.reshape(1, 8)})
    size = GEOMETRY.n_radial * GEOMETRY.n_alpha * GEOMETRY.n_layers
    return outputs[0].reshape(-1)[:size].astype(np.float64) * 1000  # floatarr[i], then "* 1000"


def par04_cpp_positions() -> np.ndarray:
    """Cell centres in the order of Par04InferenceSetup::GetPositions (r, then phi, then z fastest)."""
    n_r, n_phi, n_z = GEOMETRY.n_radial, GEOMETRY.n_alpha, GEOMETRY.n_layers
    d_r, d_z = 2.0, 3.4
    positions = []
    for i_r in range(n_r):
        for i_phi in range(n_phi):
            for i_z in range(n_z):
                angle = (i_phi + 0.5) * 2 * math.pi / n_phi - math.pi
                positions.append(((i_r + 0.5) * d_r * math.cos(angle), (i_r + 0.5) * d_r * math.sin(angle),
                                  (i_z + 0.5) * d_z))
    return np.asarray(positions)


def test_par04_graph_fed_as_the_cpp_does_places_caloforge_showers(
    generator: ShowerGenerator, tmp_path: Path
) -> None:
    noise = torch.randn(GEOMETRY.n_voxels, generator=torch.Generator().manual_seed(3))
    path = export_par04(generator, tmp_path / "par04.onnx", n_steps=3, sampler="heun",
                        fixed_noise={"noise": noise})
    energy, theta, phi = 2.5e4, 1.45, 0.12
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    energies = par04_cpp_run(session, energy, theta, phi, slot=1)
    # caloforge's own shower for the same noise (its first randn((1, V)) draw with seed 3) and conditions,
    # placed at caloforge's own voxel centres
    expected = generator.sample([energy], [theta], [phi], [1], n_steps=3, sampler="heun", seed=3).showers[0]
    centres = GEOMETRY.voxel_centres
    by_position = {tuple(np.round(p, 6)): k for k, p in enumerate(
        np.stack([centres["x"], centres["y"], centres["z"]], axis=1))}
    order = [by_position[tuple(np.round(p, 6))] for p in par04_cpp_positions()]
    assert sorted(order) == list(range(GEOMETRY.n_voxels))
    assert expected.sum() > 0
    np.testing.assert_allclose(energies, expected[order], rtol=1e-4, atol=1e-4 * expected.max())


def test_par04_graph_is_one_input_one_output_with_noise_inside(
    generator: ShowerGenerator, tmp_path: Path
) -> None:
    path = export_par04(generator, tmp_path / "par04.onnx", n_steps=2)
    model = onnx.load(str(path))
    assert "RandomNormalLike" in {node.op_type for node in model.graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(float)" and inp.shape[1] == 8 and out.type == "tensor(float)"
    a = par04_cpp_run(session, 1e4, math.pi / 2, 0.0, slot=0)
    b = par04_cpp_run(session, 1e4, math.pi / 2, 0.0, slot=0)
    assert a.shape == (GEOMETRY.n_voxels,) and np.isfinite(a).all() and (a >= 0).all()
    assert not np.array_equal(a, b)  # fresh noise on every run of the session, as Geant4 needs


def test_check_sampler_export_reports_agreement(generator: ShowerGenerator, tmp_path: Path) -> None:
    path = export_sampler(generator, tmp_path / "s.onnx", n_steps=2, sampler="dpmpp_2m")
    assert check_export(generator, path, n=3) < 1e-4


def test_cli_export_writes_both_graphs_and_par04(checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "m.onnx"),
                                 "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "largest difference" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.denoiser.onnx", "m.onnx"]
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "p.onnx"),
                                 "--target", "par04", "--steps", "2"])
    assert result.exit_code == 0, result.output
    entries = {p.key: p.value for p in onnx.load(str(tmp_path / "p.onnx")).metadata_props}
    meta = json.loads(entries[METADATA_KEY])
    assert meta["graph"] == "par04" and meta["par04"]["output_unit"] == "GeV"
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "x.onnx"),
                                 "--target", "geant5"])
    assert result.exit_code != 0 and "target" in str(result.exception)


def test_par04_refuses_a_mesh_the_cpp_cannot_place(generator: ShowerGenerator, tmp_path: Path) -> None:
    uneven = CylindricalGeometry.regular("uneven", 5, 4, (0.0, 1.0, 4.0, 6.0), 3.4, "SiW")
    context = dataclasses.replace(generator.content.context, geometry=uneven)
    moved = dataclasses.replace(generator, content=dataclasses.replace(generator.content, context=context))
    with pytest.raises(InputError, match="unequal radial bins"):
        export_par04(moved, tmp_path / "p.onnx")
    assert not any(tmp_path.iterdir())


def test_sampler_graph_applies_the_energy_ratio_model(tmp_path: Path) -> None:
    config = tiny_dit_config((2, 2, 3))
    config.preprocess.energy_ratio = True  # rescale each shower to a drawn E_tot / E_inc
    config.train = TrainConfig(batch_size=16, max_steps=2, checkpoint_every=2, accelerator="cpu", devices=1)
    gen = load_generator(train(toy_showers(), tmp_path / "run", config, progress=False))
    assert gen.sampler.energy_ratio is not None
    path = export_sampler(gen, tmp_path / "s.onnx", n_steps=2, sampler="dpmpp_2m")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "u" in [i.name for i in session.get_inputs()]
    cond = conditions(4, seed=3)
    # ShowerGenerator.sample draws the noise, then u, from its generator
    draws = torch.Generator().manual_seed(9)
    noise = torch.randn((4, GEOMETRY.n_voxels), generator=draws).numpy()
    u = torch.rand(4, generator=draws).numpy()
    got = session.run(["showers"], {"noise": noise, "u": u, **cond})[0]
    expected = gen.sample(cond["energy"], cond["theta"], cond["phi"], cond["detector"], n_steps=2,
                          sampler="dpmpp_2m", seed=9, batch_size=4).showers
    assert_close_to_scale(got, expected)
    ratio = got.sum(axis=1) / cond["energy"]
    np.testing.assert_allclose(ratio, gen.sampler.energy_ratio(torch.from_numpy(cond["energy"]),
                                                       torch.from_numpy(u)).numpy(), rtol=1e-4)
    assert check_export(gen, path, n=3) < 1e-4


def test_sampler_graph_runs_the_layer_energy_stage(tmp_path: Path) -> None:
    config = tiny_dit_config((2, 2, 3))
    config.preprocess.layer_energies = True  # draw each shower's layer energies first
    config.model.layers.width, config.model.layers.depth = 16, 1
    config.train = TrainConfig(batch_size=16, max_steps=2, checkpoint_every=2, accelerator="cpu", devices=1)
    gen = load_generator(train(toy_showers(), tmp_path / "run", config, progress=False))
    assert gen.sampler.layer_denoiser is not None and gen.sampler.layer_energies is not None
    noise_gen = torch.Generator().manual_seed(12)
    with torch.no_grad():  # make the stage's draw depend on its noise (its output layer starts at zero)
        for p in gen.sampler.layer_denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise_gen))
    gen = rebased(gen)
    path = export_sampler(gen, tmp_path / "s.onnx", n_steps=2, sampler="dpmpp_2m")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs["layer_noise"][1] == 1 + GEOMETRY.n_layers and "u" not in inputs
    cond = conditions(4, seed=3)
    # ShowerGenerator.sample draws the DiT's noise, then the layer stage's, from its generator
    draws = torch.Generator().manual_seed(9)
    noise = torch.randn((4, GEOMETRY.n_voxels), generator=draws).numpy()
    layer_noise = torch.randn((4, 1 + GEOMETRY.n_layers), generator=draws).numpy()
    got = session.run(["showers"], {"noise": noise, "layer_noise": layer_noise, **cond})[0]
    expected = gen.sample(cond["energy"], cond["theta"], cond["phi"], cond["detector"], n_steps=2,
                          sampler="dpmpp_2m", seed=9, batch_size=4).showers
    assert_close_to_scale(got, expected)
    other = session.run(["showers"], {"noise": noise, "layer_noise": -layer_noise, **cond})[0]
    assert not np.allclose(other, got)  # the layer noise reaches the showers
    assert check_export(gen, path, n=3) < 1e-4
    # filling the layers the DiT left empty (fill_layers) exports too: gather, argmax and scatter
    filled = export_sampler(gen, tmp_path / "f.onnx", n_steps=2, sampler="dpmpp_2m", fill_layers=True)
    got = ort.InferenceSession(str(filled), providers=["CPUExecutionProvider"]).run(
        ["showers"], {"noise": noise, "layer_noise": layer_noise, **cond})[0]
    expected = gen.sample(cond["energy"], cond["theta"], cond["phi"], cond["detector"], n_steps=2,
                          sampler="dpmpp_2m", fill_layers=True, seed=9, batch_size=4).showers
    assert_close_to_scale(got, expected)
    # the denoiser graph takes the layer vector the DiT is conditioned on, and the DiT reads it
    with torch.no_grad():
        for p in gen.sampler.denoiser.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise_gen))
    (denoiser_path,) = export_extras(gen, tmp_path / "d.onnx")
    denoiser = ort.InferenceSession(str(denoiser_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in denoiser.get_inputs()][-1] == "layers"
    x = np.random.default_rng(4).standard_normal((4, GEOMETRY.n_voxels)).astype(np.float32)
    sigma = np.full(4, 0.5, dtype=np.float32)
    layers = np.random.default_rng(5).standard_normal((4, 1 + GEOMETRY.n_layers)).astype(np.float32)
    d = denoiser.run(["denoised"], {"x": x, "sigma": sigma, "layers": layers, **cond})[0]
    with torch.no_grad():
        encoded = gen.sampler.encoder(*(torch.from_numpy(cond[k]) for k in ("energy", "theta", "phi")),
                              torch.from_numpy(cond["detector"]))
        expected = gen.sampler.denoiser(torch.from_numpy(x), torch.from_numpy(sigma),
                                torch.cat([encoded, torch.from_numpy(layers)], dim=1)).numpy()
    assert_close_to_scale(d, expected)
    d2 = denoiser.run(["denoised"], {"x": x, "sigma": sigma, "layers": -layers, **cond})[0]
    assert not np.allclose(d, d2, atol=1e-4)  # the layer vector conditions the DiT
    par04 = export_par04(gen, tmp_path / "par04.onnx", n_steps=2)
    a = par04_cpp_run(ort.InferenceSession(str(par04), providers=["CPUExecutionProvider"]), 1e4, 1.5, 0.0, 0)
    assert np.isfinite(a).all() and (a >= 0).all() and a.sum() > 0
