"""Put a benchmarked model and a held-out Geant4 sample into the package (``src/caloforge/pretrained``).

Reads a finished ``bench/fidelity.py --data FILE`` run (its run directory and its JSON result), writes the
model as a slim checkpoint (``caloforge.checkpoint.write_sampler_checkpoint``), writes the first
``--n-sample`` showers of the run's held-out reference half as float16 HDF5 (gzip), and records both in
``index.json`` with the measured figures and the command that measured them.

    python bench/ship_pretrained.py --run bench/results/fidelity-g4-run \\
        --result bench/results/fidelity_g4_cpu60.json --name g4-siw-dit --n-sample 2500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from caloforge.checkpoint import read_checkpoint, write_sampler_checkpoint
from caloforge.io import read_showers, write_showers

ROOT = Path(__file__).resolve().parents[1]
SHELF = ROOT / "src" / "caloforge" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="run directory of bench/fidelity.py --data")
    parser.add_argument("--result", required=True, help="its JSON result")
    parser.add_argument("--name", default="g4-siw-dit", help="the model's name for --pretrained")
    parser.add_argument("--sample-name", default="g4-siw-electrons")
    parser.add_argument("--n-sample", type=int, default=2500, help="held-out Geant4 showers to ship")
    args = parser.parse_args()

    record = json.loads((Path(args.run) / "fidelity_run.json").read_text())
    result = json.loads(Path(args.result).read_text())
    if not record.get("data"):
        sys.exit(f"{args.run}: not a run on a shower file (bench/fidelity.py --data)")
    content = read_checkpoint(Path(args.run) / "model.ckpt")
    model_file = f"{args.name}.ckpt"
    write_sampler_checkpoint(content, SHELF / model_file)

    # the reference half of the run's held-out part, as bench/fidelity.py split it
    showers = read_showers(record["data"])
    order = np.random.default_rng(record["seed"]).permutation(len(showers))
    sample = showers[np.sort(order[: min(args.n_sample, record["n_eval"])])]
    sample_file = f"{args.sample_name}.h5"
    write_showers(SHELF / sample_file, sample, dtype=np.float16, compression="gzip")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    ranges = content.ranges
    model, floor = result["model"], result["floor"]
    entry = {
        "name": args.name,
        "file": model_file,
        "family": content.family,
        "description": f"{content.config.model.dit.size} DiT ({content.family}) with the layer-energy "
                       f"stage, {result['sampler']} {result['sampler_steps']} steps",
        "training_data": f"{record['n_train']} Geant4 11.4 electron showers in the Par04 SiW calorimeter "
                         f"(CaloChallenge dataset-2 readout, 45 x 16 x 9), normal incidence; "
                         f"{result['train_minutes']:.0f} min, {result['steps_trained']} steps on 2 CPU cores",
        "conditions": f"energy {ranges.energy_min / 1e3:.3g}-{ranges.energy_max / 1e3:.4g} GeV (MeV in the "
                      "API), normal incidence, detector 0",
        "metrics": {
            "auc_low": round(model["auc_low"], 3), "auc_high": round(model["auc_high"], 3),
            "fpd_x1e3": round(model["fpd_x1e3"], 1), "kpd_x1e3": round(model["kpd_x1e3"], 3),
            "floor_auc_low": round(floor["auc_low"], 3), "floor_auc_high": round(floor["auc_high"], 3),
            "showers_per_s_cpu": round(result["generation_showers_per_s"], 1),
            "measured": f"{result['n_eval']} vs {result['n_eval']} held-out Geant4 showers, "
                        f"bench/fidelity.py --data, commit {commit}",
        },
    }
    index_path = SHELF / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"models": [], "samples": []}
    index["models"] = [m for m in index["models"] if m["name"] != args.name] + [entry]
    index["samples"] = [s for s in index["samples"] if s["name"] != args.sample_name] + [{
        "name": args.sample_name, "file": sample_file,
        "description": f"{len(sample)} held-out Geant4 11.4 electron showers, 1-100 GeV, Par04 SiW "
                       "(dataset-2 readout), float16",
    }]
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    for path in (SHELF / model_file, SHELF / sample_file):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote {index_path}")


if __name__ == "__main__":
    main()
