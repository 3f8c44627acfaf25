"""The adaptation curves of ``bench/adaptation.py`` as a picture.

Left: low-level classifier AUC against the number of target showers, one line per method, at the last
snapshot (solid) and at the first (dashed). Right: the same against fine-tuning steps, at each number of
target showers (one marker per number). The floor (held-out target showers against held-out ones) is the
grey line: 0.5 is indistinguishable.

    python bench/plot_adaptation.py bench/results/adaptation_g4.json --out docs/adaptation_g4.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"scratch": "black", "full": "tab:blue", "bias": "tab:green", "lora": "tab:orange"}
MARKERS = ["o", "s", "^", "D"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", nargs="+", help="bench/adaptation.py JSON (several: their rows joined)")
    parser.add_argument("--key", default="auc_low", choices=["auc_low", "auc_high", "fpd_x1e3"])
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    payloads = [json.loads(Path(p).read_text()) for p in args.result]
    rows = [row for payload in payloads for row in payload["rows"]]
    floor = next((row for row in rows if row["method"] == "floor"), None)
    rows = [row for row in rows if row["n_showers"] is not None]
    methods = [m for m in COLOURS if any(row["method"] == m for row in rows)]
    sizes = sorted({row["n_showers"] for row in rows})
    steps = sorted({row["steps"] for row in rows})
    label = {"auc_low": "low-level classifier AUC", "auc_high": "high-level classifier AUC",
             "fpd_x1e3": "FPD x 1e3"}[args.key]

    fig, (by_size, by_step) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for method in methods:
        for step, style in ((steps[-1], "-"), (steps[0], "--")):
            points = sorted((r["n_showers"], r[args.key]) for r in rows
                            if r["method"] == method and r["steps"] == step)
            if points:
                by_size.plot(*zip(*points, strict=True), style, marker="o", color=COLOURS[method],
                             label=f"{method}, {step} steps")
        for size, marker in zip(sizes, MARKERS, strict=False):
            points = sorted((r["steps"], r[args.key]) for r in rows
                            if r["method"] == method and r["n_showers"] == size)
            if points:
                by_step.plot(*zip(*points, strict=True), "-", marker=marker, color=COLOURS[method],
                             label=f"{method}, {size} showers")
    for ax, xlabel, ticks in ((by_size, "target showers", sizes), (by_step, "fine-tuning steps", steps)):
        if floor is not None:
            ax.axhline(floor[args.key], color="grey", lw=1, ls=":", label="floor (Geant4 vs Geant4)")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    by_size.legend(fontsize=7)
    by_step.legend(fontsize=7, ncol=2)
    target = Path(payloads[0]["data"]).name
    commits = ", ".join(sorted({payload["commit"] for payload in payloads}))
    fig.suptitle(f"Adapting a pre-trained model vs training from scratch (target {target}; "
                 f"commit {commits}; {payloads[0]['sampler']}, {payloads[0]['n_eval']} vs "
                 f"{payloads[0]['n_eval']} showers)", fontsize=10)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
