"""What gives a model away at the high level: the high-level classifier on each feature group alone, and
the hit spectrum per radial ring, for one checkpoint against held-out showers of a file.

The CaloChallenge high-level vector (``caloforge.evaluate.features.high_level_vector``) mixes eight groups
per layer: energies, centres in x/y, widths in x/y, E_tot, sparsity, centre and width in r. A high-level
AUC near 1 says the model is off somewhere, not where. This script trains the same classifier as the
benchmarks on each group alone (with log10 E_inc as the first column, so conditional differences count)
and prints the group AUCs next to the full vector's, then the mean number of cells per shower in bins of
deposit energy, ring by ring, for the model and the reference, and the share of energy in each ring.

    python bench/diagnose_high_level.py --checkpoint src/caloforge/pretrained/g4-siw-dit.ckpt \
        --data ../shared/data/g4-siw/train.h5 --n-eval 5000

With ``--low-level-groups`` it does the same for the low-level classifier (voxel energies / E_inc): on
bands of layers, on bands of radial rings, and on the occupancy pattern alone (which cells are lit, not
their energies), each with log10 E_inc beside it.

The held-out showers are those of ``bench/fidelity.py --data`` (``--split-n-eval``, ``--seed``), so a model
trained by that benchmark is scored on showers it never saw. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import split_file

from caloforge.cli import sampling_options
from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig, classifier_test, low_level_inputs
from caloforge.evaluate.features import THRESHOLD_MEV, Features, compute_features, high_level_vector
from caloforge.generate import load_generator
from caloforge.io import atomic_output

ROOT = Path(__file__).resolve().parents[1]
# Cell-energy bins (MeV) of the ring spectra: the first two are fainter than a MIP in 0.3 mm of silicon.
SPECTRUM_EDGES_MEV = (THRESHOLD_MEV, 0.03, 0.06, 0.1, 0.2, 0.5, 1.0, 1e9)


def feature_groups(n_layers: int) -> dict[str, np.ndarray]:
    """Column indices of each group of the high-level vector (``high_level_vector``'s order)."""
    def block(start: int, width: int) -> np.ndarray:
        return np.arange(start, start + width)

    n = n_layers
    return {
        "layer energies": block(1, n),
        "centres x, y": block(1 + n, 2 * n),
        "widths x, y": block(1 + 3 * n, 2 * n),
        "E_tot": block(1 + 5 * n, 1),
        "sparsity": block(2 + 5 * n, n),
        "centre r": block(2 + 6 * n, n),
        "width r": block(2 + 7 * n, n),
    }


def group_aucs(
    generated: np.ndarray, reference: np.ndarray, config: ClassifierConfig, seed: int
) -> dict[str, float]:
    """High-level classifier AUC on the whole vector ("all") and on each ``feature_groups`` group alone, with
    log10 E_inc (column 0) beside it so conditional differences count; vectors (N, 1 + 8 L)."""
    aucs = {"all": classifier_test(generated, reference, config, seed=seed).auc}
    for name, columns in feature_groups(reference.shape[1] // 8).items():
        with_energy = np.concatenate([[0], columns])
        gen, ref = generated[:, with_energy], reference[:, with_energy]
        aucs[name] = classifier_test(gen, ref, config, seed=seed).auc
    return aucs


def voxel_groups(geometry: Any, n_bands: tuple[int, int] = (5, 3)) -> dict[str, np.ndarray]:
    """Columns (1-based: column 0 is log10 E_inc) of ``low_level_inputs`` in bands of layers and of radial
    rings (``n_bands``: how many of each); regular readouts."""
    index = geometry.to_grid(np.arange(geometry.n_voxels)[None])[0]  # (L, A, R) voxel index of each cell
    groups = {}
    for band in np.array_split(np.arange(index.shape[0]), n_bands[0]):
        groups[f"layers {band[0]}-{band[-1]}"] = np.sort(index[band].reshape(-1)) + 1
    for band in np.array_split(np.arange(index.shape[2]), n_bands[1]):
        groups[f"rings {band[0]}-{band[-1]}"] = np.sort(index[..., band].reshape(-1)) + 1
    return groups


def low_level_group_aucs(generated: ShowerSet, reference: ShowerSet, config: ClassifierConfig,
                         seed: int) -> dict[str, float]:
    """Low-level classifier AUC on all voxels, on the occupancy pattern alone (1 where a cell is lit) and on
    each ``voxel_groups`` group, each with log10 E_inc (column 0)."""
    gen, ref = (low_level_inputs(s.showers, s.energy, THRESHOLD_MEV) for s in (generated, reference))
    aucs = {"all": classifier_test(gen, ref, config, seed=seed).auc}
    lit = [np.concatenate([x[:, :1], (x[:, 1:] > 0).astype(np.float32)], axis=1) for x in (gen, ref)]
    aucs["occupancy only"] = classifier_test(*lit, config, seed=seed).auc
    for name, columns in voxel_groups(reference.geometry).items():
        with_energy = np.concatenate([[0], columns])
        aucs[name] = classifier_test(gen[:, with_energy], ref[:, with_energy], config, seed=seed).auc
    return aucs


def ring_spectra(showers: ShowerSet) -> dict[str, Any]:
    """Cells per shower in each ``SPECTRUM_EDGES_MEV`` bin and the energy share, per radial ring."""
    grid = showers.geometry.to_grid(showers.showers.astype(np.float64))  # (N, L, A, R); regular readouts
    grid = np.where(grid < THRESHOLD_MEV, 0.0, grid)
    per_ring = grid.sum(axis=(1, 2))  # (N, R) MeV
    share = (per_ring / np.maximum(per_ring.sum(axis=1, keepdims=True), 1e-30)).mean(axis=0)
    counts = []
    for ring in range(grid.shape[-1]):
        cells = grid[..., ring]
        counts.append((np.histogram(cells[cells > 0], SPECTRUM_EDGES_MEV)[0] / len(showers)).tolist())
    return {"cells_per_shower": counts, "energy_share": share.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.ckpt of the readout of --data")
    parser.add_argument("--data", required=True, help="shower file whose held-out part is the reference")
    parser.add_argument("--n-eval", type=int, default=5000, help="generated = reference showers")
    parser.add_argument("--split-n-eval", type=int, default=10_000, help="bench/fidelity.py's --n-eval")
    parser.add_argument("--seed", type=int, default=0, help="bench/fidelity.py's --seed")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--low-level-groups", action="store_true",
                        help="also the low-level classifier on layer bands, ring bands and occupancy")
    parser.add_argument("--option", action="append", default=[],
                        help="sampling option KEY=VALUE, read as 'caloforge generate --option' reads it "
                        "(e.g. n_steps=16, sampler=dpmpp_2m_logsnr)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "diagnose_high_level.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_eval > args.split_n_eval:
        sys.exit(f"--n-eval {args.n_eval} exceeds the held-out half (--split-n-eval {args.split_n_eval})")

    _, held_out, _ = split_file(args.data, 1, args.split_n_eval, args.seed)
    reference = held_out[: args.n_eval]
    options = {k: v for k, v in sampling_options(None, None, args.option).items() if v is not None}
    generator = load_generator(args.checkpoint)
    if reference.geometry != generator.geometry:
        sys.exit(f"--data {args.data}: geometry {reference.geometry.name}, the model's is "
                 f"{generator.geometry.name}")
    start = time.perf_counter()
    generated = generator.sample(reference.energy, seed=args.seed + 7, batch_size=500, **options)
    print(f"generated {len(generated)} showers in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    features: dict[str, Features] = {"generated": compute_features(generated),
                                     "reference": compute_features(reference)}
    vectors = {k: high_level_vector(f) for k, f in features.items()}
    config = ClassifierConfig(epochs=args.classifier_epochs)
    aucs = group_aucs(vectors["generated"], vectors["reference"], config, args.seed)
    rings = {"generated": ring_spectra(generated), "reference": ring_spectra(reference)}
    low_aucs = (low_level_group_aucs(generated, reference, config, args.seed) if args.low_level_groups
                else None)

    result = {"benchmark": "diagnose_high_level", "checkpoint": args.checkpoint, "data": args.data,
              "n_eval": args.n_eval, "seed": args.seed, "sampling": options,
              "classifier_epochs": args.classifier_epochs, "auc_high_by_group": aucs,
              "auc_low_by_group": low_aucs,
              "spectrum_edges_mev": list(SPECTRUM_EDGES_MEV), "rings": rings}
    out = Path(args.out)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))

    print(f"high-level classifier AUC by feature group ({args.n_eval} vs {args.n_eval}, each group with "
          "log10 E_inc):")
    for name, auc in aucs.items():
        print(f"  {name:16s} {auc:.3f}")
    if low_aucs is not None:
        print("low-level classifier AUC by voxel group (each with log10 E_inc):")
        for name, auc in low_aucs.items():
            print(f"  {name:16s} {auc:.3f}")
    labels = [f"{lo:.3g}-{hi:.3g}" if hi < 1e8 else f">{lo:.3g}"
              for lo, hi in itertools.pairwise(SPECTRUM_EDGES_MEV)]
    print("cells per shower by deposit (MeV), ring by ring: generated / reference")
    print(f"  {'ring':>4s} " + " ".join(f"{label:>13s}" for label in labels) + "   energy share")
    for ring, (gen, ref) in enumerate(zip(rings["generated"]["cells_per_shower"],
                                          rings["reference"]["cells_per_shower"], strict=True)):
        cells = " ".join(f"{g:6.2f}/{r:6.2f}" for g, r in zip(gen, ref, strict=True))
        shares = (rings["generated"]["energy_share"][ring], rings["reference"]["energy_share"][ring])
        share = f"{shares[0]:.4f}/{shares[1]:.4f}"
        print(f"  {ring:4d} {cells}   {share}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
