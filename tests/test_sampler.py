"""The sampler contract's noise spec: how its noise is drawn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from caloforge.sampler import DRAW_PARTS, PARALLEL_DRAW_FROM, NoiseSpec

LARGE = NoiseSpec("hits", (PARALLEL_DRAW_FROM // 8, 8), "uniform")  # one shower's draw is the threshold


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_small_draw_is_the_generators_own() -> None:
    spec = NoiseSpec("z", (5, 3), "normal")
    drawn = spec.draw(4, torch.Generator().manual_seed(2))
    assert torch.equal(drawn, torch.randn((4, 5, 3), generator=torch.Generator().manual_seed(2)))


@pytest.mark.usefixtures("threads")
def test_a_large_draw_depends_on_the_seed_not_on_the_threads() -> None:
    torch.set_num_threads(2)
    on_two = LARGE.draw(3, torch.Generator().manual_seed(7))
    torch.set_num_threads(1)
    on_one = LARGE.draw(3, torch.Generator().manual_seed(7))
    assert on_two.shape == (3, *LARGE.shape)
    assert torch.equal(on_two, on_one)
    assert not torch.equal(on_two, LARGE.draw(3, torch.Generator().manual_seed(8)))


def test_a_large_draws_parts_are_independent_uniform_numbers() -> None:
    drawn = LARGE.draw(4, torch.Generator().manual_seed(0)).reshape(DRAW_PARTS, -1)
    assert drawn.min() >= 0 and drawn.max() < 1
    assert drawn.mean(1).sub(0.5).abs().max() < 0.005  # each part: ~260,000 numbers, sigma of a mean 6e-4
    first = drawn[:, :1000]
    assert torch.corrcoef(first).triu(1).abs().max() < 0.15  # no part repeats another (seeds differ)


def test_a_large_normal_draw_is_standard_normal() -> None:
    spec = NoiseSpec("z", (PARALLEL_DRAW_FROM,), "normal")
    drawn = spec.draw(2, torch.Generator().manual_seed(1))
    assert abs(float(drawn.mean())) < 0.01 and abs(float(drawn.std()) - 1) < 0.01
