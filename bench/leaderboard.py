"""Leaderboard: every registered model family, the GFlash baselines and the Geant4 floor, side by side on
the same data, the same held-out showers and the same classifier settings.

The shower file (e.g. Geant4's) is split as ``bench/fidelity.py --data`` splits it (a seeded permutation:
2 x n_eval held out, whose halves are the reference and the floor sample; training takes the rest). Each
family trains on the training part with the same wall-clock budget (``--reuse NAME=RUN_DIR`` scores a
finished ``bench/fidelity.py --data`` run of that family instead, after checking it used the same split),
generates at the reference showers' energies with its run's sampler, and is scored against the reference.
GFlash (the embedded simulator; with ``--gflash-params`` also the parameters ``caloforge fit-gflash`` fitted)
simulates at the same energies. Generation is timed in ms per shower at each ``--timing-batches`` size:
PyTorch and onnxruntime on the CPU, and PyTorch on a GPU when there is one, each model in a fresh process
of its own (``time_apart``); GFlash with numpy.

Writes JSON (``--out-json``) and a Markdown page (``--out-md``, default ``docs/leaderboard.md``) with the
command, the commit and the machine of every row.

    python bench/leaderboard.py --data ../shared/data/g4-siw/train.h5 --n-eval 10000 --budget-minutes 60 \\
        --reuse edm-dit=bench/results/fidelity-g4-run --gflash-params bench/results/gflash_g4.yaml

Adding one model to a finished board (``--update``): the rows of ``--out-json`` are kept (the floor and
GFlash rows too, which are recomputed only when absent) and only ``--families`` are scored; each row keeps
the command and commit that made it. ``--scores NAME=FIDELITY_JSON`` takes a family's metrics from the
``bench/fidelity.py --data`` run that trained it (its own generated showers, scored against the same
reference with the same classifier settings: checked) instead of generating again, and
``--timing-batches-for NAME=1,100`` times a slow family at fewer batch sizes (the others show "-"):

    python bench/leaderboard.py --data ../shared/data/g4-siw/train.h5 --n-eval 10000 --update \\
        --families edm-unet --scores edm-unet=bench/results/fidelity_g4_unet_cpu60.json

A family with more than one model on the board (a teacher and its distilled student) gets one row per
``FAMILY:VARIANT`` name, e.g. ``--families flow:teacher,flow:student`` with a ``--scores`` JSON for each
(checked to be of that family); ``--pytorch-only NAME`` skips the onnxruntime timing of a model whose
graph is impractical to export (the flow teacher unrolls thousands of network passes).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fidelity import scoring_config, split_file, summarise

from caloforge.allocator import heap_for_large_tensors
from caloforge.checkpoint import read_checkpoint
from caloforge.config import load_yaml
from caloforge.data import ShowerSet
from caloforge.evaluate.pipeline import collect, compute_metrics, low_level_capacity
from caloforge.families import family_names
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.progress import progress_bar
from caloforge.runconfig import load_run_config
from caloforge.simulate import GFlashConfig, simulate
from caloforge.training import train

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


TIMING_SHOWERS = 100  # every batch size is timed over at least this many of the sample's energies


def ms_per_shower(run: Any, energy: np.ndarray, batch: int, min_seconds: float = 1.0, max_repeats: int = 200,
                  n_showers: int = TIMING_SHOWERS, max_seconds: float = 20.0) -> float:
    """Milliseconds per shower of ``run(energies)`` in batches of ``batch``, over the first
    max(``batch``, ``n_showers``) of ``energy`` (cycled): the batches are called in turn, in passes over
    them, after a warm-up call of up to 100 showers (first-call allocations and graph set-up); each batch
    keeps the best of its calls (one call of a batch of one takes a few ms, where a busy machine's jitter is
    as large: repeated batch-1 calls of one mdma-gan model took 1.7 to 2.3 ms), and the figure is their sum
    over the showers they hold. Passes repeat until ``min_seconds`` have been spent (at most
    ``max_repeats``); a first pass stops early after ``max_seconds``, with the batches called so far (a model
    that takes seconds a shower at batch 1).

    Several energies also at batch 1: a sampler whose cost grows with the shower (the mdma-gan's hits, the
    GFlash simulator's spots) is timed on the sample's mix of energies at every batch size. (Until
    2026-12-05 batch 1 repeated the first energy alone: 43.5 GeV in the Geant4 sample, above the mean
    cost of the mdma-gan's showers; docs/benchmarks.md.)"""
    energies = np.resize(energy, max(batch, n_showers))
    batches = [energies[start : start + batch] for start in range(0, len(energies), batch)]
    run(energies[: min(batch, 100)])
    best = [float("inf")] * len(batches)
    spent, passes = 0.0, 0
    while passes < max(1, max_repeats) and (passes == 0 or spent < min_seconds):
        for index, part in enumerate(batches):
            start = time.perf_counter()
            run(part)
            took = time.perf_counter() - start
            best[index], spent = min(best[index], took), spent + took
            if passes == 0 and spent > max_seconds:
                break
        passes += 1
    timed = [index for index, value in enumerate(best) if value < float("inf")]
    return 1e3 * sum(best[i] for i in timed) / sum(len(batches[i]) for i in timed)


def time_family(model: Path, energy: np.ndarray, batches: list[int], onnx: bool = True) -> dict[str, Any]:
    """ms per shower at each batch size: PyTorch CPU, onnxruntime CPU (the exported sampler, unless not
    ``onnx``), GPU if any."""
    from caloforge.export import export_sampler
    from caloforge.onnx_runtime import load_onnx_generator

    def torch_run(device: str) -> Any:
        on = load_generator(model, device)
        return lambda e: on.sample(e, seed=0, batch_size=len(e))

    timing: dict[str, Any] = {"pytorch_cpu": {}, "onnxruntime_cpu": {}}
    with tempfile.TemporaryDirectory() as tmp:
        exported = None
        if onnx:
            graph = export_sampler(load_generator(model), Path(tmp) / "s.onnx")
            exported = load_onnx_generator(graph, providers=["CPUExecutionProvider"])
        for b in batches:
            timing["pytorch_cpu"][b] = ms_per_shower(torch_run("cpu"), energy, b)
            line = f"  batch {b}: PyTorch CPU {timing['pytorch_cpu'][b]:.2f} ms/shower"
            if exported is not None:
                timing["onnxruntime_cpu"][b] = ms_per_shower(
                    lambda e: exported.sample(e, seed=0, batch_size=len(e)), energy, b)
                line += f", onnxruntime CPU {timing['onnxruntime_cpu'][b]:.2f}"
            print(line, file=sys.stderr)
    if torch.cuda.is_available():
        timing["pytorch_gpu"] = {b: ms_per_shower(torch_run("cuda"), energy, b) for b in batches}
    return timing


def time_apart(model: Path, energy: np.ndarray, batches: list[int], onnx: bool,
               threads: int | None) -> dict[str, Any]:
    """``time_family`` in a fresh process of its own (spawned, with ``threads`` torch threads), so that no
    row's timing depends on what the board's data and the rows before it left in memory: in the board's
    process, which held the 10k reference and floor samples, mdma-gan at batch 10000 took 4.1 ms a shower,
    1.1 in a process of its own."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_time_in_child, str(model), energy, batches, onnx, threads).result()


def _time_in_child(model: str, energy: np.ndarray, batches: list[int], onnx: bool,
                   threads: int | None) -> dict[str, Any]:
    heap_for_large_tensors()  # as the ``caloforge`` command generates
    if threads:
        torch.set_num_threads(threads)
    return time_family(Path(model), energy, batches, onnx)


def generate(generator: ShowerGenerator, energy: np.ndarray, seed: int, name: str) -> ShowerSet:
    parts = []
    with progress_bar(len(energy), f"generating ({name})", unit="shower") as bar:
        for part in generator.sample_batches(energy, seed=seed, batch_size=500, on_batch=bar.update):
            parts.append(part)
    return ShowerSet.concatenate(parts)


def check_same_split(flag: str, record: dict[str, Any], args: argparse.Namespace,
                     extra: dict[str, tuple[Any, Any]] | None = None) -> None:
    """Exit unless a ``bench/fidelity.py --data`` record split the board's file with its seed and held-out
    size (and agrees on ``extra``: name -> (theirs, ours)); ``flag`` names the option in the message."""
    checks = {"data": (Path(record.get("data") or "").resolve(), Path(args.data).resolve()),
              "n_eval": (record.get("n_eval"), args.n_eval),
              # runs before the seed was recorded in the result JSON used the script's default, 0
              "seed": (record.get("seed", 0), args.seed), **(extra or {})}
    for key, (theirs, ours) in checks.items():
        if theirs != ours:
            sys.exit(f"{flag}: its {key} is {theirs}, this board's is {ours}; retrain or rescore it")


def family_of(name: str) -> str:
    """The family of a board row name: ``FAMILY`` or ``FAMILY:VARIANT`` (module doc)."""
    return name.split(":", 1)[0]


def fidelity_scores(name: str, path: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any], Any]:
    """(model, training record, metrics) of family ``name`` from a ``bench/fidelity.py --data`` JSON,
    after checking it split the same file with the same seed and held-out size and used the same
    classifier settings."""
    record = json.loads(Path(path).read_text())
    check_same_split(f"--scores {name}={path}", record, args, {
        "family": (record.get("family"), family_of(name)),
        # runs before the epochs were recorded used the script's default, 15
        "classifier_epochs": (record.get("classifier_epochs", 15), args.classifier_epochs)})
    training = {"train_minutes": record["train_minutes"], "reused": record["run_dir"], "scores_from": path,
                "calibration": record.get("calibration")}
    if record.get("teacher"):
        training["teacher"] = teacher_training(Path(record["teacher"]))
    model = record.get("model_path") or Path(record["run_dir"]) / "model.ckpt"  # older runs: the run's
    return Path(model), training, record["model"]


def teacher_training(checkpoint: Path) -> dict[str, Any]:
    """The training a distilled student's teacher had: its checkpoint's steps and, where the teacher was
    trained by ``bench/fidelity.py --data`` (its run directory holds ``fidelity_run.json``), its minutes,
    so that a student's row shows the whole budget spent on it. A teacher no longer on disk gives its
    path only."""
    teacher: dict[str, Any] = {"path": str(checkpoint)}
    if checkpoint.exists():
        teacher["steps"] = read_checkpoint(checkpoint, weights=False).step
    run = checkpoint.parent / "fidelity_run.json"
    if run.exists():
        teacher["train_minutes"] = json.loads(run.read_text())["train_s"] / 60
    return teacher


def trained_run(
    name: str, args: argparse.Namespace, train_set: ShowerSet | None
) -> tuple[Path, dict[str, Any]]:
    """The model of family ``name``: a reused run (checked to share the split) or one trained here."""
    reuse = dict(item.split("=", 1) for item in args.reuse)
    if name in reuse:
        run_dir = Path(reuse[name])
        record = json.loads((run_dir / "fidelity_run.json").read_text())
        check_same_split(f"--reuse {name}={run_dir}", record, args)
        return run_dir / "model.ckpt", {"train_minutes": record["train_s"] / 60, "reused": str(run_dir)}
    assert train_set is not None
    if name != family_of(name):
        sys.exit(f"--families {name}: a FAMILY:VARIANT row is scored from --scores or --reuse, "
                 "not trained here")
    config_path = ROOT / "configs" / "ds2-cpu.yaml" if name == "edm-dit" else None
    config = load_run_config(config_path, family=name)
    config.train.max_minutes = args.budget_minutes
    config.train.max_steps = max(config.train.max_steps, 10_000_000)
    config.train.seed = args.seed
    run_dir = Path(args.work) / f"run-{name}"
    start = time.perf_counter()
    model = train(train_set, run_dir, config)
    return model, {"train_minutes": (time.perf_counter() - start) / 60, "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="shower file to train on and score against")
    parser.add_argument("--n-eval", type=int, default=10_000, help="reference = floor showers")
    parser.add_argument("--n-train", type=int, default=None, help="training showers (default: the rest)")
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="training budget per family")
    parser.add_argument("--families", default=None, help="comma-separated (default: every registered one)")
    parser.add_argument("--reuse", action="append", default=[],
                        help="NAME=RUN_DIR: score this bench/fidelity.py --data run instead of training")
    parser.add_argument("--gflash-params", default=None, help="params.yaml from caloforge fit-gflash")
    parser.add_argument("--timing-batches", default="1,100,10000", help="batch sizes timed")
    parser.add_argument("--timing-batches-for", action="append", default=[],
                        help="NAME=1,100: batch sizes timed for that family (a slow one)")
    parser.add_argument("--scores", action="append", default=[],
                        help="NAME=FIDELITY_JSON: metrics from that family's bench/fidelity.py --data run")
    parser.add_argument("--pytorch-only", action="append", default=[],
                        help="NAME: time this row in PyTorch only (no ONNX export)")
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of --out-json; score only --families (and rows absent)")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", default=str(ROOT / "bench" / "results" / "leaderboard-runs"))
    parser.add_argument("--out-json", default=str(ROOT / "bench" / "results" / "leaderboard.json"))
    parser.add_argument("--out-md", default=str(ROOT / "docs" / "leaderboard.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.families.split(",") if args.families else family_names()
    batches = [int(b) for b in args.timing_batches.split(",")]

    batches_for = {k: [int(b) for b in v.split(",")]
                   for k, v in (item.split("=", 1) for item in args.timing_batches_for)}
    scores_from = dict(item.split("=", 1) for item in args.scores)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    command = "python " + " ".join(sys.argv)
    made = {"commit": commit, "command": command, "date": time.strftime("%Y-%m-%d"), "machine": machine()}
    kept: list[dict[str, Any]] = []
    if args.update:
        board = json.loads(Path(args.out_json).read_text())
        if (Path(board["data"]).resolve(), board["n_eval"], board["seed"]) != (
                Path(args.data).resolve(), args.n_eval, args.seed):
            sys.exit(f"--update: {args.out_json} was made on {board['data']} (n_eval {board['n_eval']}, seed "
                     f"{board['seed']}); this board's split differs")
        for row in board["rows"]:  # rows from before per-row records carry the board's
            row.setdefault("commit", board["commit"])
            row.setdefault("command", board["command"])
            row.setdefault("date", board["date"])
            row.setdefault("machine", board["machine"])
        kept = [row for row in board["rows"] if row["name"] not in names]

    train_set, reference, floor = split_file(args.data, args.n_train, args.n_eval, args.seed)
    geometry = reference.geometry
    needs_training = [n for n in names if not any(r.startswith(f"{n}=") for r in args.reuse)
                      and n not in scores_from]
    if not needs_training:
        train_set = None
    eval_config = scoring_config(args.n_eval, args.classifier_epochs, args.seed)
    capacity = low_level_capacity(geometry.n_voxels, eval_config)

    @functools.cache
    def ref_sample() -> Any:  # the reference's features, collected once and only if a row is scored here
        return collect([reference], "reference", eval_config, capacity)

    def score(showers: ShowerSet, name: str) -> dict[str, Any]:
        print(f"scoring {name}", file=sys.stderr)
        return summarise(compute_metrics(collect([showers], name, eval_config, capacity), ref_sample(),
                                         eval_config))

    kept_names = {row["name"] for row in kept}
    rows: list[dict[str, Any]] = [row for row in kept if row["kind"] != "family"]
    floor_name = "Geant4 (floor: held-out half vs half)"
    if floor_name not in kept_names:
        rows.insert(0, {"name": floor_name, "kind": "floor", "metrics": score(floor, "floor"), **made})
    gflash_configs = [("GFlash (default parameters)", GFlashConfig())]
    if args.gflash_params:
        fitted = load_yaml(GFlashConfig, args.gflash_params)
        gflash_configs.append((f"GFlash (fitted: {args.gflash_params})", fitted))
    for label, settings in gflash_configs:
        if label in kept_names:
            continue
        showers = simulate(geometry, reference.energy, config=settings, seed=args.seed + 5)
        def run(e: np.ndarray, s: GFlashConfig = settings) -> ShowerSet:
            return simulate(geometry, e, config=s, seed=1)

        timing = {"numpy_cpu": {b: ms_per_shower(run, reference.energy, b) for b in batches}}
        rows.append({"name": label, "kind": "gflash", "metrics": score(showers, label), "timing": timing,
                     "timing_showers": TIMING_SHOWERS,
                     **made})

    rows += [row for row in kept if row["kind"] == "family"]
    for name in names:
        if name in scores_from:
            model, training, metrics = fidelity_scores(name, scores_from[name], args)
            generator = load_generator(model)
        else:
            model, training = trained_run(name, args, train_set)
            generator = load_generator(model)
            metrics = score(generate(generator, reference.energy, args.seed + 7, name), name)
        rows.append({
            "name": name, "kind": "family", "model": str(model), "steps": generator.content.step,
            "sampling": generator.sampler.options, **training, "metrics": metrics,
            "timing_showers": TIMING_SHOWERS,
            "timing": time_apart(model, reference.energy, batches_for.get(name, batches),
                                 name not in args.pytorch_only, args.threads), **made,
        })

    result = {"benchmark": "leaderboard", "data": args.data, "n_eval": args.n_eval, "seed": args.seed,
              "commit": commit, "machine": machine(), "command": command, "date": time.strftime("%Y-%m-%d"),
              "registered": family_names(), "rows": rows}
    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    Path(args.out_md).write_text(markdown(result, batches))
    print(markdown(result, batches))
    print(f"wrote {out} and {args.out_md}")


def commands(result: dict[str, Any]) -> list[str]:
    """The commands that made the rows, with their commit, date and machine (one line each, in row order;
    the machine once at the end when every row had the same)."""
    made: dict[tuple[str, str, str, str], list[str]] = {}
    for row in result["rows"]:
        key = (row.get("command", result["command"]), row.get("commit", result["commit"]),
               row.get("date", result["date"]), row.get("machine", result["machine"]))
        made.setdefault(key, []).append(row["name"])
    machines = {key[3] for key in made}
    lines = []
    for (command, commit, date, where), names in made.items():
        which = "" if len(made) == 1 else f" ({', '.join(names)})"
        on = "" if len(machines) == 1 else f", {where}"
        lines.append(f"Command{which}: `{command}`; commit {commit}, {date}{on}.  ")
    if len(machines) == 1:
        return [*lines, f"Machine: {machines.pop()}."]
    return [*lines, "Timings of rows made on different machines are not comparable with each other."]


def timing_of(row: dict[str, Any], backend: str) -> dict[int, float]:
    """ms/shower by batch size of one row and backend ({} when not timed); JSON keeps the sizes as strings."""
    return {int(b): ms for b, ms in row.get("timing", {}).get(backend, {}).items()}


def markdown(result: dict[str, Any], batches: list[int]) -> str:
    def cell(row: dict[str, Any], backend: str) -> str:
        timing = timing_of(row, backend)
        if not timing:
            return "-"
        return " / ".join(f"{timing[b]:.3g}" if b in timing else "-" for b in batches)

    head = " / ".join(str(b) for b in batches)
    lines = [
        "# Leaderboard: generative models against Geant4",
        "",
        f"Data: `{result['data']}` ({result['n_eval']} held-out showers as the reference, {result['n_eval']} "
        "more as the floor). Every row is scored against the same reference with the same classifier "
        "settings (CaloChallenge low-level: voxels; high-level: layer energies, centres, widths).",
        "",
        *commands(result),
        "",
        f"| model | AUC low | AUC high | FPD x1e3 | KPD x1e3 | mean sep. power | ms/shower CPU, batch {head} "
        f"| ms/shower onnxruntime CPU, batch {head} | training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        m = row["metrics"]
        cpu = cell(row, "numpy_cpu") if row["kind"] == "gflash" else cell(row, "pytorch_cpu")
        training = "-"
        if row["kind"] == "family":
            sampling = ", ".join(f"{k} {v}" for k, v in row.get("sampling", {}).items())
            training = (f"{row['train_minutes']:.0f} min, {row['steps']} steps; "
                        f"sampling: {sampling or 'one pass'}")
            teacher = row.get("teacher")
            if teacher:
                spent = [f"{teacher['train_minutes']:.0f} min"] if "train_minutes" in teacher else []
                spent += [f"{teacher['steps']} steps"] if "steps" in teacher else []
                training += f"; distilled from a teacher ({', '.join(spent) or teacher['path']})"
            if row.get("calibration"):
                flag = " --map-layer-energies" if row["calibration"].get("map_layer_energies") else ""
                training += f"; cell calibration (`caloforge calibrate{flag}`)"
            if row.get("scores_from"):
                training += f"; scored in `{row['scores_from']}`"
        lines.append(
            f"| {row['name']} | {m['auc_low']:.3f} | {m['auc_high']:.3f} | {m['fpd_x1e3']:.1f} | "
            f"{m['kpd_x1e3']:.3f} | {m['mean_separation_power']:.4f} | {cpu} | "
            f"{cell(row, 'onnxruntime_cpu')} | {training} |"
        )
    one_energy = [row["name"] for row in result["rows"] if row.get("timing") and "timing_showers" not in row]
    if one_energy:
        lines += ["", f"Batch 1 timed on one shower, the first reference energy's, repeated (rows timed "
                      f"before commit 8837362): {', '.join(one_energy)}. The other rows time every batch "
                      f"size over at least the first {TIMING_SHOWERS} reference energies (`ms_per_shower`); "
                      "the two agree for models whose cost does not depend on the shower, not for GFlash or "
                      "the mdma-gan."]
    untimed = [row["name"] for row in result["rows"] if row["kind"] == "family"
               and not set(batches) <= set(timing_of(row, "pytorch_cpu"))]
    if untimed:
        lines += ["", f"Not timed at every batch size (`--timing-batches-for`; \"-\" in the table): "
                      f"{', '.join(untimed)}."]
    no_onnx = [row["name"] for row in result["rows"] if row["kind"] == "family"
               and not timing_of(row, "onnxruntime_cpu")]
    if no_onnx:
        lines += ["", f"Timed in PyTorch only (`--pytorch-only`: graph impractical to export): "
                      f"{', '.join(no_onnx)}."]
    shown = {family_of(row["name"]) for row in result["rows"]}
    absent = [name for name in result.get("registered", []) if name not in shown]
    if absent:
        lines += ["", f"Registered families not on this board yet (not trained at this budget): "
                      f"{', '.join(absent)}."]
    if any("pytorch_gpu" in row.get("timing", {}) for row in result["rows"]):
        lines += ["", "GPU (PyTorch), ms/shower at batch " + head + ": " + "; ".join(
            f"{row['name']} {cell(row, 'pytorch_gpu')}" for row in result["rows"]
            if "pytorch_gpu" in row.get("timing", {}))]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
