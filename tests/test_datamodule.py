"""Streamed training data: ``io.ShowerSource`` blocks, fits over chunks equal to fits in memory, and the
stream's order (sharding across ranks and workers, resuming, bounded memory, validation split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from toys import TOY_GEOMETRY, toy_showers

from caloforge.context import RunContext
from caloforge.data import ShowerSet
from caloforge.datamodule import ShowerDataModule, ShowerStream, bucket_by_hits, split_validation, voxel_batch
from caloforge.errors import InputError
from caloforge.geometry import get_geometry
from caloforge.io import read_showers, write_showers
from caloforge.io.source import ShowerSource
from caloforge.preprocess import PreprocessConfig
from caloforge.runconfig import DataConfig, RunConfig, TrainConfig
from caloforge.training import train


def labelled(n: int, seed: int = 0, offset: int = 0) -> ShowerSet:
    """Toy showers whose energy (MeV) is 1000 + their index, so a batch tells which showers it holds."""
    showers = toy_showers(n, seed)
    showers.energy = 1000.0 + offset + np.arange(n, dtype=np.float64)
    return showers


def energies(batch: tuple[torch.Tensor, ...]) -> list[int]:
    return batch[0].tolist()


def by_energy(showers: ShowerSet) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(np.round(showers.energy - 1000).astype(np.int64)),)


@pytest.fixture()
def two_files(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "a.h5", tmp_path / "b.h5"]
    write_showers(paths[0], labelled(50))
    write_showers(paths[1], labelled(30, seed=1, offset=50), dtype="float16")
    return paths


# ---- ShowerSource ----------------------------------------------------------------------------------------
def test_a_source_cuts_files_into_blocks_and_reads_them_in_the_order_asked(two_files: list[Path]) -> None:
    source = ShowerSource.open(two_files, block_rows=16)
    assert len(source) == 80 and source.geometry == TOY_GEOMETRY
    assert source.blocks.tolist() == [[0, 0, 16], [0, 16, 32], [0, 32, 48], [0, 48, 50],
                                      [1, 0, 16], [1, 16, 30]]
    read = source.read([5, 0])  # the second file's last block, then the first file's first
    assert (read.energy - 1000).astype(int).tolist() == [*range(66, 80), *range(16)]
    whole = read_showers(two_files[1])
    np.testing.assert_array_equal(read.showers[:14], whole.showers[16:30].astype(np.float32))
    assert source.n_bytes == 80 * TOY_GEOMETRY.n_voxels * 4  # the first file's float32
    loaded = source.load()
    np.testing.assert_array_equal(loaded.energy, np.concatenate([read_showers(p).energy for p in two_files]))
    assert loaded.showers.dtype == np.float32 and loaded.detector is None
    np.testing.assert_array_equal(loaded.showers[50:], whole.showers.astype(np.float32))
    halves = ShowerSource.open(two_files[1], block_rows=16, dtype="float16")
    assert halves.read([0]).showers.dtype == np.float16 and halves.n_bytes == 30 * TOY_GEOMETRY.n_voxels * 2


def test_a_source_refuses_a_file_of_another_geometry(two_files: list[Path], tmp_path: Path) -> None:
    other_geometry = get_geometry("calochallenge-2")
    other = ShowerSet(np.zeros((4, other_geometry.n_voxels), np.float32), other_geometry, np.ones(4))
    write_showers(tmp_path / "other.h5", other)
    with pytest.raises(InputError) as error:
        ShowerSource.open([two_files[0], tmp_path / "other.h5"])
    assert "other.h5" in str(error.value) and "for geometry 'toy'" in str(error.value)  # the first file's


def test_fitting_on_a_source_equals_fitting_in_memory(two_files: list[Path]) -> None:
    config = PreprocessConfig(layer_energies=True, energy_ratio=True, ratio_bins=1)
    streamed = RunContext.fit(ShowerSource.open(two_files, block_rows=7), config, detector_slots=3)
    whole = ShowerSet.concatenate([read_showers(p) for p in two_files])
    loaded = RunContext.fit(whole, config, detector_slots=3)
    assert streamed.spec == loaded.spec and streamed.ranges == loaded.ranges
    a, b = streamed.preprocessor.to_dict(), loaded.preprocessor.to_dict()
    assert a.keys() == b.keys() and a["config"] == b["config"] and a["ratio_table"] is not None
    for key in set(a) - {"config"}:
        np.testing.assert_allclose(np.asarray(a[key], float), np.asarray(b[key], float), rtol=1e-9,
                                   err_msg=key)


# ---- the stream ------------------------------------------------------------------------------------------
def take(stream: ShowerStream, n: int) -> list[list[int]]:
    iterator = iter(stream)
    return [energies(next(iterator)) for _ in range(n)]


@pytest.mark.parametrize("in_memory", [True, False])
def test_two_ranks_see_together_what_one_rank_sees_at_twice_the_batch(two_files: list[Path],
                                                                      in_memory: bool) -> None:
    data = read_showers(two_files[0]) if in_memory else ShowerSource.open(two_files, block_rows=8)
    one = take(ShowerStream(data, by_energy, 12, seed=3, shuffle_blocks=2), 9)
    ranks = [take(ShowerStream(data, by_energy, 6, seed=3, shuffle_blocks=2, rank=r, world_size=2), 9)
             for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    # every pass shows every shower once, shuffled
    n = len(data)
    flat = [e for batch in one for e in batch]
    assert sorted(flat[:n]) == list(range(n)) and flat[:n] != list(range(n))
    assert flat[n : 2 * n] != flat[:n]  # a new order each pass


def hit_labelled(n: int) -> ShowerSet:
    """``labelled`` showers whose hit count is a seeded 1..V, so a batch's spread of counts can be read."""
    showers = labelled(n)
    counts = np.random.default_rng(5).integers(1, showers.showers.shape[1] + 1, n)
    showers.showers = np.where(np.arange(showers.showers.shape[1])[None] < counts[:, None], 1.0, 0.0)
    return showers


