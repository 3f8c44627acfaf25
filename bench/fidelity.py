"""Fidelity benchmark: train a model (the DiT by default; any family by --config) on simulator (or file)
showers for a budget, then score the fit.

Dataset-2 geometry (45 x 16 x 9; ``--geometry`` for another preset), electrons log-uniform 1 GeV - 1 TeV
from the embedded GFlash simulator:
a training sample, a held-out reference sample and a second independent sample (the floor: what two
samples of the true distribution score). Prints and writes to JSON the low- and high-level classifier
AUCs, FPD and KPD (x 1e3), the mean separation power, the training time, the same metrics for the floor,
and optionally (``--curve K``) the low-level AUC at K points during training.

    python bench/fidelity.py --budget-minutes 60            # the CPU benchmark
    python bench/fidelity.py --budget-minutes 20 --config configs/ds2-gpu.yaml   # on a GPU
    python bench/fidelity.py --evaluate RUN_DIR --steps 32    # score a finished run again (other sampler)
    python bench/fidelity.py --data ../shared/data/g4-siw/train.h5 --n-eval 10000   # against Geant4 showers
    python bench/fidelity.py --geometry calochallenge-1-photons --config configs/ds1-photons-unet-cpu.yaml
    python bench/fidelity.py --data ... --config STUDENT.yaml --teacher TEACHER_RUN/model.ckpt   # distil
    python bench/fidelity.py --evaluate RUN_DIR --calibrate    # score the model with its cell calibration

With ``--calibrate`` the trained model is calibrated (``caloforge.calibration``: ``--calibration-showers``
generated at energies of the training part, fitted to the training part) into
``RUN_DIR/model-calibrated.ckpt`` and that model is the one scored (the JSON's ``model_path``).

With ``--data`` the showers come from a file instead of the simulator: a seeded permutation holds out
2 x n_eval showers (its halves are the reference and the floor sample, so the floor is two disjoint halves
of the evaluation part scored against each other) and training takes the rest.

A run directory records the training time and the curve's snapshots in ``fidelity_run.json``, so
``--evaluate`` reports the same figures as the run itself, with the same reference and floor samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from caloforge.cli import sampling_options
from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig
from caloforge.evaluate.pipeline import EvaluateConfig, Sample, collect, compute_metrics, low_level_capacity
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.geometry import get_geometry
from caloforge.io import read_showers
from caloforge.progress import progress_bar
from caloforge.runconfig import load_run_config
from caloforge.sampler import ShowerSampler
from caloforge.simulate import simulate
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]


class Snapshots(Callback):
    """Saves a checkpoint at evenly spaced fractions of the training-time budget (for the AUC curve)."""

    def __init__(self, directory: Path, budget_s: float, n_points: int) -> None:
        self.directory, self.n_points = directory, n_points
        self.times = [budget_s * (k + 1) / (n_points + 1) for k in range(n_points)]
        self.saved: list[tuple[float, int, Path]] = []
        self.start = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        elapsed = time.perf_counter() - self.start
        if self.times and elapsed >= self.times[0]:
            self.times.pop(0)
            path = self.directory / f"snapshot-{trainer.global_step}.ckpt"
            trainer.save_checkpoint(path)
            self.saved.append((elapsed, trainer.global_step, path))


def split_file(
    path: str, n_train: int | None, n_eval: int, seed: int
) -> tuple[ShowerSet, ShowerSet, ShowerSet]:
    """A shower file split reproducibly (a permutation seeded by ``seed``): the evaluation part is the first
    2 x n_eval showers of the permutation, its halves the reference and the floor sample; training takes
    ``n_train`` (default: all) of the rest."""
    showers = read_showers(path)
    if len(showers) < 2 * n_eval + 1:
        sys.exit(f"--data {path}: {len(showers)} showers, need more than 2 x --n-eval = {2 * n_eval}")
    order = np.random.default_rng(seed).permutation(len(showers))
    rest = order[2 * n_eval:]
    train_part = rest if n_train is None else rest[:n_train]
    return showers[np.sort(train_part)], showers[order[:n_eval]], showers[order[n_eval : 2 * n_eval]]


def draw_energies(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(math.log(1e3), math.log(1e6), n))


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options of --steps, --sampler and --option (``None``: the model's own)."""
    return sampling_options(args.steps, args.sampler, args.option)


