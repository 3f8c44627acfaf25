"""Teacher against student on a small slice of a ``bench/fidelity.py --data`` split.

A flow teacher (MAF) samples one network pass per dimension, ~0.7 s a shower on two CPU cores for the
dataset-2 spline teacher, so scoring it on the full 10k reference takes hours. This scores any models
(``--model NAME=CHECKPOINT``, e.g. a teacher and its student) on the first ``--n`` showers of the same
held-out reference that ``fidelity.py --data --n-eval N_EVAL`` uses, with the first ``--n`` of its floor
sample as the floor, and prints the headline metrics plus the simple physics the classifier reads (cells
above threshold per shower, median deposit, hottest cell's share). Fewer showers make a weaker
classifier: compare rows of one run, not with 10k figures.

    python bench/teacher_student.py --data ../shared/data/g4-siw/train.h5 --n-eval 10000 --n 1000 \\
        --model teacher=RUN/model.ckpt --model student=STUDENT_RUN/model.ckpt --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import split_file, summarise

from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig
from caloforge.evaluate.pipeline import EvaluateConfig, collect, compute_metrics, low_level_capacity
from caloforge.generate import load_generator
from caloforge.progress import progress_bar


def physics(showers: ShowerSet) -> dict[str, float]:
    """Cells above threshold per shower, median ln(deposit / MeV), median hottest-cell share of E_tot."""
    s = showers.showers
    total = np.maximum(s.sum(axis=1), 1e-30)
    return {"cells_per_shower": float((s > 0).sum(axis=1).mean()),
            "median_ln_deposit_mev": float(np.median(np.log(s[s > 0]))),
            "hottest_cell_share": float(np.median(s.max(axis=1) / total)),
            "etot_over_einc": float(np.mean(s.sum(axis=1) / showers.energy))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the shower file fidelity.py --data split")
    parser.add_argument("--n-eval", type=int, default=10000, help="fidelity.py's --n-eval (sets the split)")
    parser.add_argument("--seed", type=int, default=0, help="fidelity.py's --seed (sets the split)")
    parser.add_argument("--n", type=int, default=1000, help="showers scored per model")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    _, reference, floor = split_file(args.data, 1, args.n_eval, args.seed)
    reference, floor = reference[: args.n], floor[: args.n]
    config = EvaluateConfig(classifier=ClassifierConfig(), seed=args.seed, plots=False,
                            fpd_min_samples=min(10_000, args.n // 2), fpd_max_samples=args.n,
                            kpd_batch_size=min(10_000, args.n))
    capacity = low_level_capacity(reference.geometry.n_voxels, config)
    ref = collect([reference], "reference", config, capacity)
    rows: dict[str, Any] = {"geant4 (floor)": {**summarise(compute_metrics(collect([floor], "floor", config,
                                                                                   capacity), ref, config)),
                                                **physics(floor)}}
    rows["geant4 (floor)"]["physics_reference"] = physics(reference)
    for item in args.model:
        name, path = item.split("=", 1)
        generator = load_generator(path)
        t0 = time.perf_counter()
        parts = []
        with progress_bar(args.n, f"generating ({name})", unit="shower") as bar:
            for part in generator.sample_batches(reference.energy, seed=args.seed + 7,
                                                 batch_size=args.batch_size, on_batch=bar.update):
                parts.append(part)
        showers = ShowerSet.concatenate(parts)
        ms = 1e3 * (time.perf_counter() - t0) / args.n
        metrics = summarise(compute_metrics(collect([showers], name, config, capacity), ref, config))
        rows[name] = {**metrics, **physics(showers), "ms_per_shower": ms, "checkpoint": path,
                      "steps": generator.content.step}
    keys = ("auc_low", "auc_high", "fpd_x1e3", "mean_separation_power", "cells_per_shower",
            "median_ln_deposit_mev", "hottest_cell_share")
    print(f"{args.n} vs {args.n} showers of the reference "
          f"(split of --n-eval {args.n_eval}, seed {args.seed})")
    print(f"{'':16s}" + "".join(f"{k[:14]:>16s}" for k in keys))
    print(f"{'geant4 physics':16s}" + " " * 64
          + "".join(f"{rows['geant4 (floor)']['physics_reference'][k]:16.4g}" for k in keys[4:]))
    for name, row in rows.items():
        print(f"{name[:16]:16s}" + "".join(f"{row[k]:16.4g}" for k in keys))
    if args.out:
        args.out.write_text(json.dumps({"n": args.n, "n_eval": args.n_eval, "seed": args.seed, "rows": rows},
                                       indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
