"""GFlash simulator throughput: showers per second on CaloChallenge dataset-2 and dataset-3 readouts.

Energies log-uniform 1 GeV - 1 TeV (as in the CaloChallenge), normal incidence, default settings
(``GFlashConfig()``). Two figures per geometry: ``simulate()`` alone (showers in memory) and
``simulate_to_file()`` (the whole CLI path: spectra, simulation, float32 HDF5 writing). Each figure is the
best of ``--repeats`` runs, which filters out time lost to other processes on a shared machine; the
median is reported as well, and showers per CPU-second of this process (``time.process_time``), which is
what one idle core gives since the simulator is single-threaded numpy. The machine's load average at
start is recorded (other work on the cores slows every wall-clock figure).

    python bench/simulate_speed.py --n 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from caloforge.geometry import get_geometry
from caloforge.simulate import GFlashConfig, simulate, simulate_to_file
from caloforge.spectra import parse_spectrum


def measure(geometry_name: str, n: int, repeats: int, config: GFlashConfig) -> dict[str, object]:
    geometry = get_geometry(geometry_name)
    spectrum = parse_spectrum("log-uniform:1000,1000000")
    in_memory, to_file, per_cpu_second = [], [], []
    for repeat in range(repeats):
        energy = spectrum.sample(n, np.random.default_rng(repeat))
        start, cpu_start = time.perf_counter(), time.process_time()
        showers = simulate(geometry, energy, config=config, seed=repeat)
        in_memory.append(n / (time.perf_counter() - start))
        per_cpu_second.append(n / (time.process_time() - cpu_start))
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            simulate_to_file(Path(tmp) / "showers.h5", geometry, n, spectrum, config=config, seed=repeat,
                             progress=False)
            to_file.append(n / (time.perf_counter() - start))
    nonzero = float(np.count_nonzero(showers.showers)) / showers.showers.size
    result = {
        "geometry": geometry_name,
        "n_voxels": geometry.n_voxels,
        "n_showers": n,
        "repeats": repeats,
        "showers_per_s": round(max(in_memory), 1),
        "showers_per_s_median": round(statistics.median(in_memory), 1),
        "showers_per_s_to_file": round(max(to_file), 1),
        "showers_per_s_to_file_median": round(statistics.median(to_file), 1),
        "showers_per_cpu_s": round(statistics.median(per_cpu_second), 1),
        "nonzero_voxel_fraction": round(nonzero, 4),
        "visible_fraction_mean": round(float(np.mean(showers.showers.sum(axis=1) / showers.energy)), 5),
    }
    print(f"{geometry_name:<16} {geometry.n_voxels:>6} voxels  "
          f"simulate {result['showers_per_s']:>8.1f} /s (median {result['showers_per_s_median']:.1f})  "
          f"to file {result['showers_per_s_to_file']:>8.1f} /s "
          f"(median {result['showers_per_s_to_file_median']:.1f})  "
          f"per CPU-second {result['showers_per_cpu_s']:.1f}  nonzero {nonzero:.3f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="showers per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (best and median kept)")
    parser.add_argument("--geometries", nargs="+", default=["calochallenge-2", "calochallenge-3"])
    parser.add_argument("--max-spots", type=int, default=None, help="override GFlashConfig.max_spots")
    parser.add_argument("--out", type=Path, default=Path("bench/results/simulate_speed.json"))
    args = parser.parse_args()

    config = GFlashConfig() if args.max_spots is None else GFlashConfig(max_spots=args.max_spots)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"GFlash simulator, log-uniform 1 GeV - 1 TeV, max_spots={config.max_spots}, "
          f"{os.cpu_count()} cores, load average {load}")
    results = {
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": load,
                    "python": platform.python_version(), "numpy": np.__version__,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "config": {"max_spots": config.max_spots, "energy": "log-uniform:1000,1000000"},
        "results": [measure(name, args.n, args.repeats, config) for name in args.geometries],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