def generate(
    generator: ShowerGenerator, energy: np.ndarray, args: argparse.Namespace, desc: str
) -> ShowerSet:
    parts = []
    with progress_bar(len(energy), desc, unit="shower") as bar:
        for part in generator.sample_batches(
            energy,
            seed=args.seed + 7,
            batch_size=args.gen_batch_size,
            on_batch=bar.update,
            **sampling(args),
        ):
            parts.append(part)
    return ShowerSet.concatenate(parts)


def apply_energy_ratio(
    generator: ShowerGenerator, sampler: ShowerSampler, showers: ShowerSet, args: argparse.Namespace
) -> ShowerSet:
    """Rescale showers generated without the E_tot/E_inc model with ``sampler``'s (fresh uniforms)."""
    ratio = sampler.energy_ratio
    assert ratio is not None
    noise = torch.Generator().manual_seed(args.seed + 11)
    device = generator.device
    energy = torch.from_numpy(showers.energy).float()
    out = np.empty_like(showers.showers)
    for start in range(0, len(showers), args.gen_batch_size):
        part = slice(start, start + args.gen_batch_size)
        e_inc, batch = energy[part].to(device), torch.from_numpy(showers.showers[part]).to(device)
        u = torch.rand(len(e_inc), generator=noise).to(device)
        with torch.no_grad():
            out[part] = ratio.rescale(batch, e_inc, u).cpu().numpy()
    return ShowerSet(out, showers.geometry, showers.energy, source="generated")


