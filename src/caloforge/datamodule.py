"""Training data for every family: a Lightning DataModule over showers in memory or streamed from files
larger than memory, shuffled, sharded across DDP ranks and dataloader workers, with a validation split.

The training stream is endless and a pure function of ``train.seed``: pass p over the data visits its blocks
(``io.ShowerSource`` blocks of ``data.block_rows`` rows; single showers in memory) in a seeded random order,
groups them into buffers of ``data.shuffle_blocks`` blocks and permutes the rows inside each buffer. The
passes, laid end to end, are cut into global batches of ``world_size x batch_size`` rows; rank r takes
rows ``[r B, (r + 1) B)`` of each, and dataloader worker w of a rank takes the rank's batches w,
w + n_workers, ... (PyTorch's loader returns workers' batches in turn, so the rank sees them in order). Hence:

- 2 processes at batch B see, step by step, exactly the showers 1 process sees at batch 2 B (DDP averages
  their gradients, so the runs agree up to float rounding);
- a resumed run starts the stream at the batch it stopped at, computed, not read;
- memory holds one buffer per worker, ``shuffle_blocks x block_rows`` showers (plus the batch being cut).

With ``data.balance_detectors`` (the default) a training pass over showers of several detectors gives each
detector as many rows as the largest has (``balanced_pass``): a smaller detector's blocks are repeated, so a
multi-detector model sees its detectors equally often whatever their share of the files.

Every rank reads every buffer and keeps its own rows (no rank-dependent read pattern): ranks run in lockstep,
so on one node the operating system's page cache serves the same blocks to all of them; across nodes each
node reads the data once per pass.

Showers become model inputs batch by batch (``to_batch``, from the family's representation), so no
preprocessed copy of the set is ever held: the voxel representation is ``voxel_batch``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from caloforge.context import RunContext
from caloforge.data import ShowerSet
from caloforge.errors import InputError
from caloforge.io.source import ShowerSource
from caloforge.runconfig import DataConfig

__all__ = [
    "ShowerDataModule", "ShowerStream", "balanced_pass", "bucket_by_hits", "split_validation", "voxel_batch",
]

Batch = tuple[Tensor, ...]
ToBatch = Callable[[ShowerSet], Batch]


def voxel_batch(showers: ShowerSet, context: RunContext) -> Batch:
    """The ``voxels`` representation of a batch: preprocessed showers (B, V) float32, condition vectors
    (B, C) and, when the preprocessing has a layer-energy stage, standardised layer vectors (B, 1 + L)."""
    tensors = [torch.from_numpy(context.preprocessor.transform(showers)), context.spec.encode(showers)]
    if context.preprocessor.has_layer_energies:
        tensors.append(torch.from_numpy(context.preprocessor.layer_targets(showers)))
    return tuple(tensors)


# ---- blocks: what the stream shuffles and reads --------------------------------------------------------
@dataclass(frozen=True)
class _Blocks:
    """Rows in blocks: ``sizes`` (n_blocks,) and a reader of a list of block indices (rows in that order)."""

    data: ShowerSet | ShowerSource

    @property
    def sizes(self) -> NDArray[np.int64]:
        if isinstance(self.data, ShowerSource):
            return self.data.blocks[:, 2] - self.data.blocks[:, 1]
        return np.ones(len(self.data), dtype=np.int64)  # in memory, every shower is its own block

    def read(self, blocks: NDArray[np.int64]) -> ShowerSet:
        if isinstance(self.data, ShowerSource):
            return self.data.read(blocks)
        return self.data[np.asarray(blocks)]

    @property
    def detectors(self) -> NDArray[np.int64]:
        """Each block's detector index (in memory: each shower's)."""
        if isinstance(self.data, ShowerSource):
            return self.data.block_detectors()
        return self.data.condition("detector").astype(np.int64)


def balanced_pass(sizes: NDArray[np.int64], detectors: NDArray[np.int64], seed: int) -> NDArray[np.int64]:
    """The blocks of one training pass (indices, sorted, with repeats) in which every detector has about as
    many rows as the detector with most: each detector's blocks all appear ``target // rows`` times, and a
    seeded random subset of them once more for the rest (to a block; exact when blocks are single showers).
    ``sizes`` (n_blocks,) rows per block, ``detectors`` (n_blocks,) each block's detector."""
    groups = [np.flatnonzero(detectors == d) for d in np.unique(detectors)]
    if len(groups) < 2:
        return np.arange(len(sizes))
    target = max(int(sizes[g].sum()) for g in groups)
    rng = np.random.default_rng([seed, 0xBA1A])
    parts = []
    for group in groups:
        rows = int(sizes[group].sum())
        parts += [group] * (target // rows)
        rest = target % rows
        if rest:
            picked = rng.permutation(group)
            parts.append(picked[: int(np.searchsorted(np.cumsum(sizes[picked]), rest)) + 1])
    return np.sort(np.concatenate(parts))


def split_validation(
    data: ShowerSet | ShowerSource, fraction: float, seed: int
) -> tuple[ShowerSet | ShowerSource, ShowerSet | ShowerSource | None]:
    """(training, validation) parts: a seeded random ``fraction`` of the blocks (of the showers, in
    memory) held out; ``None`` for validation when ``fraction`` is 0."""
    if fraction <= 0:
        return data, None
    n_blocks = len(_Blocks(data).sizes)
    n_val = max(1, round(fraction * n_blocks))
    if n_val >= n_blocks:
        unit = "blocks of data.block_rows rows" if isinstance(data, ShowerSource) else "showers"
        raise InputError(data.source, "data.validation_fraction", f"holds out {n_val} of {n_blocks} {unit}",
                         "a split that leaves showers to train on (more data, a smaller fraction or, for "
                         "a streamed file, smaller data.block_rows)")
    order = np.random.default_rng([seed, 0x5A11D]).permutation(n_blocks)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    if isinstance(data, ShowerSource):
        return data.subset(train), data.subset(val)
    return data[train], data[val]


def bucket_by_hits(showers: NDArray[np.floating], global_batch: int, start: int,
                   rng: np.random.Generator) -> NDArray[np.int64]:
    """A training buffer's row order in which every whole global batch holds showers of similar hit counts.

    Point clouds are padded to the largest hit count of their batch, so a batch mixing 100-hit and
    2000-hit showers costs 2000 slots a shower; sorted, it costs about its own mean. The rows (shuffled
    first, so equal counts come in random order) are sorted by their number of cells with E > 0 and cut
    where the stream cuts global batches (the buffer's first row is row ``start`` of the stream, so its
    first ``-start mod global_batch`` rows complete a batch begun in the buffer before); the whole batches
    are then put in random order, the partial ones at either end stay there.

    Args:
        showers: the buffer's showers (N, V), any unit.
        global_batch: rows per optimiser step over all ranks.
        start: the stream position of the buffer's first row.
        rng: the buffer's seeded generator.

    Returns:
        (N,) a permutation of the rows.
    """
    n = len(showers)
    shuffled = rng.permutation(n)
    counts = (np.asarray(showers)[shuffled] > 0).sum(axis=1)
    by_count = shuffled[np.argsort(counts, kind="stable")]
    lead = min((-start) % global_batch, n)
    whole = (n - lead) // global_batch
    end = lead + whole * global_batch
    batches = by_count[lead:end].reshape(whole, global_batch)[rng.permutation(whole)]
    return np.concatenate([by_count[:lead], batches.ravel(), by_count[end:]]).astype(np.int64)


# ---- the stream ------------------------------------------------------------------------------------------
class ShowerStream(IterableDataset[Batch]):
    """Batches of one rank (module doc): endless and shuffled for training, one ordered pass for validation
    (rank r then takes batches r, r + world_size, ...).

    Args:
        data: showers in memory or a ``ShowerSource``.
        to_batch: showers -> model inputs (e.g. ``voxel_batch`` bound to a context).
        batch_size: rows per rank and step.
        seed: the order's seed.
        shuffle_blocks: blocks per shuffle buffer (in memory: rows per buffer, at least a global batch).
        training: endless shuffled stream (else one ordered pass).
        balance: with training, give every detector as many rows per pass as the largest (``balanced_pass``).
        bucket: with training, order each buffer by hit count before cutting it (``bucket_by_hits``), so a
            global batch holds showers of similar hit counts.
        rank, world_size: this process's place in DDP.
        start_batch: index of the first global batch to yield (a resumed run's).
    """

    def __init__(
        self,
        data: ShowerSet | ShowerSource,
        to_batch: ToBatch,
        batch_size: int,
        seed: int = 0,
        shuffle_blocks: int = 8,
        training: bool = True,
        balance: bool = False,
        bucket: bool = False,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        self.blocks = _Blocks(data)
        self.to_batch = to_batch
        self.batch_size, self.seed, self.training = int(batch_size), int(seed), training
        self.bucket = bool(bucket)
        self.rank, self.world_size, self.start_batch = int(rank), int(world_size), int(start_batch)
        sizes = self.blocks.sizes
        self.pass_blocks = (balanced_pass(sizes, self.blocks.detectors, self.seed) if training and balance
                            else np.arange(len(sizes)))
        self.n_rows = int(sizes[self.pass_blocks].sum())
        global_batch = self.batch_size * self.world_size
        if training and self.n_rows < global_batch:
            raise InputError(data.source, "train.batch_size", f"x {self.world_size} processes is "
                             f"{global_batch} showers, more than the {self.n_rows} to train on",
                             "a batch no larger than the training set")
        in_memory = not isinstance(data, ShowerSource)
        self.buffer_blocks = max(global_batch, 4096) if in_memory else max(1, int(shuffle_blocks))
        self._plans: dict[int, tuple[list[NDArray[np.int64]], NDArray[np.int64]]] = {}
        self._buffers: dict[tuple[int, int], ShowerSet] = {}

    # -- the order
    def _plan(self, epoch: int) -> tuple[list[NDArray[np.int64]], NDArray[np.int64]]:
        """Pass ``epoch``'s buffers (block indices) and their row offsets in the pass (n_buffers + 1,)."""
        if epoch not in self._plans:
            sizes = self.blocks.sizes
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.pass_blocks) if self.training
                     else self.pass_blocks)
            buffers = [order[i : i + self.buffer_blocks] for i in range(0, len(order), self.buffer_blocks)]
            offsets = np.concatenate([[0], np.cumsum([sizes[b].sum() for b in buffers])]).astype(np.int64)
            self._plans = {epoch: (buffers, offsets)}  # one pass at a time
        return self._plans[epoch]

    def _buffer(self, epoch: int, index: int) -> ShowerSet:
        key = (epoch, index)
        if key not in self._buffers:
            self._buffers.clear()  # before reading the next: never two buffers at once (rows cut are copies)
            buffers, _ = self._plan(epoch)
            showers = self.blocks.read(buffers[index])
            if self.training:
                rng = np.random.default_rng([self.seed, epoch, index])
                if self.bucket:
                    _, offsets = self._plan(epoch)
                    start = epoch * self.n_rows + int(offsets[index])
                    order = bucket_by_hits(showers.showers, self.batch_size * self.world_size, start, rng)
                else:
                    order = rng.permutation(len(showers))
                showers = showers[order]
            self._buffers = {key: showers}  # batches already cut keep views of the one before
        return self._buffers[key]

    def rows(self, start: int, stop: int) -> ShowerSet:
        """Rows ``start:stop`` of the stream (passes laid end to end)."""
        parts = []
        position = start
        while position < stop:
            epoch, offset = divmod(position, self.n_rows)
            _, offsets = self._plan(epoch)
            index = int(np.searchsorted(offsets, offset, side="right")) - 1
            buffer = self._buffer(epoch, index)
            take = min(stop - position, int(offsets[index + 1]) - offset)
            first = offset - int(offsets[index])
            parts.append(buffer[first : first + take])
            position += take
        return ShowerSet.concatenate(parts, fill_defaults=True)

    # -- iteration
    def batches_per_pass(self) -> int:
        """Validation: the global batches of the one pass."""
        return math.ceil(self.n_rows / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, n_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        if self.training:
            global_batch = self.batch_size * self.world_size
            batch = self.start_batch + worker_id
            while True:
                start = batch * global_batch + self.rank * self.batch_size
                yield self.to_batch(self.rows(start, start + self.batch_size))
                batch += n_workers
        else:
            mine = range(self.rank + self.world_size * worker_id, self.batches_per_pass(),
                         self.world_size * n_workers)
            for batch in mine:
                start = batch * self.batch_size
                yield self.to_batch(self.rows(start, min(start + self.batch_size, self.n_rows)))


# ---- the DataModule ---------------------------------------------------------------------------------------
class _Bound:
    """``to_batch`` for the stream: a picklable (for worker processes) representation + context pair."""

    def __init__(self, representation: Callable[[ShowerSet, RunContext], Batch], context: RunContext) -> None:
        self.representation, self.context = representation, context

    def __call__(self, showers: ShowerSet) -> Batch:
        return self.representation(showers, self.context)


# representation -> "module:function" building its batches, imported when a run asks for it (a family's
# package is not imported by the shared data code otherwise).
REPRESENTATIONS: dict[str, str] = {
    "voxels": "caloforge.datamodule:voxel_batch",
    "points": "caloforge.families.mdma_gan.points:points_batch",  # hits, mask, cond, E_inc
}


# representations whose batches are padded to their largest member: bucketed by hit count by default
BUCKETED = frozenset({"points"})


def representation_batch(name: str) -> Callable[[ShowerSet, RunContext], Batch]:
    """The batch builder of representation ``name`` (``REPRESENTATIONS``)."""
    module, _, function = REPRESENTATIONS[name].partition(":")
    builder: Callable[[ShowerSet, RunContext], Batch] = getattr(importlib.import_module(module), function)
    return builder


class ShowerDataModule(L.LightningDataModule):
    """Training (and, with ``data.validation_fraction``, validation) dataloaders of one run.

    Args:
        data: the training showers, in memory or on disk.
        context: the run's fitted context (preprocessing, condition spec).
        config: the run's ``data`` section.
        batch_size: showers per rank and step (``train.batch_size``).
        seed: ``train.seed``.
        representation: the family's (``Family.representation``).
    """

    def __init__(
        self,
        data: ShowerSet | ShowerSource,
        context: RunContext,
        config: DataConfig,
        batch_size: int,
        seed: int = 0,
        representation: str = "voxels",
    ) -> None:
        super().__init__()
        self.train_data, self.val_data = split_validation(data, config.validation_fraction, seed)
        self.config, self.batch_size, self.seed = config, int(batch_size), int(seed)
        self.to_batch = _Bound(representation_batch(representation), context)
        self.bucket = representation in BUCKETED if config.bucket_by_hits is None else config.bucket_by_hits

    def _place(self) -> tuple[int, int, int]:
        """(rank, world size, batches already trained on) from the Trainer (a resumed run's count)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        done = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        return trainer.global_rank, trainer.world_size, int(done)

    def _loader(self, stream: ShowerStream) -> DataLoader[Batch]:
        workers = self.config.workers
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader[Batch]:
        rank, world, done = self._place()
        return self._loader(ShowerStream(
            self.train_data, self.to_batch, self.batch_size, self.seed, self.config.shuffle_blocks,
            training=True, balance=self.config.balance_detectors, bucket=self.bucket, rank=rank,
            world_size=world, start_batch=done,
        ))

    def val_dataloader(self) -> DataLoader[Batch]:
        if self.val_data is None:
            return []  # type: ignore[return-value]  # Lightning's way of saying "no validation"
        rank, world, _ = self._place()
        return self._loader(ShowerStream(self.val_data, self.to_batch, self.batch_size, training=False,
                                         rank=rank, world_size=world))
