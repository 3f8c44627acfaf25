"""Fidelity against the number of sampler steps: does DPM-Solver++(2M) keep quality at 4-8 denoiser calls?

One trained model (``--checkpoint``, or a dataset-2 model trained here for ``--budget-minutes`` on
embedded-simulator showers), one held-out simulator reference sample, and for every sampler setting a
generated sample with the reference's incident energies; each is scored with the validation suite
(``caloforge.evaluate``: low- and high-level classifier AUC, mean E_tot/E_inc) against the reference.
A second independent simulator sample gives the floor (what the truth itself scores). Because a short
CPU training leaves the model itself far from the simulator, every setting is also scored against the
same model sampled with a converged solver (``--converged``, default DPM-Solver++(2M) with 48 steps, whose
showers differ from Heun's with 64 steps by 3e-4 in mean |d ln(1 + E/MeV)| per voxel) from the same
noise: that AUC, and the per-voxel difference of each shower from its converged twin, isolate the
solver's discretisation error from the training error. The cost axis is denoiser calls per shower,
which generation time is proportional to (``bench/generate_speed.py``).

    python bench/fewstep_fidelity.py --checkpoint bench/results/fidelity-run-XXX/model.ckpt
    python bench/fewstep_fidelity.py --budget-minutes 10 --settings dpmpp_2m:4,dpmpp_2m:8,heun:10
    python bench/fewstep_fidelity.py --checkpoint bench/results/fidelity-g4-unet-run/model.ckpt \
        --data ../shared/data/g4-siw/train.h5 --n-eval 2000 --converged none    # against Geant4

With ``--data`` the reference and the floor are Geant4's (or any file's) held-out showers, split exactly as
``bench/fidelity.py --data`` split them (``--split-n-eval``, ``--seed``), so a model trained by that
benchmark is scored on showers it never saw; the first ``--n-eval`` of each half are used.
``--converged none`` skips the converged-solver sample (and the columns against it) to save its cost.

Prints a table and writes JSON (default ``bench/results/fewstep_fidelity.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import split_file

from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig
from caloforge.evaluate.pipeline import EvaluateConfig, collect, compute_metrics, low_level_capacity
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.geometry import get_geometry
from caloforge.runconfig import load_run_config
from caloforge.simulate import simulate
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ("dpmpp_2m_logsnr:4,dpmpp_2m_logsnr:6,dpmpp_2m_logsnr:8,dpmpp_2m_logsnr:12,dpmpp_2m:4,"
                    "dpmpp_2m:8,dpmpp_2m:12,heun:5,heun:10,euler:8")


def energies(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(math.log(1e3), math.log(1e6), n))  # CaloChallenge ds2: 1 GeV - 1 TeV


def denoiser_calls(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler == "heun" else steps


def trained_model(args: argparse.Namespace) -> Path:
    config = load_run_config(args.config)
    config.train.max_minutes = args.budget_minutes
    config.train.max_steps = max(config.train.max_steps, 10_000_000)  # the budget decides
    geometry = get_geometry("calochallenge-2")
    print(f"training {args.budget_minutes:g} min on {args.n_train} simulator showers", file=sys.stderr)
    showers = simulate(geometry, energies(args.n_train, args.seed + 1), seed=args.seed + 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or ROOT / "bench" / "results" / f"fewstep-run-{stamp}")
    return train(showers, run_dir, config)


def scores(generated: ShowerSet, reference: Any, config: EvaluateConfig, capacity: int,
           converged: Any | None = None) -> dict[str, Any]:
    sample = collect([generated], "generated", config, capacity)
    metrics = compute_metrics(sample, reference, config)
    ratio = generated.showers.sum(axis=1, dtype=np.float64) / generated.energy
    classifier = metrics["classifier"]
    row = {"auc_low": classifier["low"]["auc"], "auc_high": classifier["high"]["auc"],
           "fpd_x1e3": metrics["fpd_x1e3"]["value"], "mean_etot_over_einc": float(ratio.mean())}
    if converged is not None:
        versus = compute_metrics(sample, converged, config)["classifier"]
        row.update(auc_low_vs_converged=versus["low"]["auc"], auc_high_vs_converged=versus["high"]["auc"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None, help="trained dataset-2 model (default: train one)")
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="training budget without --checkpoint")
    parser.add_argument("--config", default=str(ROOT / "configs" / "ds2-cpu.yaml"))
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--n-eval", type=int, default=2000, help="showers per generated/reference sample")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="sampler:steps,...")
    parser.add_argument("--converged", default="dpmpp_2m:48",
                        help="sampler:steps taken as the ODE solution, or 'none'")
    parser.add_argument("--data", default=None,
                        help="shower file to score against (split as bench/fidelity.py --data splits it)")
    parser.add_argument("--split-n-eval", type=int, default=10_000,
                        help="with --data: the --n-eval of the bench/fidelity.py run that made the model")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fewstep_fidelity.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    checkpoint = Path(args.checkpoint) if args.checkpoint else trained_model(args)
    generator: ShowerGenerator = load_generator(checkpoint)
    geometry = generator.geometry
    eval_config = EvaluateConfig(
        classifiers=("low", "high"), classifier=ClassifierConfig(epochs=args.classifier_epochs),
        seed=args.seed, plots=False, fpd_min_samples=min(10_000, args.n_eval // 2),
        fpd_max_samples=args.n_eval, kpd_batch_size=min(10_000, args.n_eval),
    )
    capacity = low_level_capacity(geometry.n_voxels, eval_config)
    if args.data:
        if args.n_eval > args.split_n_eval:
            sys.exit(f"--n-eval {args.n_eval} exceeds the held-out half (--split-n-eval {args.split_n_eval})")
        _, held_out, held_out_floor = split_file(args.data, 1, args.split_n_eval, args.seed)
        reference_set, floor = held_out[: args.n_eval], held_out_floor[: args.n_eval]
        if reference_set.geometry != geometry:
            sys.exit(f"--data {args.data}: geometry {reference_set.geometry.name}, "
                     f"the model's is {geometry.name}")
    else:
        reference_set = simulate(geometry, energies(args.n_eval, args.seed + 2), seed=args.seed + 2)
        floor = simulate(geometry, energies(args.n_eval, args.seed + 3), seed=args.seed + 3)
    reference = collect([reference_set], "reference", eval_config, capacity)
    floor_ratio = reference_set.showers.sum(axis=1, dtype=np.float64) / reference_set.energy
    rows: list[dict[str, Any]] = [{"setting": "held-out (floor)" if args.data else "simulator (floor)",
                                   "denoiser_calls": 0,
                                   **scores(floor, reference, eval_config, capacity)}]
    print(f"floor: {rows[0]}", file=sys.stderr)
    converged_set: ShowerSet | None = None
    converged = None
    if args.converged != "none":
        sampler, steps_text = args.converged.split(":")
        t0 = time.perf_counter()
        converged_set = generator.sample(reference_set.energy, n_steps=int(steps_text), sampler=sampler,
                                         seed=args.seed + 7, batch_size=args.batch_size)
        converged = collect([converged_set], "converged", eval_config, capacity)
        rows.append({"setting": f"{args.converged} (converged)", "sampler": sampler, "steps": int(steps_text),
                     "denoiser_calls": denoiser_calls(sampler, int(steps_text)),
                     "generate_ms_per_shower": 1e3 * (time.perf_counter() - t0) / args.n_eval,
                     **scores(converged_set, reference, eval_config, capacity)})
        print(f"converged: {rows[-1]}", file=sys.stderr)
    for item in args.settings.split(","):
        sampler, steps_text = item.split(":")
        steps = int(steps_text)
        t0 = time.perf_counter()
        generated = generator.sample(reference_set.energy, n_steps=steps, sampler=sampler,
                                     seed=args.seed + 7, batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        row = {"setting": f"{sampler}:{steps}", "sampler": sampler, "steps": steps,
               "denoiser_calls": denoiser_calls(sampler, steps),
               "generate_ms_per_shower": 1e3 * seconds / args.n_eval,
               **scores(generated, reference, eval_config, capacity, converged)}
        if converged_set is not None:
            # Same noise as the converged sample and deterministic solvers: the difference is the solver's.
            row["mean_abs_dlog1p_voxel_vs_converged"] = float(
                np.abs(np.log1p(generated.showers) - np.log1p(converged_set.showers)).mean())
        rows.append(row)
        print(f"{row['setting']}: calls {row['denoiser_calls']}, AUC low {row['auc_low']:.3f}, "
              f"high {row['auc_high']:.3f}, E_tot/E_inc {row['mean_etot_over_einc']:.4f}", file=sys.stderr)

    result = {"benchmark": "fewstep_fidelity", "checkpoint": str(checkpoint), "geometry": geometry.name,
              "data": args.data, "family": generator.content.family,
              "training_steps": generator.content.step, "n_eval": args.n_eval,
              "reference_mean_etot_over_einc": float(floor_ratio.mean()),
              "training_mean_etot_over_einc": generator.content.ranges.mean_energy_ratio,
              "classifier": {"epochs": args.classifier_epochs, "n_hidden": eval_config.classifier.n_hidden},
              "torch_threads": torch.get_num_threads(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)

    print(f"fidelity vs sampler steps: {geometry.name}, model {checkpoint} ({generator.content.step} "
          f"training steps), {args.n_eval} vs {args.n_eval} showers")
    print(f"{'':26s}{'vs reference':>29s}{'':13s}{'vs converged':>27s}")
    print(f"{'setting':20s}{'calls':>6s}{'AUC low':>9s}{'AUC high':>10s}{'FPD x1e3':>10s}{'E_tot/E_inc':>13s}"
          f"{'AUC low':>9s}{'AUC high':>10s}{'|dlnE|':>9s}{'ms/shower':>11s}")
    for row in rows:
        ms = row.get("generate_ms_per_shower")
        low_c, high_c = row.get("auc_low_vs_converged"), row.get("auc_high_vs_converged")
        print(f"{row['setting']:20s}{row['denoiser_calls']:6d}{row['auc_low']:9.3f}{row['auc_high']:10.3f}"
              f"{row['fpd_x1e3']:10.1f}{row['mean_etot_over_einc']:13.4f}"
              + (f"{low_c:9.3f}{high_c:10.3f}{row['mean_abs_dlog1p_voxel_vs_converged']:9.4f}"
                 if low_c is not None else f"{'-':>9s}{'-':>10s}{'-':>9s}")
              + (f"{ms:11.1f}" if ms is not None else f"{'-':>11s}"))
    print(f"reference E_tot/E_inc {result['reference_mean_etot_over_einc']:.4f}; wrote {out}")


if __name__ == "__main__":
    main()