@pytest.mark.parametrize("in_memory", [True, False])
def test_bucketed_batches_hold_similar_hit_counts_and_still_cover_every_shower(tmp_path: Path,
                                                                                in_memory: bool) -> None:
    data_set = hit_labelled(96)
    write_showers(tmp_path / "h.h5", data_set)
    data = data_set if in_memory else ShowerSource.open([tmp_path / "h.h5"], block_rows=8)
    counts = (data_set.showers > 0).sum(1)

    def spread(batches: list[list[int]]) -> float:
        return float(np.mean([np.ptp(counts[b]) for b in batches]))

    plain = take(ShowerStream(data, by_energy, 8, seed=3, shuffle_blocks=12), 12)
    bucketed = take(ShowerStream(data, by_energy, 8, seed=3, shuffle_blocks=12, bucket=True), 24)
    assert spread(bucketed[:12]) < 0.3 * spread(plain)
    flat = [e for batch in bucketed for e in batch]
    assert sorted(flat[:96]) == list(range(96)) and sorted(flat[96:]) == list(range(96))
    assert bucketed[12:] != bucketed[:12]  # a new order each pass
    # DDP: two ranks at half the batch together see the same bucketed batches
    ranks = [take(ShowerStream(data, by_energy, 4, seed=3, shuffle_blocks=12, bucket=True, rank=r,
                               world_size=2), 24) for r in range(2)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == bucketed


def test_bucketing_cuts_where_the_stream_cuts_batches() -> None:
    counts = np.arange(20)[::-1]
    showers = np.where(np.arange(20)[None] < counts[:, None], 1.0, 0.0)
    order = bucket_by_hits(showers, 8, start=3, rng=np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(20))
    # the buffer starts 3 rows into a global batch of 8: 5 rows complete it, then 8 whole, then 7 left
    parts = [counts[order[:5]], counts[order[5:13]], counts[order[13:]]]
    assert np.ptp(parts[1]) == 7  # a whole batch: 8 consecutive counts
    assert max(parts[0]) == 4 and min(parts[2]) == 13


def test_padded_point_clouds_are_bucketed_by_default_and_the_config_decides_otherwise() -> None:
    showers = hit_labelled(16)
    context = RunContext.fit(showers, PreprocessConfig())
    bucketed = {
        (representation, setting): ShowerDataModule(showers, context, DataConfig(bucket_by_hits=setting), 4,
                                                    representation=representation).bucket
        for representation in ("voxels", "points") for setting in (None, True, False)
    }
    assert bucketed == {("voxels", None): False, ("voxels", True): True, ("voxels", False): False,
                        ("points", None): True, ("points", True): True, ("points", False): False}


def test_workers_and_a_resumed_stream_continue_the_same_order(two_files: list[Path]) -> None:
    source = ShowerSource.open(two_files, block_rows=8)
    stream = ShowerStream(source, by_energy, 10, seed=1, shuffle_blocks=3)
    expected = take(stream, 12)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    got = []
    for batch in loader:
        got.append(energies(batch))
        if len(got) == 12:
            break
    assert got == expected
    resumed = ShowerStream(source, by_energy, 10, seed=1, shuffle_blocks=3, start_batch=5)
    assert take(resumed, 7) == expected[5:]


def test_a_streamed_source_is_read_a_buffer_at_a_time(two_files: list[Path], monkeypatch) -> None:
    source = ShowerSource.open(two_files, block_rows=4)
    sizes: list[int] = []
    original = ShowerSource.read

    def counting(self: ShowerSource, blocks: list[int]) -> ShowerSet:
        out = original(self, blocks)
        sizes.append(len(out))
        return out

    monkeypatch.setattr(ShowerSource, "read", counting)
    take(ShowerStream(source, by_energy, 5, shuffle_blocks=3), 40)  # two and a half passes
    assert max(sizes) <= 12 and sum(sizes) <= 3 * len(source)


def test_the_validation_split_is_disjoint_seeded_and_covered_once_across_ranks(two_files: list[Path]) -> None:
    source = ShowerSource.open(two_files, block_rows=8)
    train_part, val_part = split_validation(source, 0.25, seed=0)
    assert isinstance(val_part, ShowerSource) and isinstance(train_part, ShowerSource)
    train_rows = {tuple(b) for b in train_part.blocks.tolist()}
    val_rows = {tuple(b) for b in val_part.blocks.tolist()}
    assert not train_rows & val_rows and len(val_rows) == 3
    assert len(train_rows | val_rows) == len(source.blocks)
    again = split_validation(source, 0.25, seed=0)[1]
    assert again is not None and again.blocks.tolist() == val_part.blocks.tolist()
    seen = [e for r in range(2) for batch in ShowerStream(val_part, by_energy, 5, training=False, rank=r,
                                                          world_size=2) for e in energies(batch)]
    assert sorted(seen) == sorted((val_part.read(np.arange(3)).energy - 1000).astype(int).tolist())
    with pytest.raises(InputError, match=r"data\.validation_fraction"):
        split_validation(ShowerSource.open(two_files[1], block_rows=64), 0.5, seed=0)


def test_voxel_batches_are_float32_whatever_the_showers_are_held_in() -> None:
    showers = toy_showers(16)
    context = RunContext.fit(showers, PreprocessConfig(layer_energies=True))
    full = voxel_batch(showers, context)
    stored = ShowerSet(showers.showers.astype(np.float16), showers.geometry, showers.energy)
    half = voxel_batch(stored, context)
    assert [t.dtype for t in half] == [torch.float32] * 3 and len(full) == 3
    torch.testing.assert_close(half[0], full[0], atol=2e-2, rtol=0)


# ---- training from a stream ------------------------------------------------------------------------------
def test_training_streams_a_source_and_logs_a_validation_loss(two_files: list[Path], tmp_path: Path) -> None:
    config = RunConfig(family="toy-gauss")
    config.train = TrainConfig(batch_size=8, max_steps=8, checkpoint_every=4, log_every=1)
    config.data = DataConfig(stream=True, block_rows=8, shuffle_blocks=2, validation_fraction=0.2,
                             validation_every=2, dtype="float16")
    model = train(ShowerSource.open(two_files, block_rows=8), tmp_path / "run", config, progress=False)
    assert model.exists()
    metrics = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()
    column = metrics[0].split(",").index("val/loss")
    values = [float(line.split(",")[column]) for line in metrics[1:] if line.split(",")[column]]
    assert len(values) >= 2 and all(np.isfinite(values))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["stream"] is True and saved["data"]["validation_fraction"] == 0.2


def test_the_same_seed_trains_the_same_weights_in_memory_and_streamed(two_files: list[Path],
                                                                      tmp_path: Path) -> None:
    def weights(data: ShowerSet | ShowerSource, name: str) -> dict[str, torch.Tensor]:
        config = RunConfig(family="toy-gauss")
        config.train = TrainConfig(batch_size=10, max_steps=6, checkpoint_every=6)
        config.data = DataConfig(block_rows=8, stream=isinstance(data, ShowerSource))
        from caloforge.checkpoint import read_checkpoint

        state = read_checkpoint(train(data, tmp_path / name, config, progress=False)).sampler_state
        assert state is not None
        return state

    source = ShowerSource.open(two_files[0], block_rows=8)
    a, b = weights(source, "a"), weights(source, "b")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    loaded = weights(read_showers(two_files[0]), "c")  # other blocks (single showers): other order
    assert any(not torch.equal(a[k], loaded[k]) for k in a)


def test_bf16_mixed_precision_trains_on_the_cpu(tmp_path: Path) -> None:
    from toys import tiny_dit_config

    config = tiny_dit_config((2, 2, 2))
    config.train = TrainConfig(batch_size=16, max_steps=3, checkpoint_every=3, precision="bf16-mixed",
                               accelerator="cpu")
    model = train(toy_showers(32), tmp_path / "run", config, progress=False)
    from caloforge.checkpoint import read_checkpoint

    state = read_checkpoint(model).sampler_state
    assert state is not None and all(v.dtype == torch.float32 and torch.isfinite(v).all()
                                     for v in state.values() if v.is_floating_point())


def test_a_source_knows_each_blocks_detector_and_a_pass_balances_them(tmp_path: Path) -> None:
    big, small = labelled(40), labelled(8, seed=1, offset=40)
    paths = [tmp_path / "big.h5", tmp_path / "small.h5"]
    write_showers(paths[0], big)
    write_showers(paths[1], ShowerSet(small.showers, small.geometry, small.energy, detector=np.full(8, 2)))
    source = ShowerSource.open(paths, block_rows=4)
    assert source.block_detectors().tolist() == [0] * 10 + [2] * 2
    stream = ShowerStream(source, by_energy, batch_size=8, seed=0, balance=True)
    seen = np.concatenate(take(stream, 10))  # 80 rows: one balanced pass
    assert stream.n_rows == 80
    assert (seen >= 40).sum() == 40 and sorted(set(seen[seen >= 40].tolist())) == list(range(40, 48))
    plain = ShowerStream(source, by_energy, batch_size=8, seed=0)
    assert plain.n_rows == 48
