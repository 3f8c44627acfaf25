"""Classifier two-sample test: how well can a network tell generated from reference showers?

The CaloChallenge protocol (``evaluate.py``): a fully connected network with LeakyReLU is trained with
BCE on a training split; after every epoch its accuracy on the *test* split is measured and the epoch with
the best test accuracy is kept; an isotonic regression fitted on the test split calibrates the
probabilities; AUC and JSD = (ln 2 - BCE) / ln 2 are then measured on the held-out *validation* split.
AUC 0.5 means indistinguishable, 1 means perfectly separable. Unlike the official code the split is
seeded (``seed``), so a result can be reproduced.

Inputs (``low_level_inputs`` / ``features.high_level_vector``) are the official ones: log10 E_inc and
voxel energies / E_inc after the voxel threshold, or the high-level feature vector.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from caloforge.errors import InputError

__all__ = [
    "OFFICIAL_CLASSIFIER",
    "ClassifierConfig",
    "ClassifierResult",
    "classifier_test",
    "low_level_inputs",
]


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of the classifier test (from YAML with ``caloforge.config.from_dict``).

    The defaults are the CPU setting, sized for a 50k-vs-50k dataset-2 evaluation with both tests in
    under 10 minutes on two cores: 3 hidden layers of 256 and 15 epochs (the official 3 x 2048 network
    for 50 epochs needs ~40x the multiply-adds: 12x per shower, 3.3x the epochs), learning rate 1e-3 so
    the shorter training converges, and inputs standardised with the training split's mean and std:
    low-level inputs E_voxel / E_inc of raw visible energies are ~1e-5..1e-2, and without
    standardisation the small network learned nothing in 15 epochs (embedded simulator, 10k vs 10k
    dataset-2 showers, radial widths x 1.2: AUC 0.495 unstandardised, 0.873 standardised).
    ``OFFICIAL_CLASSIFIER`` holds the CaloChallenge settings (use with a GPU).

    Args:
        n_hidden: units per hidden layer.
        n_layers: number of hidden layers (official ``cls_n_layer`` = 2 counts the extra ones: 3 in all).
        epochs: training epochs; the epoch with the best test accuracy is kept.
        batch_size: showers per optimiser step.
        learning_rate: Adam learning rate.
        dropout: dropout probability after each hidden layer.
        split: fractions (train, test, validation) of each sample; test selects the epoch and fits the
            calibration, validation gives the reported numbers.
        device: torch device ("cpu", "cuda", ...); "auto" takes CUDA when present.
        standardise: scale each input column by the training split's mean and std (off in the official
            protocol; on helps a small network with wide-range inputs).
    """

    n_hidden: int = 256
    n_layers: int = 3
    epochs: int = 15
    batch_size: int = 1000
    learning_rate: float = 1e-3
    dropout: float = 0.0
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    device: str = "auto"
    standardise: bool = True

    def __post_init__(self) -> None:
        if self.n_hidden < 1 or self.n_layers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("n_hidden, n_layers, epochs and batch_size must be >= 1")
        if len(self.split) != 3 or min(self.split) <= 0 or sum(self.split) > 1 + 1e-9:
            raise ValueError(f"split must be three positive fractions summing to <= 1, got {self.split}")


# CaloChallenge evaluate.py defaults: 2048 wide, input layer + cls_n_layer=2 hidden layers, Adam 2e-4,
# batch 1000, 50 epochs, no dropout, 60/20/20 split (the official numbers of showers for datasets 2 and 3).
OFFICIAL_CLASSIFIER = ClassifierConfig(n_hidden=2048, n_layers=3, epochs=50, batch_size=1000,
                                       learning_rate=2e-4, standardise=False)


@dataclass(frozen=True)
class ClassifierResult:
    """Outcome of ``classifier_test``; AUC and JSD are after calibration, on the validation split."""

    auc: float
    jsd: float
    accuracy: float
    auc_uncalibrated: float
    best_epoch: int
    n_train: int
    n_test: int
    n_validation: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def low_level_inputs(
    showers: NDArray[np.floating], energy: NDArray[np.floating], threshold_mev: float
) -> NDArray[np.float32]:
    """Official low-level classifier input (N, 1 + n_voxels): log10(E_inc / MeV), voxel energy / E_inc,
    with voxels below ``threshold_mev`` set to zero."""
    e = np.asarray(energy, dtype=np.float64).reshape(-1, 1)
    voxels = np.where(showers < threshold_mev, 0.0, showers) / e
    return np.concatenate([np.log10(e), voxels], axis=1).astype(np.float32)


