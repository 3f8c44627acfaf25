"""The GFlash baseline against a full-simulation file, before and after fitting its parameters.

Splits DATA reproducibly (a permutation seeded by ``--seed``; the last 20 % held out), fits the embedded
simulator's parameters to ``--n-fit`` showers of the training part (``caloforge.simulate.fit``, what
``caloforge fit-gflash`` runs), then scores against ``--n-eval`` held-out showers (the reference):

- GFlash as shipped (default parameters), at the conditions of a second, disjoint set of ``--n-eval``
  held-out showers;
- GFlash with only its sampling fraction fitted (the closed-form step; what a rescaling alone gives);
- GFlash with all fitted parameters, at the same conditions;
- the floor: that second held-out set itself (two disjoint halves of the held-out part).

Each row: low- and high-level classifier AUC (``caloforge.evaluate``, the CPU classifier settings of
``bench/fidelity.py``), FPD and KPD (x 1e3), separation powers. Prints a table and writes JSON (and the
fitted parameters as a params YAML beside it).

    python bench/gflash_fit.py --data ../shared/data/g4-siw/train.h5
    python bench/gflash_fit.py --data FILE --params fitted.yaml   # score a given fit, do not fit

Runs on one thread by default (``--threads``); ~10-15 minutes for the defaults on one core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from fidelity import summarise as headline

ROOT = Path(__file__).resolve().parents[1]


def read_split(path: str, seed: int, n_fit: int, n_eval: int) -> dict[str, Any]:
    """(fit, reference, floor) shower sets: a seeded permutation of the file, the last 20 % held out; fit
    = the first ``n_fit`` of the training part, reference and floor = two disjoint ``n_eval`` of the
    held-out part. Streams the file once."""
    from caloforge.data import ShowerSet
    from caloforge.io import inspect_file, iter_showers
    from caloforge.progress import progress_bar

    info = inspect_file(path)
    n = info.n_showers
    order = np.random.default_rng(seed).permutation(n)
    n_train = n - round(0.2 * n)
    train, held = order[:n_train], order[n_train:]
    if n_fit > len(train) or 2 * n_eval > len(held):
        sys.exit(f"{path}: {n} showers give {len(train)} for training and {len(held)} held out; "
                 f"asked for {n_fit} to fit and 2 x {n_eval} held out")
    role = np.full(n, -1)
    role[train[:n_fit]] = 0
    role[held[:n_eval]] = 1
    role[held[n_eval:2 * n_eval]] = 2
    parts: dict[int, list[ShowerSet]] = {0: [], 1: [], 2: []}
    start = 0
    with progress_bar(n, "read", unit="shower") as bar:
        for chunk in iter_showers(path, chunk_size=5000, dtype=np.float32):
            r = role[start:start + len(chunk)]
            for k in parts:
                if (r == k).any():
                    parts[k].append(chunk[r == k])
            start += len(chunk)
            bar.update(len(chunk))
    sets = {name: ShowerSet.concatenate(parts[k]) for k, name in enumerate(("fit", "reference", "floor"))}
    for showers in sets.values():
        showers.source = path
    return {"sets": sets, "n_showers": n, "n_train": int(n_train), "n_held_out": int(n - n_train)}


def summarise(metrics: dict[str, Any], showers: Any) -> dict[str, Any]:
    """``bench/fidelity.py``'s headline numbers of a ``compute_metrics`` result, and two physics summaries
    of the sample."""
    ratio = showers.showers.sum(axis=1, dtype=np.float64) / showers.energy
    return {
        **headline(metrics),
        "visible_fraction_mean": float(ratio.mean()),
        "hit_fraction": float((showers.showers > 0).mean()),
    }


def _machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "g4-siw" / "train.h5"),
                        help="full-simulation shower file")
    parser.add_argument("--n-fit", type=int, default=2000, help="training-part showers the fit sees")
    parser.add_argument("--n-eval", type=int, default=4000, help="reference = floor = generated showers")
    parser.add_argument("--max-evaluations", type=int, default=300, help="the fit's simulation budget")
    parser.add_argument("--params", default=None, help="a params YAML to score instead of fitting")
    parser.add_argument("--classifier-epochs", type=int, default=15, help="as bench/fidelity.py")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch and BLAS)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the fit and the scoring")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gflash_fit.json"))
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from caloforge.config import load_yaml, to_dict
    from caloforge.evaluate.classifier import ClassifierConfig
    from caloforge.evaluate.pipeline import EvaluateConfig, collect, compute_metrics, low_level_capacity
    from caloforge.simulate import GFlashConfig, simulate
    from caloforge.simulate.fit import FIT_MAX_SPOTS, fit_gflash, params_yaml

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # BLAS of numpy (the fit's matrix products) and scikit-learn
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    split = read_split(args.data, args.seed, args.n_fit, args.n_eval)
    fit_set, reference, floor = (split["sets"][k] for k in ("fit", "reference", "floor"))
    timings["read_s"] = time.perf_counter() - t0
    out = Path(args.out)
    params_path = out.with_name(out.stem + "_params.yaml")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    t0 = time.perf_counter()
    fit_record: dict[str, Any]
    if args.params:
        fitted = load_yaml(GFlashConfig, args.params)
        fit_record = {"params": args.params}
    else:
        result = fit_gflash(fit_set, start=GFlashConfig(max_spots=FIT_MAX_SPOTS), seed=args.seed,
                            max_evaluations=args.max_evaluations)
        fitted = result.config
        params_path.parent.mkdir(parents=True, exist_ok=True)
        params_path.write_text(params_yaml(result, f"{args.data} (training part, seed {args.seed})", date))
        fit_record = {
            "params": str(params_path), "objective_start": result.objective_start,
            "objective": result.objective, "terms_start": result.terms_start, "terms": result.terms,
            "parameters": {k: {"start": a, "fitted": b} for k, (a, b) in result.parameters.items()},
            "n_evaluations": result.n_evaluations, "seconds": result.seconds, "message": result.message,
        }
    timings["fit_s"] = time.perf_counter() - t0
    # The closed-form step alone: the sampling fraction that matches the mean visible energy.
    only_fraction = fit_gflash(fit_set, parameters=["tuning.sampling_fraction"], seed=args.seed,
                               max_evaluations=1, progress=False).config

    eval_config = EvaluateConfig(
        classifier=ClassifierConfig(epochs=args.classifier_epochs),
        seed=args.seed,
        plots=False,
        fpd_min_samples=min(10_000, args.n_eval // 2),
        fpd_max_samples=args.n_eval,
        kpd_batch_size=min(10_000, args.n_eval),
    )
    capacity = low_level_capacity(reference.geometry.n_voxels, eval_config)
    ref_sample = collect([reference], "reference", eval_config, capacity)
    conditions = floor.energy  # the generated samples take the floor sample's place
    rows: dict[str, Any] = {}
    candidates = {
        "gflash_default": GFlashConfig(),
        "gflash_sampling_fraction": only_fraction,
        "gflash_fitted": fitted,
    }
    for name, config in candidates.items():
        t0 = time.perf_counter()
        showers = simulate(reference.geometry, conditions, config=config, seed=args.seed + 1)
        timings[f"simulate_{name}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = compute_metrics(collect([showers], name, eval_config, capacity), ref_sample, eval_config,
                                  show_progress=True)
        timings[f"score_{name}_s"] = time.perf_counter() - t0
        rows[name] = summarise(metrics, showers)
        rows[name]["config"] = to_dict(config)
        print(f"{name}: AUC low {rows[name]['auc_low']:.4f}, high {rows[name]['auc_high']:.4f}",
              file=sys.stderr)
    t0 = time.perf_counter()
    metrics = compute_metrics(collect([floor], "floor", eval_config, capacity), ref_sample, eval_config,
                              show_progress=True)
    timings["score_floor_s"] = time.perf_counter() - t0
    rows["floor"] = summarise(metrics, floor)
    ref_ratio = reference.showers.sum(axis=1, dtype=np.float64) / reference.energy

    record = {
        "benchmark": "gflash_fit",
        "data": args.data,
        "split": {"seed": args.seed, "n_showers": split["n_showers"], "n_train": split["n_train"],
                  "n_held_out": split["n_held_out"], "held_out_fraction": 0.2},
        "n_fit": len(fit_set),
        "n_eval": args.n_eval,
        "reference": {"visible_fraction_mean": float(ref_ratio.mean()),
                      "hit_fraction": float((reference.showers > 0).mean())},
        "fit": fit_record,
        "rows": rows,
        "classifier": to_dict(eval_config.classifier),
        "threads": args.threads,
        "timings_s": timings,
        "machine": _machine(),
        "commit": _commit(),
        "date": date,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out)

    labels = {"gflash_default": "GFlash", "gflash_sampling_fraction": "GFlash, f_s", "gflash_fitted":
              "GFlash fitted", "floor": "floor"}
    print(f"GFlash vs {args.data}: {args.n_eval} vs {args.n_eval} held-out showers; fit on {len(fit_set)} "
          "training-part showers")
    print(f"{'':24s}" + "".join(f"{labels[k]:>15s}" for k in rows))
    for key in ("auc_low", "auc_high", "fpd_x1e3", "kpd_x1e3", "mean_separation_power",
                "visible_fraction_mean", "hit_fraction"):
        print(f"{key:24s}" + "".join(f"{rows[k][key]:15.4f}" for k in rows))
    print(f"reference: visible fraction {ref_ratio.mean():.4f}, hit fraction "
          f"{record['reference']['hit_fraction']:.4f}")
    if "objective" in fit_record:
        print(f"fit: objective {fit_record['objective_start']:.4f} -> {fit_record['objective']:.4f} in "
              f"{fit_record['n_evaluations']} evaluations, {fit_record['seconds']:.0f} s; "
              f"params {params_path}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
