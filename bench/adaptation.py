"""Adaptation curves: does a pre-trained model reach a detector's fidelity with fewer of its showers and
fewer steps than training from scratch?

For every number of target showers (``--sizes``) and every method (``--methods``: ``scratch`` trains the
pre-trained model's architecture from its own initial weights with the target's own context; ``full``,
``bias`` and ``lora`` adapt ``--pretrained`` with ``caloforge.adaptation.adapt``, the new detector claiming
a spare slot), one run of ``--steps``' largest value is trained, snapshotted at each value of ``--steps``,
and every snapshot is scored against held-out target showers with the validation suite (low- and
high-level classifier AUC; ``caloforge.evaluate``). The split is ``bench/fidelity.py --data``'s
(``--split-n-eval``, ``--seed``), so the held-out showers are the ones the leaderboard scores on; the
training showers are the first n of the rest. A second held-out half gives the floor.

    python bench/adaptation.py --pretrained runs/fm/pre4/model.ckpt --data ../shared/data/g4-siw/train.h5 \
        --sizes 100,1000,10000 --methods scratch,full,lora --steps 500,2000 \
        --out bench/results/adaptation_g4.json

All runs share one learning-rate schedule (the pre-trained run's optimiser settings, warm-up and cosine decay
over ``--steps``' largest value), so a snapshot at step k is k steps into that schedule. Generation uses
``--sampler`` (default DPM-Solver++(2M) in log-SNR, 16 steps), the same for every row. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import split_file
from lightning.pytorch.callbacks import Callback

from caloforge.adaptation import adapt
from caloforge.checkpoint import read_checkpoint
from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig
from caloforge.evaluate.pipeline import EvaluateConfig, collect, compute_metrics, low_level_capacity
from caloforge.generate import load_generator
from caloforge.runconfig import AdaptConfig, ConditionConfig, RunConfig
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]


class Snapshots(Callback):
    """Save the run at the given global steps as ``step-K.ckpt`` (the caloforge entry holds merged
    weights, so each loads as a model)."""

    def __init__(self, directory: Path, steps: list[int]) -> None:
        self.directory, self.steps = directory, set(steps)
        self.saved: dict[int, Path] = {}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self.saved:
            path = self.directory / f"step-{step}.ckpt"
            trainer.save_checkpoint(path)
            self.saved[step] = path


def run_config(base: RunConfig, steps: int, seed: int) -> RunConfig:
    """The pre-trained run's config with this benchmark's schedule (no time budget, few checkpoints)."""
    train_config = replace(base.train, max_steps=steps, max_minutes=None, checkpoint_every=steps, seed=seed)
    return replace(base, train=train_config)


def score(checkpoint: Path, reference: Any, energy: np.ndarray, config: EvaluateConfig, capacity: int,
          args: argparse.Namespace) -> dict[str, Any]:
    generator = load_generator(checkpoint)
    start = time.perf_counter()
    generated = generator.sample(energy, seed=args.seed + 7, batch_size=500, n_steps=args.sampler_steps,
                                 sampler=args.sampler)
    seconds = time.perf_counter() - start
    metrics = compute_metrics(collect([generated], "generated", config, capacity), reference, config)
    ratio = generated.showers.sum(axis=1, dtype=np.float64) / generated.energy
    classifier = metrics["classifier"]
    return {"auc_low": classifier["low"]["auc"], "auc_high": classifier["high"]["auc"],
            "fpd_x1e3": metrics["fpd_x1e3"]["value"], "mean_etot_over_einc": float(ratio.mean()),
            "generation_s": seconds}


def scoring(reference_set: ShowerSet, args: argparse.Namespace) -> tuple[EvaluateConfig, int, Any]:
    """The validation settings every snapshot is scored with (low- and high-level classifiers, FPD, KPD; no
    plots), the low-level classifier's capacity and the reference's collected features."""
    eval_config = EvaluateConfig(
        classifiers=("low", "high"), classifier=ClassifierConfig(epochs=args.classifier_epochs),
        seed=args.seed, plots=False, fpd_min_samples=min(10_000, args.n_eval // 2),
        fpd_max_samples=args.n_eval, kpd_batch_size=min(10_000, args.n_eval),
    )
    capacity = low_level_capacity(reference_set.geometry.n_voxels, eval_config)
    return eval_config, capacity, collect([reference_set], "reference", eval_config, capacity)


def write_result(out: str, fields: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write the JSON result (command, commit, machine, ``fields``, ``rows``) atomically to ``out``."""
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    payload = {"command": " ".join(sys.argv), "commit": commit, "machine": f"{os.cpu_count()} CPU cores",
               **fields, "rows": rows}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="The pre-trained model.ckpt.")
    parser.add_argument("--data", required=True, help="The target detector's showers (HDF5).")
    parser.add_argument("--sizes", default="100,1000,10000", help="Numbers of target training showers.")
    parser.add_argument("--methods", default="scratch,full,bias,lora")
    parser.add_argument("--steps", default="500,2000", help="Training steps at which to score.")
    parser.add_argument("--n-eval", type=int, default=2000, help="Held-out showers scored against.")
    parser.add_argument("--split-n-eval", type=int, default=10_000, help="bench/fidelity.py's --n-eval.")
    parser.add_argument("--sampler", default="dpmpp_2m_logsnr")
    parser.add_argument("--sampler-steps", type=int, default=16)
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "bench" / "results" / "adaptation-runs"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "adaptation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    steps = sorted(int(s) for s in args.steps.split(","))
    unknown = set(methods) - {"scratch", "full", "bias", "lora"}
    if unknown:
        sys.exit(f"--methods: unknown {sorted(unknown)}; known: scratch, full, bias, lora")

    pretrained = read_checkpoint(args.pretrained, weights=False)
    base = run_config(pretrained.config, steps[-1], args.seed)
    _, held_out, held_out_floor = split_file(args.data, 1, args.split_n_eval, args.seed)
    reference_set, floor = held_out[: args.n_eval], held_out_floor[: args.n_eval]
    eval_config, capacity, reference = scoring(reference_set, args)
    floor_metrics = compute_metrics(collect([floor], "floor", eval_config, capacity), reference, eval_config)
    rows: list[dict[str, Any]] = [{"method": "floor", "n_showers": None, "steps": None,
                                   "auc_low": floor_metrics["classifier"]["low"]["auc"],
                                   "auc_high": floor_metrics["classifier"]["high"]["auc"],
                                   "fpd_x1e3": floor_metrics["fpd_x1e3"]["value"]}]
    print(f"floor: AUC low {rows[0]['auc_low']:.3f} high {rows[0]['auc_high']:.3f}", flush=True)
    work = Path(args.work)
    for n in sizes:
        showers, _, _ = split_file(args.data, n, args.split_n_eval, args.seed)
        showers = ShowerSet(showers.showers, showers.geometry, showers.energy, showers.theta, showers.phi,
                            None, source=showers.source)  # one detector, whatever the file says
        for method in methods:
            out = work / f"{method}-{n}"
            if out.exists():
                sys.exit(f"{out} exists: remove it or give another --work")
            out.mkdir(parents=True)
            snapshots = Snapshots(out, steps)
            start = time.perf_counter()
            if method == "scratch":
                config = replace(base, conditions=ConditionConfig(), adapt=AdaptConfig())
                train(showers, out / "run", config, progress=False, callbacks=[snapshots])
            else:
                config = replace(base, adapt=AdaptConfig(method=method, lora_rank=args.lora_rank))
                adapt(args.pretrained, showers, out / "run", method, config=config, lora_rank=args.lora_rank,
                      progress=False, callbacks=[snapshots])
            train_s = time.perf_counter() - start
            for step, path in sorted(snapshots.saved.items()):
                row = {"method": method, "n_showers": n, "steps": step, "train_s_total": train_s,
                       **score(path, reference, reference_set.energy, eval_config, capacity, args)}
                rows.append(row)
                print(f"{method:8s} n={n:6d} step {step:5d}: AUC low {row['auc_low']:.3f} high "
                      f"{row['auc_high']:.3f} FPD {row['fpd_x1e3']:.0f}", flush=True)
                _write(args, rows)
    _write(args, rows)
    print(f"wrote {args.out}")


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    write_result(args.out, {"pretrained": args.pretrained, "data": args.data, "n_eval": args.n_eval,
                            "sampler": f"{args.sampler}:{args.sampler_steps}"}, rows)


if __name__ == "__main__":
    main()
