"""Codebook usage of a vq-gpt run against training step: perplexity (exp of the entropy of code use; k when
k codes are used equally) and codes used per batch, from the run's logs/metrics.csv, with the codebook size
and the issue's target (half of it). Stage 1 only (the codebook is frozen after).

    python bench/plot_vq_codebook.py bench/results/fidelity-g4-vq-run --out docs/vq_gpt_codebook.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from caloforge.checkpoint import read_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory of a vq-gpt training")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    run = Path(args.run)
    content = read_checkpoint(run / "model.ckpt", weights=False)
    vq = content.config.model.vq
    n_codes = vq.resolved().n_codes
    steps, perplexity, used = [], [], []
    with open(run / "logs" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/stage") == "1.0" and row.get("train/perplexity"):
                steps.append(int(row["step"]))
                perplexity.append(float(row["train/perplexity"]))
                used.append(float(row["train/codes_used"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, perplexity, label="perplexity")
    ax.plot(steps, used, label="codes used in a batch", alpha=0.7)
    ax.axhline(n_codes, color="k", lw=0.8, ls="--", label=f"codebook size {n_codes}")
    ax.axhline(n_codes / 2, color="r", lw=0.8, ls=":", label="target: half the codebook")
    ax.set_xlabel("training step (stage 1)")
    ax.set_ylabel("codes")
    ax.set_title(f"vq-gpt codebook usage ({run.name})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"final perplexity {perplexity[-1]:.1f}, codes used {used[-1]:.0f} of {n_codes}; wrote {args.out}")


if __name__ == "__main__":
    main()
