"""Probe: does lighting a vq-gpt decoder's sub-threshold cells at random help? (docs/benchmarks.md, "vq-gpt
sized for speed").

The decoder gives every cell its mean share of the shower. This probe swaps the family's ``compose`` for one
that lights each cell whose mean m is below the readout threshold t with probability m / (c t), with a
deposit drawn as t (1 + (c - 1) Exp(1)) (mean c t, so each cell keeps its mean), then rescales the shower to
its E_tot. It scores plain and dithered showers against the first ``--n`` reference showers of the
``bench/fidelity.py --data`` split and prints AUCs, FPD, hits per shower and separation powers. A probe of
an idea, not a sampler option: the draws use torch's global generator.

    python bench/vq_faint_cells.py --checkpoint bench/results/fidelity-g4-vqfast-run/model.ckpt \\
        --data ../shared/data/g4-siw/train.h5 --n 3000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import split_file, summarise
from leaderboard import generate
from torch import Tensor

import caloforge.families.vq_gpt.sampler as vq_sampler
from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig
from caloforge.evaluate.pipeline import EvaluateConfig, collect, compute_metrics, low_level_capacity
from caloforge.families.vq_gpt.showers import compose as plain_compose
from caloforge.generate import load_generator


def dithered(c: float) -> Any:
    """``compose`` with sub-threshold cells lit at random, each keeping its mean (module doc)."""
    def compose(fractions: Tensor, ratio: Tensor, energy: Tensor, threshold_mev: float) -> Tensor:
        total = ratio * energy  # (N,) MeV
        mean = fractions * total[:, None]  # (N, V) MeV
        deposit = threshold_mev * (1 + (c - 1) * torch.empty_like(mean).exponential_())
        lit = torch.rand_like(mean) < mean / (c * threshold_mev)
        showers = torch.where(mean < threshold_mev, torch.where(lit, deposit, torch.zeros_like(mean)), mean)
        return showers * (total / showers.sum(1).clamp(min=1e-30))[:, None]
    return compose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a vq-gpt model.ckpt")
    parser.add_argument("--data", required=True, help="the shower file bench/fidelity.py --data split")
    parser.add_argument("--n", type=int, default=3000, help="generated = reference showers")
    parser.add_argument("--deposit-factor", type=float, default=1.5, help="c: mean deposit / threshold")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/vq_faint_cells.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, held_out, _ = split_file(args.data, None, 10_000, 0)
    reference = ShowerSet(held_out.showers[: args.n], held_out.geometry, held_out.energy[: args.n])
    config = EvaluateConfig(classifier=ClassifierConfig(epochs=15), seed=0, plots=False,
                            fpd_min_samples=args.n // 2, fpd_max_samples=args.n, kpd_batch_size=args.n)
    capacity = low_level_capacity(reference.geometry.n_voxels, config)
    ref_sample = collect([reference], "reference", config, capacity)
    reference_hits = float((reference.showers > 0).sum(1).mean())
    generator = load_generator(Path(args.checkpoint))
    rows = {}
    for label, compose in [("plain", plain_compose), (f"dithered c={args.deposit_factor}",
                                                       dithered(args.deposit_factor))]:
        vq_sampler.compose = compose  # type: ignore[attr-defined]
        torch.manual_seed(0)
        showers = generate(generator, reference.energy, 7, label)
        metrics = summarise(compute_metrics(collect([showers], label, config, capacity), ref_sample, config))
        metrics["hits_per_shower"] = float((showers.showers > 0).sum(1).mean())
        rows[label] = metrics
        print(label, f"AUC low {metrics['auc_low']:.3f}, high {metrics['auc_high']:.3f}, FPD x1e3 "
              f"{metrics['fpd_x1e3']:.0f}, hits per shower {metrics['hits_per_shower']:.0f} (reference "
              f"{reference_hits:.0f})", flush=True)
    Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "n": args.n, "rows": rows}, indent=2,
                                         default=lambda x: float(np.asarray(x))))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
