"""Distil a diffusion model trained by ``bench/fidelity.py --data`` into a consistency model (1-4 steps).

The student is trained on the teacher's own training showers (the same split of ``--data`` that
``bench/fidelity.py`` made: ``--split-n-eval``, ``--seed``), starting from the teacher's weights, for
``--budget-minutes``; its config is the teacher's with ``model.distill.method: consistency`` and the
consistency sampler. Score it against the teacher's solvers at the same number of denoiser calls with
``bench/fewstep_fidelity.py``:

    python bench/distill.py --teacher src/caloforge/pretrained/g4-siw-dit.ckpt \
        --data ../shared/data/g4-siw/train.h5 --budget-minutes 20 --out bench/results/distill-g4-run
    python bench/fewstep_fidelity.py --checkpoint bench/results/distill-g4-run/model.ckpt \
        --data ../shared/data/g4-siw/train.h5 --n-eval 2000 --converged none \
        --settings consistency:1,consistency:2,consistency:4

Writes the run directory (``model.ckpt``) and prints the steps trained.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from fidelity import split_file

from caloforge.checkpoint import read_checkpoint
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The teacher's model.ckpt (or a shipped one).")
    parser.add_argument("--data", required=True, help="The file the teacher trained on a split of.")
    parser.add_argument("--split-n-eval", type=int, default=10_000, help="bench/fidelity.py's --n-eval.")
    parser.add_argument("--seed", type=int, default=0, help="bench/fidelity.py's --seed.")
    parser.add_argument("--budget-minutes", type=float, default=20.0)
    parser.add_argument("--n-grid", type=int, default=18, help="model.distill.n_grid")
    parser.add_argument("--lr", type=float, default=2e-4, help="the student's learning rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true",
                        help="continue --out's run up to --budget-minutes in all (Lightning's timer resumes)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill-run"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = read_checkpoint(args.teacher, weights=False).config
    config.model.distill.method = "consistency"
    config.model.distill.n_grid = args.n_grid
    config.model.sample = dataclasses.replace(config.model.sample, sampler="consistency", n_steps=1)
    config.train.max_minutes = args.budget_minutes
    config.train.max_steps = 1_000_000
    config.optim.lr = args.lr
    showers, _, _ = split_file(args.data, None, args.split_n_eval, args.seed)
    start = time.perf_counter()
    path = train(showers, args.out, config, resume=args.resume, teacher=args.teacher)
    steps = read_checkpoint(path, weights=False).step
    minutes = (time.perf_counter() - start) / 60
    print(f"distilled {args.teacher} into {path}: {steps} steps in {minutes:.1f} min on "
          f"{len(showers)} showers")


if __name__ == "__main__":
    main()
