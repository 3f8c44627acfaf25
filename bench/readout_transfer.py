"""Readout transfer of a readout-free model (mdma-gan): trained on one readout of a detector, how faithful is
it on another readout of the same detector, as it is (``caloforge generate --readout``) and after a short
fine-tune there (``caloforge train --init-from``)?

Both readouts are filled by the embedded simulator with the same physics (``--gflash-params`` to use fitted
parameters), so the source and target scores are against the same showers binned two ways: the difference
is the transfer's cost, not a change of physics. Default: CaloChallenge dataset 2 -> dataset 3 (45 layers,
radius 41.85 mm both; 16 x 9 against 50 x 18 cells per layer), the transfer MDMA's authors reported.

    python bench/readout_transfer.py --config configs/ds2-mdma-gan-cpu.yaml --budget-minutes 30 \
        --finetune-steps 200,500 --finetune-set model.max_hits=6000 --out bench/results/readout_transfer.json
    python bench/readout_transfer.py --source RUN/model.ckpt ...    # a model trained on --from already

Rows: the model on its own readout, zero-shot on the target, and each fine-tune snapshot on the target; each
with low- and high-level classifier AUC and FPD against ``--n-eval`` held-out simulated showers of that
readout, and the mean number of cells above threshold (the zero-shot model keeps the source readout's hit
count, which a finer readout's showers exceed). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from adaptation import Snapshots, run_config, scoring, write_result

from caloforge.config import load_yaml, set_dotted
from caloforge.data import ShowerSet
from caloforge.evaluate.pipeline import EvaluateConfig, collect, compute_metrics
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.geometry import CylindricalGeometry, get_geometry
from caloforge.runconfig import RunConfig, load_run_config, run_config_from_dict
from caloforge.simulate import GFlashConfig, simulate
from caloforge.spectra import parse_spectrum
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]


def simulated(geometry: CylindricalGeometry, energy: np.ndarray, seed: int,
              gflash: GFlashConfig) -> ShowerSet:
    """Simulated showers of ``energy`` (MeV) on ``geometry``."""
    return simulate(geometry, energy, seed=seed, config=gflash)


def score(generator: ShowerGenerator, reference: ShowerSet, scored: tuple[EvaluateConfig, int, Any],
          args: argparse.Namespace) -> dict[str, Any]:
    """Generate at the reference's energies and score against it."""
    config, capacity, collected = scored
    start = time.perf_counter()
    generated = generator.sample(reference.energy, seed=args.seed + 7, batch_size=500)
    seconds = time.perf_counter() - start
    metrics = compute_metrics(collect([generated], "generated", config, capacity), collected, config)
    threshold = generator.content.preprocessor.threshold_mev
    return {
        "auc_low": metrics["classifier"]["low"]["auc"], "auc_high": metrics["classifier"]["high"]["auc"],
        "fpd_x1e3": metrics["fpd_x1e3"]["value"],
        "cells_above_threshold": float((generated.showers >= threshold).sum(axis=1).mean()),
        "reference_cells_above_threshold": float((reference.showers >= threshold).sum(axis=1).mean()),
        "generation_s": seconds,
    }


def finetune_config(source: RunConfig, steps: int, args: argparse.Namespace) -> RunConfig:
    """The source run's config with this benchmark's schedule and ``--finetune-set`` overrides."""
    data = run_config(source, steps, args.seed).to_dict()
    for assignment in args.finetune_set:
        key, _, text = assignment.partition("=")
        set_dotted(data, key, yaml.safe_load(text))
    return run_config_from_dict(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="A readout-free model trained on --from (default: train one).")
    parser.add_argument("--config", default=str(ROOT / "configs" / "ds2-mdma-gan-cpu.yaml"),
                        help="Run config of the source model, when it is trained here.")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="Source training budget.")
    parser.add_argument("--from", dest="source_geometry", default="calochallenge-2")
    parser.add_argument("--to", dest="target_geometry", default="calochallenge-3")
    parser.add_argument("--energy", default="log-uniform:1000,100000", help="Incident energies (MeV).")
    parser.add_argument("--gflash-params", help="GFlash parameters to simulate (caloforge fit-gflash).")
    parser.add_argument("--n-train", type=int, default=40_000, help="Simulated source training showers.")
    parser.add_argument("--n-finetune", type=int, default=10_000, help="Simulated target training showers.")
    parser.add_argument("--n-eval", type=int, default=5_000, help="Held-out showers per readout.")
    parser.add_argument("--finetune-steps", default="200,500", help="Fine-tune steps at which to score.")
    parser.add_argument("--finetune-set", action="append", default=[],
                        help="KEY=VALUE override of the fine-tune config (e.g. model.max_hits=6000).")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "bench" / "results" / "readout-transfer-runs"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "readout_transfer.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    source_geometry, target_geometry = get_geometry(args.source_geometry), get_geometry(args.target_geometry)
    gflash = GFlashConfig() if args.gflash_params is None else load_yaml(GFlashConfig, args.gflash_params)
    spectrum = parse_spectrum(args.energy, "--energy", positive=True)
    rng = np.random.default_rng(args.seed)
    eval_energy = spectrum.sample(args.n_eval, rng)
    steps = sorted(int(s) for s in args.finetune_steps.split(","))
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['stage']:<28} {row['readout']:<18} AUC low {row['auc_low']:.3f} high "
              f"{row['auc_high']:.3f}  FPD {row['fpd_x1e3']:.1f}  cells {row['cells_above_threshold']:.0f} "
              f"(reference {row['reference_cells_above_threshold']:.0f})", flush=True)

    source = args.source
    train_minutes = None
    if source is None:
        config = load_run_config(args.config)
        config.train.max_minutes = args.budget_minutes
        data = simulated(source_geometry, spectrum.sample(args.n_train, rng), args.seed + 1, gflash)
        start = time.perf_counter()
        source = str(train(data, work / "source", config, progress=True))
        train_minutes = (time.perf_counter() - start) / 60
        del data
    on_source = simulated(source_geometry, eval_energy, args.seed + 2, gflash)
    report({"stage": "trained", "readout": source_geometry.name,
            **score(load_generator(source), on_source, scoring(on_source, args), args)})
    del on_source

    on_target = simulated(target_geometry, eval_energy, args.seed + 2, gflash)
    target_scoring = scoring(on_target, args)
    report({"stage": "zero-shot (--readout)", "readout": target_geometry.name,
            **score(load_generator(source, readout=target_geometry), on_target, target_scoring, args)})

    finetune_data = simulated(target_geometry, spectrum.sample(args.n_finetune, rng), args.seed + 3, gflash)
    snapshots = Snapshots(work / "finetune", steps)
    (work / "finetune").mkdir(parents=True, exist_ok=True)
    source_config = load_generator(source).content.config
    train(finetune_data, work / "finetune" / "run", finetune_config(source_config, steps[-1], args),
          init_from=source, callbacks=[snapshots], progress=True)
    for step in steps:
        report({"stage": f"fine-tuned {step} steps", "readout": target_geometry.name,
                **score(load_generator(snapshots.saved[step]), on_target, target_scoring, args)})
    write_result(args.out, {"source": source, "source_train_minutes": train_minutes,
                            "from": source_geometry.name, "to": target_geometry.name,
                            "n_eval": args.n_eval, "n_finetune": args.n_finetune,
                            "gflash_params": args.gflash_params}, rows)


if __name__ == "__main__":
    main()
