"""Generation speed: milliseconds per shower, PyTorch vs onnxruntime, beside the embedded simulator.

The CaloChallenge reports time per shower at fixed batch sizes (arXiv 2410.21611); this does the same
on this machine for batch sizes 1, 100 and 10000, for each sampler setting (e.g. the run's Heun steps and
the few-step DPM-Solver++(2M)), through PyTorch (``ShowerGenerator.sample_batches``) and through the
exported ``sampler`` graph in onnxruntime (``OnnxGenerator.sample_batches``), both on the CPU with the
same number of threads. Without ``--checkpoint`` the model is the dataset-2 CPU configuration
(``configs/ds2-cpu.yaml``) with untrained weights: speed does not depend on the weights. A short profile
splits one denoiser call into attention, MLP, adaLN modulation, embeddings and the rest, so the
bottleneck is named by measurement.

    python bench/generate_speed.py                      # all batch sizes, heun:20 and dpmpp_2m:6
    python bench/generate_speed.py --checkpoint run/model.ckpt --samplers dpmpp_2m:4,dpmpp_2m:8

Prints a table and writes JSON (default ``bench/results/generate_speed.json``) with the machine
description (CPU model, cores, load average, library versions, threads).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from caloforge.allocator import heap_for_large_tensors
from caloforge.checkpoint import CheckpointContent
from caloforge.context import RunContext
from caloforge.export import export_par04, export_sampler
from caloforge.families import get_family
from caloforge.generate import ShowerGenerator, load_generator
from caloforge.geometry import get_geometry
from caloforge.onnx_runtime import load_onnx_generator
from caloforge.runconfig import load_run_config
from caloforge.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "numpy": np.__version__, "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def untrained_generator(config_path: str, geometry_name: str, seed: int) -> ShowerGenerator:
    """A generator of the configured architecture, preprocessing fitted on a few simulated showers."""
    config = load_run_config(config_path)
    geometry = get_geometry(geometry_name)
    rng = np.random.default_rng(seed)
    fit_set = simulate(geometry, np.exp(rng.uniform(math.log(1e3), math.log(1e6), 500)), seed=seed)
    context = RunContext.fit(fit_set, config.preprocess, config.conditions.detector_slots)
    family = get_family(config.family)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sampler = family.sampler(config.model, context).eval().requires_grad_(False)
    # sampler_for(...) builds the other sampler settings from these weights, as from a checkpoint's
    content = CheckpointContent(config, context, sampler.state_dict(), step=0)
    return ShowerGenerator(content, family, sampler)


def time_generation(
    batches: Callable[[np.ndarray, int], Iterator[Any]], energy: np.ndarray, batch_size: int
) -> float:
    """Seconds to generate one shower per energy in batches of ``batch_size`` (after a warm-up call)."""
    for _ in batches(energy[: min(batch_size, 2)], batch_size):  # warm-up: allocations, thread pools
        pass
    start = time.perf_counter()
    for _ in batches(energy, batch_size):
        pass
    return time.perf_counter() - start


def profile_denoiser(generator: ShowerGenerator, batch_size: int, repeats: int) -> dict[str, float]:
    """Share of one denoiser call (batch ``batch_size``) spent per part of the DiT, from forward hooks."""
    sampler = generator.sampler
    backbone = sampler.denoiser.backbone
    spent: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    parts: list[tuple[str, torch.nn.Module]] = []
    for block in backbone.blocks:
        parts += [("attention", block.attn), ("mlp", block.mlp), ("adaln_modulation", block.ada)]
    parts += [("embeddings", backbone.x_embed), ("embeddings", backbone.noise_embed),
              ("embeddings", backbone.cond_embed), ("final_layer", backbone.final)]
    handles = []
    for name, module in parts:
        def pre(module: torch.nn.Module, args: Any) -> None:
            starts[id(module)] = time.perf_counter()

        def post(module: torch.nn.Module, args: Any, output: Any, name: str = name) -> None:
            spent[name] += time.perf_counter() - starts[id(module)]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    n_voxels = generator.geometry.n_voxels
    x = torch.randn(batch_size, n_voxels, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((batch_size,), 1.0)
    layer_dim = 0 if sampler.layer_energies is None else sampler.layer_energies.dim
    cond = torch.zeros(batch_size, generator.content.spec.dim + layer_dim)  # conditions, then layer vector
    with torch.no_grad():
        sampler.denoiser(x, sigma, cond)
        spent.clear()
        start = time.perf_counter()
        for _ in range(repeats):
            sampler.denoiser(x, sigma, cond)
        total = time.perf_counter() - start
    for handle in handles:
        handle.remove()
    shares = {name: value / total for name, value in spent.items()}
    shares["other (patchify, layer norms, residuals, preconditioning)"] = 1 - sum(shares.values())
    return {"batch_size": batch_size, "ms_per_call": 1e3 * total / repeats, "ms_per_shower_call":
            1e3 * total / repeats / batch_size, **{f"share_{k}": v for k, v in shares.items()}}


def parse_samplers(text: str) -> list[tuple[str, int]]:
    pairs = []
    for item in text.split(","):
        name, steps = item.split(":")
        pairs.append((name.strip(), int(steps)))
    return pairs


def denoiser_calls(sampler: str, steps: int) -> int:
    """Denoiser evaluations per shower: Heun's last step is Euler (2n - 1); the others 1 per step."""
    return 2 * steps - 1 if sampler == "heun" else steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=None, help="model.ckpt (default: untrained --config model)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "ds2-cpu.yaml"))
    parser.add_argument("--geometry", default="calochallenge-2")
    parser.add_argument("--batch-sizes", default="1,100,10000")
    parser.add_argument("--samplers", default="heun:20,dpmpp_2m:6", help="name:steps,...")
    parser.add_argument("--backends", default="pytorch,onnxruntime,par04",
                        help="par04: the Geant4 Par04 graph, timed at batch 1 only (what Geant4 passes)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime")
    parser.add_argument("--min-showers", type=int, default=20, help="showers timed at small batch sizes")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="skip a measurement projected (from the batch-100 one) to take longer")
    parser.add_argument("--simulator-n", type=int, default=2000, help="showers for the simulator's timing")
    parser.add_argument("--profile-batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="where the pytorch backend runs (cuda: a copy of the model on the GPU)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "generate_speed.json"))
    args = parser.parse_args()

    heap_for_large_tensors()  # as the ``caloforge`` command generates
    torch.set_num_threads(args.threads)
    info = machine()
    info["threads"] = args.threads
    generator = (load_generator(args.checkpoint) if args.checkpoint
                 else untrained_generator(args.config, args.geometry, args.seed))
    geometry = generator.geometry
    # the exports and the profile trace the CPU model; the pytorch backend times a copy on --device
    on_device = copy.deepcopy(generator).to(args.device) if args.device != "cpu" else generator
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    backends = args.backends.split(",")
    rng = np.random.default_rng(args.seed)
    energy_all = np.exp(rng.uniform(math.log(1e3), math.log(1e6), max([*batch_sizes, args.min_showers])))
    model = {"checkpoint": args.checkpoint, "config": None if args.checkpoint else args.config,
             "geometry": geometry.name, "n_voxels": geometry.n_voxels,
             "parameters": sum(p.numel() for p in generator.sampler.denoiser.parameters()),
             "dit": {k: getattr(generator.content.config.model.dit, k) for k in ("size", "patch_size")}}
    print(f"machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, load "
          f"{info['load_average_1min_at_start']}, {args.threads} thread(s); torch {info['torch']}, "
          f"onnxruntime {info['onnxruntime']}", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler, steps in parse_samplers(args.samplers):
            runners: dict[str, Callable[[np.ndarray, int], Iterator[Any]]] = {}
            export_s = None
            if "pytorch" in backends:
                def run_torch(e: np.ndarray, b: int, s: str = sampler, k: int = steps) -> Iterator[Any]:
                    return on_device.sample_batches(e, n_steps=k, sampler=s, seed=args.seed, batch_size=b)
                runners[f"pytorch-{args.device}"] = run_torch
            if "onnxruntime" in backends:
                t0 = time.perf_counter()
                path = export_sampler(generator, Path(tmp) / f"{sampler}-{steps}.onnx", n_steps=steps,
                                      sampler=sampler)
                export_s = time.perf_counter() - t0
                onnx_gen = load_onnx_generator(path, threads=args.threads, providers=["CPUExecutionProvider"])

                def run_ort(e: np.ndarray, b: int, g: Any = onnx_gen) -> Iterator[Any]:
                    return g.sample_batches(e, seed=args.seed, batch_size=b)
                runners["onnxruntime-cpu"] = run_ort
            if "par04" in backends:
                path = export_par04(generator, Path(tmp) / f"par04-{sampler}-{steps}.onnx", n_steps=steps,
                                    sampler=sampler)
                par04_gen = load_onnx_generator(path, threads=args.threads,
                                                providers=["CPUExecutionProvider"])

                def run_par04(e: np.ndarray, b: int, g: Any = par04_gen) -> Iterator[Any]:
                    return g.sample_batches(e, batch_size=b)
                runners["onnxruntime-par04"] = run_par04
            for backend, run in runners.items():
                per_shower: float | None = None
                for batch in sorted(batch_sizes):
                    if backend == "onnxruntime-par04" and batch != 1:
                        continue
                    n = max(batch, args.min_showers)
                    row = {"sampler": sampler, "steps": steps, "backend": backend, "batch_size": batch,
                           "n_showers": n, "denoiser_calls": denoiser_calls(sampler, steps)}
                    projected = None if per_shower is None else per_shower * n
                    if projected is not None and projected > args.max_seconds:
                        row.update(skipped=f"projected {projected:.0f} s > --max-seconds "
                                           f"{args.max_seconds:g}")
                    else:
                        seconds = time_generation(run, energy_all[:n], batch)
                        per_shower = seconds / n
                        row.update(seconds=seconds, ms_per_shower=1e3 * seconds / n)
                    if backend == "onnxruntime-cpu":
                        row["export_seconds"] = export_s
                    rows.append(row)
                    text = (f"{row['ms_per_shower']:9.2f} ms/shower" if "ms_per_shower" in row
                            else row["skipped"])
                    print(f"{sampler}:{steps:<3d} {backend:16s} batch {batch:6d}: {text}", file=sys.stderr)

    t0 = time.perf_counter()
    simulate(geometry, energy_all[: args.simulator_n] if args.simulator_n <= energy_all.size
             else np.exp(rng.uniform(math.log(1e3), math.log(1e6), args.simulator_n)), seed=args.seed)
    simulator = {"n_showers": args.simulator_n,
                 "ms_per_shower": 1e3 * (time.perf_counter() - t0) / args.simulator_n,
                 "energy": "log-uniform 1 GeV - 1 TeV"}
    profile = profile_denoiser(generator, args.profile_batch, repeats=5)

    result = {"benchmark": "generate_speed", "machine": info, "model": model, "rows": rows,
              "simulator": simulator, "profile": profile,
              "gpu": "not measured: no GPU on this machine" if not torch.cuda.is_available() else "see rows"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, out)

    print(f"generation speed, {geometry.name} ({geometry.n_voxels} voxels), DiT {model['dit']['size']} "
          f"patch {tuple(model['dit']['patch_size'])}, {model['parameters']} parameters, "
          f"{args.threads} CPU thread(s) of {info['cpu']}")
    header = "".join(f"{'B=' + str(b):>12s}" for b in batch_sizes)
    print(f"{'sampler':14s}{'calls':>6s}{'backend':>19s}{header}   (ms per shower)")
    keys = sorted({(r["sampler"], r["steps"], r["backend"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for sampler, steps, backend in keys:
        cells = []
        for b in batch_sizes:
            match = [r for r in rows if (r["sampler"], r["steps"], r["backend"], r["batch_size"])
                     == (sampler, steps, backend, b)]
            cells.append(f"{match[0]['ms_per_shower']:12.2f}" if match and "ms_per_shower" in match[0]
                         else f"{'skipped' if match else '-':>12s}")
        label = f"{sampler}:{steps}"
        print(f"{label:14s}{denoiser_calls(sampler, steps):6d}{backend:>19s}" + "".join(cells))
    print(f"embedded GFlash simulator: {simulator['ms_per_shower']:.3f} ms/shower "
          f"({args.simulator_n} showers)")
    shares = {k.removeprefix("share_"): v for k, v in profile.items() if k.startswith("share_")}
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    print(f"one denoiser call at batch {profile['batch_size']}: {profile['ms_per_shower_call']:.3f} "
          "ms/shower; " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in ranked))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
