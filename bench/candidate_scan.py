"""How far below the readout threshold the calibration should look for hits: a scan of
``caloforge calibrate --match-hit-count --candidate-threshold C`` over C, for one model, on held-out showers.

A calibrated model's sampler hands over its cells down to C x the readout threshold, and the calibration's
hit-count matching picks the hits among them (``caloforge.calibration``, module doc). Each C needs its own
calibration fit and its own generated showers, but the model's networks do not depend on C: only the last
step (threshold and layer rescale, ``EdmDitSampler.decode``) does. So the networks run once
(``EdmDitSampler.solve``) for the calibration showers (incident energies drawn from the training part, as
``caloforge calibrate`` draws them) and once for the evaluation showers, and every C reuses their outputs.
For each C the script prints the low- and high-level classifier AUCs against the held-out showers, the
high-level AUC of each feature group (``diagnose_high_level.py``) and the hits per shower.

    python bench/candidate_scan.py --checkpoint bench/results/fidelity-g4-run/model.ckpt \
        --data ../shared/data/g4-siw/train.h5 --option fill_layers=true --fractions 1,0.2,0.1,0.06

The checkpoint is an uncalibrated edm-dit or edm-unet model (e.g. a ``bench/fidelity.py`` run's
``model.ckpt``); the held-out showers are those of ``bench/fidelity.py --data`` (``--split-n-eval``,
``--seed``). Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diagnose_high_level import group_aucs
from fidelity import split_file

from caloforge.calibration import CalibrationConfig, fit_cell_calibration
from caloforge.cli import sampling_options
from caloforge.data import ShowerSet
from caloforge.evaluate.classifier import ClassifierConfig, classifier_test, low_level_inputs
from caloforge.evaluate.features import compute_features, high_level_vector
from caloforge.families.edm_dit.sampler import EdmDitSampler
from caloforge.generate import load_generator
from caloforge.io import atomic_output

ROOT = Path(__file__).resolve().parents[1]
Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[torch.Tensor, ...]]


def solve_all(
    sampler: EdmDitSampler, energy: np.ndarray, seed: int, batch_size: int, what: str
) -> list[Batch]:
    """The networks' outputs (z, y), with the energies and noise, batch by batch."""
    generator = torch.Generator().manual_seed(seed)
    batches: list[Batch] = []
    start = time.perf_counter()
    for i in range(0, len(energy), batch_size):
        e = torch.from_numpy(energy[i : i + batch_size]).float()
        n = len(e)
        noise = tuple(spec.draw(n, generator) for spec in sampler.noise)
        # theta, phi, detector: the CaloChallenge defaults (normal incidence, one detector)
        angles = torch.full((n,), np.pi / 2), torch.zeros(n), torch.zeros(n, dtype=torch.int64)
        with torch.no_grad():
            z, y = sampler.solve(e, *angles, *noise)
        batches.append((z, y, e, noise))
        print(f"  {what}: {i + n}/{len(energy)} showers, {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return batches


def decode_all(sampler: EdmDitSampler, batches: list[Batch]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([sampler.decode(z, y, e, *noise) for z, y, e, noise in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="uncalibrated model.ckpt of the readout of --data")
    parser.add_argument("--data", required=True,
                        help="shower file: its training part for the fits, its held-out part the reference")
    parser.add_argument("--fractions", default="1,0.2,0.1,0.06", help="values of C, comma-separated")
    parser.add_argument("--n-eval", type=int, default=3000, help="generated = reference showers")
    parser.add_argument("--n-fit", type=int, default=5000, help="calibration showers")
    parser.add_argument("--split-n-eval", type=int, default=10_000, help="bench/fidelity.py's --n-eval")
    parser.add_argument("--seed", type=int, default=0, help="bench/fidelity.py's --seed")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--option", action="append", default=[],
                        help="sampling option KEY=VALUE, read as 'caloforge generate --option' reads it")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "candidate_scan.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fractions = sorted((float(f) for f in args.fractions.split(",")), reverse=True)  # thresholds only go down
    if not all(0 < f <= 1 for f in fractions):
        sys.exit(f"--fractions {args.fractions}: each must be in (0, 1]")

    train, held_out, _ = split_file(args.data, None, args.split_n_eval, args.seed)
    reference = held_out[: args.n_eval]
    generator = load_generator(args.checkpoint)
    if generator.content.calibration is not None:
        sys.exit(f"--checkpoint {args.checkpoint}: is calibrated; give the model it was calibrated from")
    options = {k: v for k, v in sampling_options(None, None, args.option).items() if v is not None}
    sampler = generator.sampler_for(**options)
    if not isinstance(sampler, EdmDitSampler):
        sys.exit(f"--checkpoint {args.checkpoint}: family {generator.family.name}; the scan needs edm-dit or "
                 "edm-unet (their sampler hands over cells below the threshold)")
    threshold = generator.content.preprocessor.threshold_mev
    fit_energy = np.random.default_rng(args.seed + 13).choice(np.asarray(train.energy, dtype=np.float64),
                                                              args.n_fit)
    fit = solve_all(sampler, fit_energy, args.seed + 13, args.batch_size, "calibration showers")
    evaluation = solve_all(sampler, np.asarray(reference.energy, dtype=np.float64), args.seed + 7,
                           args.batch_size, "evaluation showers")

    ref_high = high_level_vector(compute_features(reference))
    ref_low = low_level_inputs(np.asarray(reference.showers, dtype=np.float32),
                               np.asarray(reference.energy, dtype=np.float64), threshold)
    ref_hits = float((np.asarray(reference.showers) >= threshold).sum(axis=1).mean())
    rows = []
    for fraction in fractions:
        if fraction < 1:
            sampler.lower_threshold(fraction * threshold)
        fit_showers = ShowerSet(decode_all(sampler, fit).numpy(), train.geometry, fit_energy)
        calibration = fit_cell_calibration(fit_showers, train, threshold, CalibrationConfig(
            n_showers=args.n_fit, match_hit_count=True, candidate_threshold=fraction))
        with torch.no_grad():
            energy = torch.cat([e for _, _, e, _ in evaluation])
            showers = calibration(decode_all(sampler, evaluation), energy).numpy()
        generated = ShowerSet(showers, reference.geometry, np.asarray(reference.energy))
        by_group = group_aucs(high_level_vector(compute_features(generated)), ref_high,
                              ClassifierConfig(epochs=15), args.seed)
        row = {
            "candidate_threshold": fraction,
            "auc_low": classifier_test(low_level_inputs(showers, generated.energy, threshold), ref_low,
                                       ClassifierConfig(), seed=args.seed).auc,
            "auc_high": by_group.pop("all"),
            "auc_high_by_group": by_group,
            "hits_per_shower": float((showers > 0).sum(axis=1).mean()),
            "mean_cut": calibration.info["mean_cut"],
        }
        rows.append(row)
        print(f"C {fraction:g}: AUC low {row['auc_low']:.3f}, high {row['auc_high']:.3f}; hits per shower "
              f"{row['hits_per_shower']:.1f} (reference {ref_hits:.1f}); by group: "
              + ", ".join(f"{k} {v:.3f}" for k, v in row["auc_high_by_group"].items()))

    result = {"benchmark": "candidate_scan", "checkpoint": args.checkpoint, "data": args.data,
              "n_eval": args.n_eval, "n_fit": args.n_fit, "seed": args.seed, "sampling": options,
              "reference_hits_per_shower": ref_hits, "rows": rows}
    out = Path(args.out)
    with atomic_output(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
