"""Speed ratios between models, timed in turns: how much faster one model generates than another.

This machine's speed wanders by up to 30 % within an hour, and one leaderboard run times each model once, so
a ratio read off the board rests on one sample of each. Here the models are timed in turn, ``--repeats``
rounds, each time in a fresh process (``leaderboard.time_apart``: PyTorch and onnxruntime, the same
``--threads``), at the reference showers' incident energies of ``--data``'s held-out split (as the
leaderboard). For every model and batch size it keeps the faster runtime of each round and reports the
median and the spread over rounds, and the ratio of the first model's median to each other's.

    python bench/speed_ratio.py --data ../shared/data/g4-siw/train.h5 --n-eval 10000 \\
        --model edm-dit:cd=bench/results/fidelity_g4_dit_cd.json \\
        --model mdma-gan:h16-spread1-layers=bench/results/fidelity_g4_mdma_h16_spread1_callayers.json

``--model NAME=PATH`` takes a checkpoint, or a ``bench/fidelity.py`` JSON whose ``model_path`` is the
checkpoint it scored. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fidelity import split_file
from leaderboard import ROOT, machine, time_apart


def checkpoint_of(path: str) -> str:
    """A checkpoint path, given one or a ``bench/fidelity.py`` JSON (its ``model_path``)."""
    if path.endswith(".json"):
        return str(json.loads(Path(path).read_text())["model_path"])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shower file: its held-out reference energies")
    parser.add_argument("--n-eval", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="append", required=True,
                        help="NAME=CHECKPOINT or NAME=FIDELITY_JSON (at least twice; ratios: to the first)")
    parser.add_argument("--batches", default="1,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "speed_ratio.json"))
    args = parser.parse_args()
    models = [item.split("=", 1) for item in args.model]
    if len(models) < 2 or any(len(m) != 2 for m in models):
        sys.exit("--model: give NAME=PATH at least twice")
    batches = [int(b) for b in args.batches.split(",")]
    _, reference, _ = split_file(args.data, None, args.n_eval, args.seed)
    rounds: dict[str, list[dict[int, float]]] = {name: [] for name, _ in models}
    for round_ in range(args.repeats):
        for name, path in models:
            timing = time_apart(Path(checkpoint_of(path)), reference.energy, batches, True, args.threads)
            best = {b: min(t[b] for t in timing.values() if b in t) for b in batches}
            rounds[name].append(best)
            print(f"round {round_ + 1}/{args.repeats} {name}: " + ", ".join(
                f"batch {b} {ms:.3g} ms" for b, ms in best.items()), file=sys.stderr, flush=True)
    first = models[0][0]
    summary: dict[str, Any] = {}
    print("| model | " + " | ".join(f"batch {b}: median (min-max) ms, x {first}" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for name, _ in models:
        cells, summary[name] = [], {}
        for b in batches:
            values = [r[b] for r in rounds[name]]
            median = statistics.median(values)
            ratio = statistics.median(r[b] for r in rounds[first]) / median
            summary[name][b] = {"median_ms": median, "min_ms": min(values), "max_ms": max(values),
                                "speedup_vs_first": ratio}
            cells.append(f"{median:.3g} ({min(values):.3g}-{max(values):.3g}), {ratio:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    record = {"benchmark": "speed_ratio", "data": args.data, "n_eval": args.n_eval, "threads": args.threads,
              "models": dict(models), "rounds": rounds, "summary": summary, "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