def scoring_config(n_eval: int, classifier_epochs: int, seed: int) -> EvaluateConfig:
    """The metrics' settings for ``n_eval`` held-out showers a side, as every fidelity table scores them."""
    return EvaluateConfig(
        classifier=ClassifierConfig(epochs=classifier_epochs), seed=seed, plots=False,
        fpd_min_samples=min(10_000, n_eval // 2), fpd_max_samples=n_eval, kpd_batch_size=min(10_000, n_eval),
    )


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a ``compute_metrics`` result."""
    histograms = [v for v in metrics["separation_power"]["histograms"].values() if v is not None]
    classifier = metrics["classifier"]
    return {
        "auc_low": classifier.get("low", {}).get("auc"),
        "auc_high": classifier.get("high", {}).get("auc"),
        "fpd_x1e3": metrics["fpd_x1e3"]["value"],
        "fpd_error_x1e3": metrics["fpd_x1e3"]["error"],
        "kpd_x1e3": metrics["kpd_x1e3"]["value"],
        "kpd_error_x1e3": metrics["kpd_x1e3"]["error"],
        "mean_separation_power": float(np.mean(histograms)) if histograms else None,
        "separation_power_summary": {k: v["mean"] for k, v in metrics["separation_power"]["summary"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="training wall-clock budget")
    parser.add_argument(
        "--config",
        default=None,
        help="run config YAML (default configs/ds2-cpu.yaml, or ds2-gpu.yaml with CUDA)",
    )
    parser.add_argument("--n-train", type=int, default=None,
                        help="training showers (default: 40000 simulated, or all of --data not held out)")
    parser.add_argument("--geometry", default="calochallenge-2",
                        help="preset the simulator fills without --data (e.g. calochallenge-1-photons)")
    parser.add_argument("--data", default=None, help="shower file (e.g. Geant4's) to train on and score "
                        "against instead of the embedded simulator; split reproducibly by --seed")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop training after this many steps too (default: the budget alone decides)")
    parser.add_argument("--n-eval", type=int, default=20_000, help="generated = reference = floor showers")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the config's)")
    parser.add_argument("--sampler", default=None, help="sampler (default: the config's)")
    parser.add_argument("--option", action="append", default=[],
                        help="sampling option KEY=VALUE, read as 'caloforge generate --option' reads it "
                        "(e.g. fill_layers=true)")
    parser.add_argument("--gen-batch-size", type=int, default=500)
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument(
        "--curve", type=int, default=0, help="low-level AUC at this many points during training"
    )
    parser.add_argument("--curve-n", type=int, default=4000, help="showers per curve point")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--run-dir", default=None, help="training run directory (default: a new one under bench/results/)"
    )
    parser.add_argument(
        "--evaluate", default=None, help="run directory of a finished benchmark: score it, do not train"
    )
    parser.add_argument("--teacher", default=None,
                        help="teacher checkpoint for a distilling config (e.g. the flow student)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the cell calibration on the training part and score the calibrated model")
    parser.add_argument("--calibration-showers", type=int, default=5000, help="showers generated for it")
    parser.add_argument("--match-hit-count", action="store_true",
                        help="with --calibrate: cut the model's faintest hits down to the data's count")
    parser.add_argument("--free-layer-energies", action="store_true",
                        help="with --calibrate: the map sets layer energies too (caloforge calibrate "
                        "--free-layer-energies; default: each layer keeps the model's energy)")
    parser.add_argument("--map-layer-energies", action="store_true",
                        help="with --calibrate: also map each layer's energy to the data's quantiles "
                        "(caloforge calibrate --map-layer-energies)")
    parser.add_argument("--candidate-threshold", type=float, default=1.0,
                        help="with --match-hit-count: the model's cells down to this fraction of the readout "
                        "threshold are candidate hits (caloforge calibrate --candidate-threshold)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fidelity.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recorded: dict[str, Any] = {}
    if args.evaluate:
        record_path = Path(args.evaluate) / "fidelity_run.json"
        if not (record_path.exists() and (Path(args.evaluate) / "model.ckpt").exists()):
            sys.exit(f"--evaluate {args.evaluate}: needs model.ckpt and fidelity_run.json of a fidelity run")
        recorded = json.loads(record_path.read_text())
        # the run's settings, so the reference and floor samples are the ones it was scored against
        args.config, args.budget_minutes = recorded["config"], recorded["budget_minutes"]
        args.n_train, args.seed = recorded["n_train"], recorded["seed"]
        args.data = recorded.get("data")
        args.n_eval = recorded.get("n_eval", args.n_eval)
        args.geometry = recorded.get("geometry", "calochallenge-2")

    cuda = torch.cuda.is_available()
    config_path = args.config or str(ROOT / "configs" / ("ds2-gpu.yaml" if cuda else "ds2-cpu.yaml"))
    config = load_run_config(config_path)
    config.train.max_minutes = args.budget_minutes
    config.train.max_steps = args.max_steps or max(config.train.max_steps, 10_000_000)  # the budget decides
    config.train.seed = args.seed
    geometry = get_geometry(args.geometry)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.evaluate or args.run_dir or ROOT / "bench" / "results" / f"fidelity-run-{stamp}")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    if args.data:
        train_set, reference, floor = split_file(args.data, args.n_train, args.n_eval, args.seed)
        geometry = reference.geometry
        args.n_train = len(train_set)
        if args.evaluate and not args.calibrate:
            train_set = None
        source = f"read {args.data}: {args.n_train} training"
    else:
        args.n_train = args.n_train or 40_000
        train_set = (
            None
            if args.evaluate
            else simulate(geometry, draw_energies(args.n_train, args.seed + 1), seed=args.seed + 1)
        )
        reference = simulate(geometry, draw_energies(args.n_eval, args.seed + 2), seed=args.seed + 2)
        floor = simulate(geometry, draw_energies(args.n_eval, args.seed + 3), seed=args.seed + 3)
        source = f"simulated {args.n_train}"
    timings["simulate_s"] = time.perf_counter() - t0
    print(f"{source} + 2 x {args.n_eval} showers in {timings['simulate_s']:.0f} s", file=sys.stderr)

    record = run_dir / "fidelity_run.json"  # what --evaluate needs to score the run again
    if not args.evaluate:
        run_dir.mkdir(parents=True, exist_ok=True)
        snapshots = Snapshots(run_dir, 60 * args.budget_minutes, args.curve)
        t0 = time.perf_counter()
        model_path = train(train_set, run_dir, config, callbacks=[snapshots], teacher=args.teacher)
        timings["train_s"] = time.perf_counter() - t0
        saved = [(e, s, str(p)) for e, s, p in snapshots.saved]
        settings = {"config": config_path, "budget_minutes": args.budget_minutes, "n_train": args.n_train,
                    "seed": args.seed, "train_s": timings["train_s"], "snapshots": saved,
                    "data": args.data, "n_eval": args.n_eval, "geometry": geometry.name,
                    "teacher": args.teacher}
        record.write_text(json.dumps(settings, indent=2))
    else:
        model_path = run_dir / "model.ckpt"
        timings["train_s"] = recorded["train_s"]
        saved = recorded["snapshots"][: args.curve]
    device = "cuda" if cuda else "cpu"
    calibration = None
    if args.calibrate:
        if train_set is None:
            sys.exit("--calibrate: needs --data (the calibration is fitted to the training part)")
        from caloforge.calibration import CalibrationConfig
        from caloforge.generate import calibrate_checkpoint

        t0 = time.perf_counter()
        calibrated = run_dir / "model-calibrated.ckpt"
        with progress_bar(args.calibration_showers, "calibration showers", unit="shower") as bar:
            fitted = calibrate_checkpoint(
                model_path, train_set, calibrated,
                CalibrationConfig(n_showers=args.calibration_showers, match_hit_count=args.match_hit_count,
                                  candidate_threshold=args.candidate_threshold,
                                  preserve_layer_energies=not args.free_layer_energies,
                                  map_layer_energies=args.map_layer_energies),
                seed=args.seed + 13, batch_size=args.gen_batch_size, progress=bar.update,
                **sampling(args))
        calibration = fitted.info
        timings["calibrate_s"] = time.perf_counter() - t0
        model_path = calibrated
    del train_set
    generator = load_generator(model_path, device)
    steps_trained = generator.content.step

    eval_config = scoring_config(args.n_eval, args.classifier_epochs, args.seed)
    capacity = low_level_capacity(geometry.n_voxels, eval_config)

    def sample_of(showers: ShowerSet, name: str) -> Sample:
        return collect([showers], name, eval_config, capacity)

    ref_sample = sample_of(reference, "reference")
    # With the E_tot/E_inc model alone, generate without it and then apply it, so one sampling run gives
    # both the model's numbers and the ablation (the same arithmetic as ShowerGenerator.sample, with the
    # uniforms drawn here). A layer-energy stage conditions the DiT, so it has no such ablation: the
    # edm-dit sampler then has no energy_ratio. The sampler toggled is the one generate() samples with
    # (the run's default, or the one built for --steps/--sampler). Its noise spec keeps ``u``, which is
    # drawn but unused while energy_ratio is None, so the raw showers are the model's from the same noise.
    sampler = generator.sampler_for(**sampling(args))
    ratio = getattr(sampler, "energy_ratio", None)
    if ratio is not None:
        sampler.energy_ratio = None
    t0 = time.perf_counter()
    generated = generate(generator, reference.energy, args, "generating")
    timings["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ablation = None
    if ratio is not None:
        ablation = summarise(compute_metrics(sample_of(generated, "raw"), ref_sample, eval_config))
        sampler.energy_ratio = ratio
        generated = apply_energy_ratio(generator, sampler, generated, args)
    model_metrics = compute_metrics(
        sample_of(generated, "generated"), ref_sample, eval_config, show_progress=True
    )
    floor_metrics = compute_metrics(sample_of(floor, "floor"), ref_sample, eval_config, show_progress=True)
    reconstruction = None
    if generator.family.name == "vq-gpt":  # which stage limits fidelity: the autoencoder or the prior
        from caloforge.families.vq_gpt.diagnostics import reconstruct_showers

        rebuilt = reconstruct_showers(generator, floor)
        reconstruction = summarise(compute_metrics(sample_of(rebuilt, "reconstructed"), ref_sample,
                                                   eval_config))
    timings["evaluate_s"] = time.perf_counter() - t0

    curve = []
    if saved and args.curve:
        curve_config = EvaluateConfig(
            classifiers=("low",),
            classifier=eval_config.classifier,
            seed=args.seed,
            plots=False,
            fpd_min_samples=args.curve_n // 2,
            fpd_max_samples=args.curve_n,
            fpd_batches=5,
            fpd_points=3,
            kpd_batch_size=args.curve_n,
            kpd_batches=3,
        )
        small_ref = collect([reference[: args.curve_n]], "reference", curve_config, capacity)
        points = [(e, s, Path(p)) for e, s, p in saved] + [
            (timings["train_s"], steps_trained, model_path)
        ]
        for elapsed, step, path in points:
            shot = generate(
                load_generator(path, device),
                reference.energy[: args.curve_n],
                args,
                f"curve step {step}",
            )
            metrics = compute_metrics(
                collect([shot], "generated", curve_config, capacity), small_ref, curve_config
            )
            curve.append(
                {
                    "train_minutes": elapsed / 60,
                    "step": step,
                    "auc_low": metrics["classifier"]["low"]["auc"],
                    "n_showers": args.curve_n,
                }
            )
            print(
                f"curve: {elapsed / 60:.1f} min, step {step}: low-level AUC {curve[-1]['auc_low']:.3f}",
                file=sys.stderr,
            )

    gen_rate = args.n_eval / timings["generate_s"]
    result = {
        "benchmark": "fidelity",
        "geometry": geometry.name,
        "data": args.data or "embedded GFlash simulator",
        "max_steps": args.max_steps,
        "device": "cuda" if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "config": config_path,
        "teacher": args.teacher or recorded.get("teacher"),
        "run_dir": str(run_dir),
        "model_path": str(model_path),
        "calibration": calibration,
        "budget_minutes": args.budget_minutes,
        "train_minutes": timings["train_s"] / 60,
        "steps_trained": steps_trained,
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "seed": args.seed,
        "classifier_epochs": args.classifier_epochs,
        "family": generator.family.name,
        "sampler_options": dict(sampler.options),
        "sampler": sampler.options.get("sampler"),
        "sampler_steps": sampler.options.get("n_steps"),
        "generation_showers_per_s": gen_rate,
        "model": summarise(model_metrics),
        "model_without_energy_stage": ablation,
        "reconstruction": reconstruction,
        "floor": summarise(floor_metrics),
        "curve": curve,
        "timings_s": timings,
        "host_cpus": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)

    m, f = result["model"], result["floor"]
    print(
        f"fidelity ({result['data']}, {args.budget_minutes:g}-minute budget, {steps_trained} steps, "
        f"{result['device']}):"
    )
    print(f"{'':28s}{'model':>10s}{'floor':>10s}")
    for key in ("auc_low", "auc_high", "fpd_x1e3", "kpd_x1e3", "mean_separation_power"):
        print(f"{key:28s}{m[key]:10.4f}{f[key]:10.4f}")
    print(
        f"training {timings['train_s'] / 60:.1f} min; generation {gen_rate:.1f} showers/s "
        f"({', '.join(f'{k} {v}' for k, v in result['sampler_options'].items())})"
    )
    if reconstruction is not None:
        numbers = ", ".join(f"{k} {reconstruction[k]:.4f}" for k in ("auc_low", "auc_high", "fpd_x1e3"))
        print(f"reconstruction only (encoder -> codes -> decoder, no prior): {numbers}")
    if ablation is not None:
        numbers = ", ".join(f"{k} {ablation[k]:.4f}" for k in ("auc_low", "auc_high", "fpd_x1e3", "kpd_x1e3"))
        print(f"without the energy stage: {numbers}")
    for point in curve:
        print(f"  AUC(low) at {point['train_minutes']:.1f} min: {point['auc_low']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
