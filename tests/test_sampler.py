"""The sampler contract's helpers (``caloforge.sampler``): the noise spec, its draws and the "bits" noise, and
the readout threshold ``zero_below``."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from scipy import stats

from caloforge.sampler import BITS_FIELDS, NoiseSpec, bits_from_uniform, normal_from_bits, zero_below


@pytest.mark.parametrize("exporting", [False, True])
def test_normal_from_bits_reads_each_16_bit_words_low_15_bits_lowest_first_off_the_normal_quantiles(
    exporting: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: exporting)  # the graph's shifts, or a view
    fields = torch.tensor([[3, 0, 32767, 12345], [16384, 1, 2, 32767]])  # (2 numbers, 4 fields)
    bits = (fields * torch.tensor([1, 2**16, 2**32, 2**48])).sum(1)
    bits = bits + (1 << 15) + (1 << 31) + (1 << 47)  # each word's top bit is not read
    z = normal_from_bits(bits[None, :])  # (1, 2) -> (1, 8)
    assert z.dtype == torch.float32 and z.shape == (1, 8)
    expected = stats.norm.ppf((fields.reshape(-1).numpy() + 0.5) / 2**15)
    np.testing.assert_allclose(z[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert normal_from_bits(torch.zeros(0, 3, dtype=torch.int64)).shape == (0, 12)


def test_bits_from_uniform_keeps_each_numbers_leading_15_bits() -> None:
    u = torch.rand(50, 3, BITS_FIELDS, generator=torch.Generator().manual_seed(0))
    z = normal_from_bits(bits_from_uniform(u))  # (50, 12)
    expected = stats.norm.ppf((np.floor(u.reshape(50, -1).double().numpy() * 2**15) + 0.5) / 2**15)
    np.testing.assert_allclose(z.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert bits_from_uniform(torch.tensor([[0.99999999, 0.0, 0.0, 1.0]])).item() == 32767 + (32767 << 48)


@pytest.mark.parametrize("runtime", ["torch", "numpy"])
def test_bits_noise_gives_independent_normal_numbers(runtime: str) -> None:
    spec = NoiseSpec("z", (2,), "bits")
    if runtime == "torch":
        bits = spec.draw(40_000, torch.Generator().manual_seed(1))
    else:
        drawn = spec.draw_numpy(40_000, np.random.default_rng(1))
        assert drawn.dtype == np.int64 and (drawn >= 0).all() and (drawn >= 2**62).any()
        bits = torch.from_numpy(drawn)
    assert bits.dtype == torch.int64 and bits.shape == (40_000, 2)
    z = normal_from_bits(bits).double()  # (n, 8)
    for k in range(8):
        assert stats.kstest(z[:, k].numpy(), "norm").pvalue > 1e-3
    correlation = torch.corrcoef(z.T) - torch.eye(8, dtype=z.dtype)
    assert correlation.abs().max() < 0.03


def test_middle_of_each_distribution() -> None:
    assert NoiseSpec("a", (3,), "normal").middle(2).eq(0).all()
    assert NoiseSpec("b", (), "uniform").middle(2).eq(0.5).all()
    middle = NoiseSpec("c", (4, 1), "bits").middle(2)
    assert middle.shape == (2, 4, 1) and middle.dtype == torch.int64
    z = normal_from_bits(middle.reshape(-1, 1))  # every field 2^14: the quantile at (2^14 + 1/2) / 2^15
    assert z.shape == (8, 4) and z.abs().max() < 1e-4


def test_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="distribution 'poisson' is not one of"):
        NoiseSpec("z", (1,), "poisson")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_below_keeps_values_from_the_threshold_up_in_their_dtype(dtype: torch.dtype) -> None:
    at = torch.tensor(0.0125, dtype=dtype)  # the threshold as the values' dtype holds it
    just_below = torch.nextafter(at, torch.tensor(0.0, dtype=dtype))
    values = torch.stack([torch.tensor(v, dtype=dtype) for v in (float("nan"), -1.0, 0.0, 0.0124)]
                         + [just_below, at, torch.nextafter(at, torch.tensor(1.0, dtype=dtype)),
                            torch.tensor(3.0, dtype=dtype)])
    out = zero_below(values, 0.0125)
    assert out.dtype == dtype and torch.isnan(out[0])
    expected = torch.where(values < 0.0125, torch.zeros_like(values), values)  # what it replaced
    assert torch.equal(out[1:], expected[1:])
    assert out[1:5].eq(0).all() and torch.equal(out[5:], values[5:])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's, as export.graphs
def test_zero_below_exports_as_one_thresholded_relu_that_onnxruntime_runs_alike() -> None:
    class Cut(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return zero_below(x * 1.0, 0.0125)

    buffer = io.BytesIO()
    torch.onnx.export(Cut(), (torch.rand(2, 64),), buffer, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert [n.op_type for n in model.graph.node if n.op_type != "Constant"] == ["Mul", "ThresholdedRelu"]
    values = torch.rand(40, 64, generator=torch.Generator().manual_seed(1)) * 0.025
    values[0, :3] = torch.tensor([0.0125, float(np.nextafter(np.float32(0.0125), np.float32(0))), 0.0])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": values.numpy()})[0]
    np.testing.assert_array_equal(got, zero_below(values, 0.0125).numpy())
    assert got[0, 0] == np.float32(0.0125) and got[0, 1] == 0 and (got > 0).sum() > 1000
