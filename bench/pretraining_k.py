"""How does adaptation to a held-out detector depend on the number k of pre-training detectors, the total
number of pre-training showers fixed?

For every k in ``--ks`` a model is pre-trained for ``--pretrain-steps`` on ``--total`` showers split evenly
over the first k files of ``--files`` (each file one detector, its ``detector`` ids kept), then adapted
(``caloforge.adaptation.adapt``, ``--method``) to ``--adapt-showers`` showers of the held-out ``--target``
detector for ``--adapt-steps``; k = 0 trains the same architecture from scratch on the same target showers
for the same steps. Each snapshot (``--adapt-steps``' values) is scored against held-out target showers
(the split of ``bench/fidelity.py``: ``--split-n-eval``, ``--seed``) with low- and high-level classifier
AUCs, as ``bench/adaptation.py`` does. Prints a table and writes JSON.

    python bench/pretraining_k.py --files runs/fm/sim-{SiW,SciPb,PbWO4,ODD}.h5 \
        --target runs/fm/sim-ALLEGRO.h5 --ks 0,1,2,4 --total 20000 --pretrain-steps 3000 \
        --adapt-showers 1000 --adapt-steps 200,1000 \
        --out bench/results/pretraining_k.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from adaptation import Snapshots, score, scoring, write_result
from fidelity import split_file

from caloforge.adaptation import adapt
from caloforge.data import ShowerSet
from caloforge.io import read_showers
from caloforge.runconfig import AdaptConfig, ConditionConfig, load_run_config
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]


def pretraining_set(files: list[str], k: int, total: int) -> ShowerSet:
    """``total // k`` showers from each of the first ``k`` files (their first ones), joined."""
    parts = []
    for name in files[:k]:
        showers = read_showers(name)
        if showers.detector is None:
            sys.exit(f"--files {name}: no 'detector' dataset (simulate with --detector N)")
        if len(showers) < total // k:
            sys.exit(f"--files {name}: {len(showers)} showers, need {total // k} for k = {k}")
        parts.append(showers[: total // k])
    return ShowerSet.concatenate(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="+", required=True, help="One file per pre-training detector.")
    parser.add_argument("--target", required=True, help="The held-out detector's showers.")
    parser.add_argument("--ks", default="0,1,2,4", help="Numbers of pre-training detectors (0: scratch).")
    parser.add_argument("--total", type=int, default=20_000, help="Pre-training showers, whatever k.")
    parser.add_argument("--config", default=str(ROOT / "configs" / "ds2-cpu.yaml"))
    parser.add_argument("--slots", type=int, default=5, help="conditions.detector_slots")
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--adapt-showers", type=int, default=1000)
    parser.add_argument("--adapt-steps", default="200,1000", help="Adaptation steps at which to score.")
    parser.add_argument("--method", default="full", choices=["full", "bias", "lora"])
    parser.add_argument("--n-eval", type=int, default=2000, help="Held-out target showers scored against.")
    parser.add_argument("--split-n-eval", type=int, default=4000, help="bench/fidelity.py's --n-eval.")
    parser.add_argument("--sampler", default="dpmpp_2m_logsnr")
    parser.add_argument("--sampler-steps", type=int, default=16)
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "runs" / "pretraining-k"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pretraining_k.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    if max(ks) > len(args.files):
        sys.exit(f"--ks: k = {max(ks)} needs {max(ks)} --files, {len(args.files)} given")
    steps = sorted(int(s) for s in args.adapt_steps.split(","))

    base = load_run_config(args.config, "edm-dit")
    base = replace(base, conditions=ConditionConfig(detector_slots=args.slots),
                   train=replace(base.train, max_minutes=None, seed=args.seed, checkpoint_every=10**9))
    target, held_out, _ = split_file(args.target, args.adapt_showers, args.split_n_eval, args.seed)
    target = ShowerSet(target.showers, target.geometry, target.energy, target.theta, target.phi, None,
                       source=target.source)  # the new detector, whatever id the file gives it
    reference_set = held_out[: args.n_eval]
    eval_config, capacity, reference = scoring(reference_set, args)
    adapt_config = replace(base, train=replace(base.train, max_steps=steps[-1]))

    rows: list[dict[str, Any]] = []
    work = Path(args.work)
    for k in ks:
        out = work / f"k{k}"
        if out.exists():
            sys.exit(f"{out} exists: remove it or give another --work")
        out.mkdir(parents=True)
        pretrain_s = 0.0
        snapshots = Snapshots(out, steps)
        if k == 0:
            start = time.perf_counter()
            scratch = replace(adapt_config, conditions=ConditionConfig())
            train(target, out / "adapted", scratch, progress=False, callbacks=[snapshots])
        else:
            start = time.perf_counter()
            config = replace(base, train=replace(base.train, max_steps=args.pretrain_steps))
            pretrained = train(pretraining_set(args.files, k, args.total), out / "pretrained", config,
                               progress=False)
            pretrain_s = time.perf_counter() - start
            print(f"k={k}: pre-trained {args.pretrain_steps} steps in {pretrain_s / 60:.1f} min", flush=True)
            start = time.perf_counter()
            adapt(pretrained, target, out / "adapted", args.method,
                  config=replace(adapt_config, adapt=AdaptConfig(method=args.method)), progress=False,
                  callbacks=[snapshots])
        adapt_s = time.perf_counter() - start
        for step, path in sorted(snapshots.saved.items()):
            row = {"k": k, "showers_per_detector": args.total // k if k else None, "adapt_steps": step,
                   "pretrain_s": pretrain_s, "adapt_s_total": adapt_s,
                   **score(path, reference, reference_set.energy, eval_config, capacity, args)}
            rows.append(row)
            print(f"k={k} adapt step {step:5d}: AUC low {row['auc_low']:.3f} high {row['auc_high']:.3f} "
                  f"FPD {row['fpd_x1e3']:.0f}", flush=True)
            _write(args, rows)
    print(f"wrote {args.out}")


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    write_result(args.out, {"files": args.files, "target": args.target, "total": args.total,
                            "pretrain_steps": args.pretrain_steps, "adapt_showers": args.adapt_showers,
                            "method": args.method, "n_eval": args.n_eval,
                            "sampler": f"{args.sampler}:{args.sampler_steps}"}, rows)


if __name__ == "__main__":
    main()
