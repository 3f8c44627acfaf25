"""What a point-cloud model of Geant4 showers can reach at best, with the mdma-gan family's own hits and
voxeliser: each held-out Geant4 shower keeps its energy and hit count, but its hits are drawn at random
(without replacement) from the pooled hits of the ``--pool`` showers nearest to it in energy (not itself).
Every hit's position and energy then follows Geant4's per-hit distribution at that energy, while the
shower's own correlations are gone and hits of different showers can share a cell (their energies summed):
the showers of a generator that has learnt the per-hit marginals exactly and nothing else. Scored against
the held-out reference like ``bench/fidelity.py`` (same split, same metrics), next to the floor; the
round trip grid -> hits -> grid of the same showers is checked on the way (it reproduces every cell).

    python bench/point_cloud_ceiling.py --data ../shared/data/g4-siw/train.h5 --n-eval 5000 \\
        --out bench/results/point_cloud_ceiling.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from fidelity import scoring_config, split_file, summarise

from caloforge.data import ShowerSet
from caloforge.evaluate.pipeline import collect, compute_metrics, low_level_capacity
from caloforge.families.mdma_gan.points import PointScaling, Voxeliser, grid_to_hits, pack

ROOT = Path(__file__).resolve().parents[1]


def voxelised(hits: np.ndarray, mask: np.ndarray, showers: ShowerSet, voxeliser: Voxeliser) -> ShowerSet:
    """Padded hits (N, M, 5) with mask (N, M) -> showers on ``showers``' readout at its energies."""
    packed, seg = pack(torch.from_numpy(hits), torch.from_numpy(mask))
    with torch.no_grad():
        cells = voxeliser(packed, seg, torch.as_tensor(showers.energy, dtype=torch.float32)).numpy()
    return ShowerSet(cells, showers.geometry, showers.energy, source="generated")


def pooled_hits(hits: np.ndarray, mask: np.ndarray, energy: np.ndarray, pool: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each shower's hit count filled from the hits of the ``pool`` showers nearest in energy (module doc).
    The energy feature is ln(E_hit / E_inc), so a hit keeps its fraction of its own shower's energy."""
    order = np.argsort(energy)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out, out_mask = np.zeros_like(hits), np.zeros_like(mask)
    for i in range(len(energy)):
        lo = min(max(rank[i] - pool // 2, 0), len(order) - pool - 1)
        donors = [j for j in order[lo: lo + pool + 1] if j != i][:pool]
        candidates = np.concatenate([hits[j][mask[j]] for j in donors])
        k = int(mask[i].sum())
        out[i, :k] = candidates[rng.choice(len(candidates), size=k, replace=False)]
        out_mask[i, :k] = True
    return out, out_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Geant4 shower file (the fidelity split's)")
    parser.add_argument("--n-eval", type=int, default=5000, help="reference = floor showers")
    parser.add_argument("--pool", type=int, default=32, help="showers whose hits fill one shower")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "point_cloud_ceiling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, reference, floor = split_file(args.data, 1, args.n_eval, args.seed)
    geometry = floor.geometry
    # the scaling only sets the features' units; any that keeps E_hit / E_inc below 1 round-trips
    scaling = PointScaling(geometry.n_layers, float(geometry.outer_radius_mm), -8.0, 9.0)
    voxeliser = Voxeliser(geometry, scaling)
    rng = np.random.default_rng(args.seed + 1)
    hits, mask = grid_to_hits(floor.showers, floor.energy, geometry, scaling, rng)
    round_trip = float(np.abs(voxelised(hits, mask, floor, voxeliser).showers - floor.showers).max())
    pooled = voxelised(*pooled_hits(hits, mask, floor.energy, args.pool, rng), floor, voxeliser)
    config = scoring_config(args.n_eval, args.classifier_epochs, args.seed)
    capacity = low_level_capacity(geometry.n_voxels, config)
    ref = collect([reference], "reference", config, capacity)
    result = {
        "data": args.data, "n_eval": args.n_eval, "pool": args.pool, "seed": args.seed,
        "round_trip_max_abs_mev": round_trip,
        "cells_per_shower": {"geant4": float((floor.showers > 0).sum(1).mean()),
                             "pooled_hits": float((pooled.showers > 0).sum(1).mean())},
        "pooled_hits": summarise(compute_metrics(collect([pooled], "pooled", config, capacity), ref, config)),
        "floor": summarise(compute_metrics(collect([floor], "floor", config, capacity), ref, config)),
    }
    for name in ("pooled_hits", "floor"):
        row = result[name]
        print(f"{name}: AUC low {row['auc_low']:.3f}, high {row['auc_high']:.3f}, "
              f"FPD x1e3 {row['fpd_x1e3']:.0f}")
    cells = result["cells_per_shower"]
    print(f"round trip: largest cell difference {round_trip:.2g} MeV; cells a shower {cells['geant4']:.0f} "
          f"(Geant4), {cells['pooled_hits']:.0f} (pooled hits)")
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
