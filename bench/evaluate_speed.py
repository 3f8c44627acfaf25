"""Wall time and peak memory of a full evaluation (features, separation powers, FPD/KPD, both classifier
tests with the CPU default, plots, report) of N generated vs N reference dataset-2 showers.

Usage:
    python bench/evaluate_speed.py                       # simulates 50k + 50k showers first (not timed)
    python bench/evaluate_speed.py --generated G.h5 --reference R.h5 [--max-showers 50000]

Prints the figures and writes them to bench/results/evaluate_speed.json (plus the report directory).
Target (issue 5): 50k vs 50k under 10 minutes and under 8 GB on 2 cores. Peak memory is the maximum
resident set size of this process (``resource.getrusage``), which only runs the evaluation: the
showers are simulated in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _simulate(path: Path, n: int, seed: int, radial_scale: float) -> None:
    """Write N dataset-2 showers (log-uniform 1 GeV - 1 TeV) with the embedded simulator, in a child."""
    code = (
        "import numpy as np\n"
        "from caloforge.geometry import get_geometry\n"
        "from caloforge.io import write_showers\n"
        "from caloforge.simulate import GFlashConfig, simulate\n"
        f"e = 10 ** np.random.default_rng({100 + seed}).uniform(3, 6, {n})\n"
        f"s = simulate(get_geometry('calochallenge-2'), e, seed={seed}, "
        f"config=GFlashConfig(radial_scale={radial_scale}))\n"
        f"write_showers({str(path)!r}, s)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", type=Path, help="generated showers (default: simulate, seed 2)")
    parser.add_argument("--reference", type=Path, help="reference showers (default: simulate, seed 1)")
    parser.add_argument("--n", type=int, default=50_000, help="showers to simulate per file")
    parser.add_argument("--radial-scale", type=float, default=1.0, help="distortion of the simulated "
                        "generated sample (1.2 = 20%% wider showers)")
    parser.add_argument("--max-showers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=RESULTS / "evaluate_speed_report")
    parser.add_argument("--json", type=Path, default=RESULTS / "evaluate_speed.json")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.generated is None or args.reference is None:
        args.reference = args.reference or RESULTS / f"speed_reference_{args.n}.h5"
        args.generated = args.generated or RESULTS / f"speed_generated_{args.n}_r{args.radial_scale}.h5"
        for path, seed, scale in ((args.reference, 1, 1.0), (args.generated, 2, args.radial_scale)):
            if not path.exists():
                print(f"simulating {args.n} showers -> {path}", file=sys.stderr)
                _simulate(path, args.n, seed, scale)

    from caloforge.evaluate import EvaluateConfig, evaluate_files

    config = EvaluateConfig(seed=args.seed, max_showers=args.max_showers)
    start = time.perf_counter()
    metrics = evaluate_files(args.generated, args.reference, args.report, config)
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    result = {
        "wall_s": wall,
        "peak_rss_gb": peak_gb,
        "n_generated": metrics["samples"]["generated"]["n_selected"],
        "n_reference": metrics["samples"]["reference"]["n_selected"],
        "timing_s": metrics.get("timing_s"),
        "classifier": {k: {"auc": v["auc"], "jsd": v["jsd"], "best_epoch": v["best_epoch"]}
                       for k, v in metrics["classifier"].items()},
        "fpd_x1e3": metrics["fpd_x1e3"],
        "kpd_x1e3": metrics["kpd_x1e3"],
        "separation_power_mean": {k: v["mean"] for k, v in metrics["separation_power"]["summary"].items()},
        "settings": metrics["settings"],
        "files": {"generated": str(args.generated), "reference": str(args.reference)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": _torch_threads(),
                    "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
    }
    print(f"{result['n_generated']} vs {result['n_reference']} showers: wall {wall:.1f} s, "
          f"peak RSS {peak_gb:.2f} GB (targets: 600 s, 8 GB)")
    for name, seconds in (result["timing_s"] or {}).items():
        print(f"  {name:24s} {seconds:8.1f} s")
    for kind, value in result["classifier"].items():
        print(f"  classifier {kind}: AUC {value['auc']:.4f}  JSD {value['jsd']:.4f}")
    print(f"  FPD x1e3 {result['fpd_x1e3']['value']:.3f} +- {result['fpd_x1e3']['error']:.3f}, "
          f"KPD x1e3 {result['kpd_x1e3']['value']:.4f} +- {result['kpd_x1e3']['error']:.4f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json} and {args.report}/index.html")


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


if __name__ == "__main__":
    main()
