"""Put a benchmarked model and a held-out Geant4 sample into the package (``src/caloforge/pretrained``).

Reads a finished ``bench/fidelity.py --data FILE`` run (its run directory and its JSON result), writes the
model as a slim checkpoint (``caloforge.checkpoint.write_sampler_checkpoint``), writes the first
``--n-sample`` showers of the run's held-out reference half as float16 HDF5 (gzip), and records both in
``index.json`` with the measured figures and the command that measured them.

    python bench/ship_pretrained.py --run bench/results/fidelity-g4-run \\
        --result bench/results/fidelity_g4_cpu60.json --name g4-siw-dit --n-sample 2500

With ``--pretraining RUN`` it ships a multi-detector pre-training run instead (the start of ``caloforge
adapt --pretrained NAME``): ``--data`` names the run's training files (their detector ids and sizes go into
the entry) and ``--adaptation`` the ``bench/adaptation.py`` result measured from it, whose best AUCs per
method and number of target showers become the entry's metrics.

    python bench/ship_pretrained.py --pretraining runs/fm/pre4 --data runs/fm/sim-{SiW,SciPb,PbWO4,ODD}.h5 \\
        --adaptation bench/results/adaptation_g4.json --name sim4-dit

With ``--distilled RUN`` it ships a consistency-distilled student (``bench/distill.py``) of the shipped
model ``--teacher-name``, with the figures of ``--fewstep`` (``bench/fewstep_fidelity.py`` on the student).

    python bench/ship_pretrained.py --distilled runs/bench/distill-g4-50 --teacher-name g4-siw-dit \\
        --fewstep bench/results/distill_student_g4_50.json --name g4-siw-dit-cd
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from caloforge.checkpoint import read_checkpoint, write_sampler_checkpoint
from caloforge.io import read_showers, write_showers

ROOT = Path(__file__).resolve().parents[1]
SHELF = ROOT / "src" / "caloforge" / "pretrained"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", help="run directory of bench/fidelity.py --data")
    parser.add_argument("--result", help="its JSON result")
    parser.add_argument("--pretraining", help="a multi-detector pre-training run directory (caloforge train)")
    parser.add_argument("--data", nargs="+", default=[], help="with --pretraining: its training files")
    parser.add_argument("--adaptation", help="with --pretraining: bench/adaptation.py's JSON from it")
    parser.add_argument("--distilled", help="a distilled student's run directory (bench/distill.py)")
    parser.add_argument("--teacher-name", default="g4-siw-dit", help="with --distilled: its shipped teacher")
    parser.add_argument("--fewstep", help="with --distilled: bench/fewstep_fidelity.py's JSON on the student")
    parser.add_argument("--default-steps", type=int, default=None,
                        help="with --distilled: the shipped model's default number of steps")
    parser.add_argument("--name", default="g4-siw-dit", help="the model's name for --pretrained")
    parser.add_argument("--sample-name", default="g4-siw-electrons")
    parser.add_argument("--n-sample", type=int, default=2500, help="held-out Geant4 showers to ship")
    parser.add_argument("--keep-sample", action="store_true",
                        help="ship the model only; the package's sample stays as it is")
    parser.add_argument("--description", help="the model's one line (default: a DiT's, from the run)")
    args = parser.parse_args()
    if args.distilled:
        if not args.fewstep:
            sys.exit("--distilled needs --fewstep (bench/fewstep_fidelity.py JSON on the student)")
        ship_distilled(args)
        return
    if args.pretraining:
        if not (args.data and args.adaptation):
            sys.exit("--pretraining needs --data (its training files) and --adaptation "
                     "(bench/adaptation.py JSON)")
        ship_pretraining(args)
        return
    if not (args.run and args.result):
        sys.exit("give --run and --result (a fidelity run), or --pretraining")

    record = json.loads((Path(args.run) / "fidelity_run.json").read_text())
    result = json.loads(Path(args.result).read_text())
    if not record.get("data"):
        sys.exit(f"{args.run}: not a run on a shower file (bench/fidelity.py --data)")
    content = read_checkpoint(Path(args.run) / "model.ckpt")
    model_file = f"{args.name}.ckpt"
    write_sampler_checkpoint(content, SHELF / model_file)

    # the reference half of the run's held-out part, as bench/fidelity.py split it
    sample_file = f"{args.sample_name}.h5"
    if not args.keep_sample:
        showers = read_showers(record["data"])
        order = np.random.default_rng(record["seed"]).permutation(len(showers))
        sample = showers[np.sort(order[: min(args.n_sample, record["n_eval"])])]
        write_showers(SHELF / sample_file, sample, dtype=np.float16, compression="gzip")

    commit = _commit()
    ranges = content.ranges
    model, floor = result["model"], result["floor"]
    entry = {
        "name": args.name,
        "file": model_file,
        "family": content.family,
        "description": args.description or f"{content.config.model.dit.size} DiT ({content.family}) with "
                       f"the layer-energy stage, {result['sampler']} {result['sampler_steps']} steps",
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
    index = _with_model(entry)
    if args.keep_sample:
        _write_index(index, [SHELF / model_file])
        return
    index["samples"] = [s for s in index["samples"] if s["name"] != args.sample_name] + [{
        "name": args.sample_name, "file": sample_file,
        "description": f"{len(sample)} held-out Geant4 11.4 electron showers, 1-100 GeV, Par04 SiW "
                       "(dataset-2 readout), float16",
    }]
    _write_index(index, [SHELF / model_file, SHELF / sample_file])


def ship_pretraining(args: argparse.Namespace) -> None:
    """Ship a multi-detector pre-training run with the adaptation figures measured from it."""
    content = read_checkpoint(Path(args.pretraining) / "model.ckpt")
    if content.ranges.detectors is None or len(content.ranges.detectors) < 2:
        sys.exit(f"{args.pretraining}: not a multi-detector run "
                 f"(trained detectors: {content.ranges.detectors})")
    files = []
    for name in args.data:
        with h5py.File(name, "r") as f:
            ids = sorted({int(d) for d in np.unique(f["detector"][:])}) if "detector" in f else []
            files.append((Path(name).stem.removeprefix("sim-"), ids, len(f["incident_energies"])))
    described = ", ".join(f"{stem} (detector {','.join(map(str, ids))}, {n} showers)"
                          for stem, ids, n in files)
    adaptation = json.loads(Path(args.adaptation).read_text())
    rows = [row for row in adaptation["rows"] if row["n_showers"] is not None]
    best: dict[str, float] = {}  # the best low-level AUC of each method and number of target showers
    for row in rows:
        key = f"auc_low_{row['method']}_{row['n_showers']}"
        best[key] = round(min(row["auc_low"], best.get(key, 1.0)), 3)
    floor = next(row for row in adaptation["rows"] if row["method"] == "floor")
    model_file = f"{args.name}.ckpt"
    write_sampler_checkpoint(content, SHELF / model_file)
    config, ranges = content.config, content.ranges
    spare = [s for s in range(config.conditions.detector_slots) if s not in ranges.detectors]
    entry = {
        "name": args.name,
        "file": model_file,
        "family": content.family,
        "description": f"{config.model.dit.size} DiT ({content.family}) pre-trained on "
                       f"{len(ranges.detectors)} embedded-simulator detectors on the dataset-2 readout, "
                       f"spare detector slots {spare}: the start of "
                       f"'caloforge adapt --pretrained {args.name}'",
        "training_data": f"GFlash-style embedded simulator, electrons: {described}; {content.step} steps, "
                         f"{config.train.max_minutes:.0f} min on 2 CPU cores",
        "conditions": f"energy {ranges.energy_min / 1e3:.3g}-{ranges.energy_max / 1e3:.4g} GeV (MeV in the "
                      f"API), normal incidence, detectors {list(ranges.detectors)} of "
                      f"{config.conditions.detector_slots} slots",
        "metrics": {
            **best,
            "floor_auc_low": round(floor["auc_low"], 3), "floor_auc_high": round(floor["auc_high"], 3),
            "measured": f"auc_low_METHOD_N: adapted with METHOD (scratch: trained from scratch) to N Geant4 "
                        f"11.4 SiW showers, best of steps {sorted({r['steps'] for r in rows})}; scored on "
                        f"{adaptation['n_eval']} held-out ones with {adaptation['sampler']}; "
                        f"bench/adaptation.py, commit {adaptation['commit']}",
        },
    }
    _write_index(_with_model(entry), [SHELF / model_file])


def ship_distilled(args: argparse.Namespace) -> None:
    """Ship a consistency-distilled student of a shipped model with its few-step figures."""
    content = read_checkpoint(Path(args.distilled) / "model.ckpt")
    if content.config.model.distill.method != "consistency":
        sys.exit(f"{args.distilled}: not a distilled run (model.distill.method "
                 f"'{content.config.model.distill.method}')")
    teacher = {m["name"]: m for m in json.loads((SHELF / "index.json").read_text())["models"]}.get(
        args.teacher_name)
    if teacher is None:
        sys.exit(f"--teacher-name {args.teacher_name}: not a shipped model")
    fewstep = json.loads(Path(args.fewstep).read_text())
    metrics: dict[str, Any] = {}
    for row in fewstep["rows"]:
        if row.get("sampler") == "consistency":
            n = row["steps"]
            metrics |= {f"auc_low_{n}step": round(row["auc_low"], 3),
                        f"auc_high_{n}step": round(row["auc_high"], 3),
                        f"ms_per_shower_cpu_{n}step": round(row["generate_ms_per_shower"], 1)}
        elif row["setting"] == "held-out (floor)":
            metrics |= {"floor_auc_low": round(row["auc_low"], 3),
                        "floor_auc_high": round(row["auc_high"], 3)}
    commit = _commit()
    metrics["measured"] = (f"{fewstep['n_eval']} vs {fewstep['n_eval']} held-out Geant4 showers, "
                           f"bench/fewstep_fidelity.py --data, {fewstep['torch_threads']} CPU thread(s); "
                           f"shipped at commit {commit}")
    if args.default_steps is not None:
        sample = dataclasses.replace(content.config.model.sample, n_steps=args.default_steps)
        content.config.model.sample = sample
    model_file = f"{args.name}.ckpt"
    write_sampler_checkpoint(content, SHELF / model_file)
    entry = {
        "name": args.name,
        "file": model_file,
        "family": content.family,
        "description": f"{args.teacher_name} consistency-distilled: 1 to 4 denoiser calls a shower "
                       f"(--steps N, sampler consistency; {content.config.model.sample.n_steps} by default)",
        "training_data": f"{teacher['training_data']}; then {content.step} distillation steps from "
                         f"{args.teacher_name} on the same showers",
        "conditions": teacher["conditions"],
        "metrics": metrics,
    }
    _write_index(_with_model(entry), [SHELF / model_file])


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()


def _with_model(entry: dict[str, Any]) -> dict[str, Any]:
    index_path = SHELF / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"models": [], "samples": []}
    index["models"] = [m for m in index["models"] if m["name"] != entry["name"]] + [entry]
    return index


def _write_index(index: dict[str, Any], written: list[Path]) -> None:
    index_path = SHELF / "index.json"
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"wrote {index_path}")


if __name__ == "__main__":
    main()