def _linear(n_in: int, n_out: int, generator: torch.Generator) -> torch.nn.Linear:
    """``nn.Linear`` with its default initialisation drawn from ``generator`` (not torch's global one)."""
    layer = torch.nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def _network(n_inputs: int, config: ClassifierConfig, generator: torch.Generator) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    width = n_inputs
    for _ in range(config.n_layers):
        layers += [_linear(width, config.n_hidden, generator), torch.nn.LeakyReLU(),
                   torch.nn.Dropout(config.dropout)]
        width = config.n_hidden
    layers.append(_linear(width, 1, generator))
    return torch.nn.Sequential(*layers)


def _split(
    n: int, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    order = rng.permutation(n)
    n_train, n_test = int(n * fractions[0]), int(n * fractions[1])
    n_val = int(n * fractions[2])
    ends = np.cumsum([n_train, n_test, n_val])
    return [order[:ends[0]], order[ends[0]:ends[1]], order[ends[1]:ends[2]]]


@torch.no_grad()
def _logits(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device
) -> NDArray[np.float64]:
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).reshape(-1).double().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def _bce(p: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def classifier_test(
    generated: NDArray[np.floating],
    reference: NDArray[np.floating],
    config: ClassifierConfig | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> ClassifierResult:
    """Train a classifier to separate ``generated`` (N, D) from ``reference`` (M, D) rows.

    Each sample is split by ``config.split`` with a generator seeded by ``seed`` (also seeding the
    network's initialisation and batch order). ``progress(epoch, test_accuracy)`` is called per epoch.
    Labels: generated 0, reference 1, as in the official code.
    """
    config = config or ClassifierConfig()
    if generated.ndim != 2 or reference.ndim != 2 or generated.shape[1] != reference.shape[1]:
        raise InputError(None, "classifier inputs", f"shapes {generated.shape} and {reference.shape}",
                         "two 2-d arrays with the same number of columns")
    rng = np.random.default_rng(seed)
    parts_gen = _split(len(generated), config.split, rng)
    parts_ref = _split(len(reference), config.split, rng)
    if min(len(p) for p in parts_gen + parts_ref) < 2:
        raise InputError(None, "classifier inputs", f"{len(generated)} and {len(reference)} showers",
                         "enough showers for a train/test/validation split (at least 10 each)")
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if config.device == "auto" else config.device))
    generator = torch.Generator().manual_seed(seed)

    def tensors(k: int) -> tuple[torch.Tensor, NDArray[np.float64]]:
        x = np.concatenate([generated[parts_gen[k]], reference[parts_ref[k]]]).astype(np.float32)
        y = np.concatenate([np.zeros(len(parts_gen[k])), np.ones(len(parts_ref[k]))])
        return torch.from_numpy(x), y

    (x_train, y_train), (x_test, y_test), (x_val, y_val) = tensors(0), tensors(1), tensors(2)
    if config.standardise:
        mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-8)
        for x in (x_train, x_test, x_val):  # in place: the low-level inputs are GBs for 50k showers
            x.sub_(mean).div_(std)
    model = _network(x_train.shape[1], config, generator).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y_train_t = torch.from_numpy(y_train).float()

    best_accuracy, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            logits = model(x_train[index].to(device)).reshape(-1)
            loss = loss_fn(logits, y_train_t[index].to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        accuracy = float(np.mean((_logits(model, x_test, 10_000, device) > 0) == y_test))
        if progress is not None:
            progress(epoch, accuracy)
        if accuracy > best_accuracy:
            best_accuracy, best_epoch = accuracy, epoch
            best_state = copy.deepcopy(model.state_dict())
        if accuracy == 1.0:
            break
    model.load_state_dict(best_state)

    p_test = expit(_logits(model, x_test, 10_000, device))
    p_val = expit(_logits(model, x_val, 10_000, device))
    calibration = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(p_test, y_test)
    p_cal = calibration.predict(p_val)
    jsd = (math.log(2.0) - _bce(p_cal, y_val)) / math.log(2.0)
    return ClassifierResult(
        auc=float(roc_auc_score(y_val, p_cal)),
        jsd=float(jsd),
        accuracy=float(np.mean(np.round(p_cal) == y_val)),
        auc_uncalibrated=float(roc_auc_score(y_val, p_val)),
        best_epoch=best_epoch,
        n_train=len(x_train), n_test=len(x_test), n_validation=len(x_val), seed=seed,
    )
