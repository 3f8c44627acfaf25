"""Scale benchmarks: training from a file larger than the memory allowed, and DDP throughput on the CPU.

``streaming``: writes a float32 shower file of ``--file-gb`` GB (Geant4 SiW showers from ``--source``, tiled
in shuffled copies) and trains the DiT (configs/ds2-cpu.yaml) on it, streamed, in a process whose address
space is capped at ``--limit-gb`` (``RLIMIT_AS``: the process cannot map more, let alone hold it). Beside it:
the same training on a file that fits, loaded into memory, and the attempt to load the big file under the
cap. Reports peak RSS, the preprocessing fit's time and training showers/s (after ``--warmup`` steps).

``ddp``: the same training on a file that fits, with 1 process (2 threads) and with 2 processes (gloo, 1
thread each, half the batch each, so the same global batch); reports showers/s of each.

    python bench/scale.py streaming --file-gb 6 --limit-gb 3
    python bench/scale.py ddp

Writes bench/results/scale_<mode>.json. Each run is a child process (``child`` mode), as Lightning's DDP
launcher starts further ranks by running the same command again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "g4-siw" / "train.h5"


# ---- data -----------------------------------------------------------------------------------------------
def write_tiled(path: Path, source: Path, gigabytes: float, seed: int = 0) -> int:
    """A float32 CaloChallenge file of about ``gigabytes`` GB: the source's showers in shuffled copies."""
    from caloforge.io import ShowerWriter, read_showers

    if path.exists():
        from caloforge.io import inspect_file

        return inspect_file(path).n_showers
    base = read_showers(source, dtype=np.float32)
    n = int(gigabytes * 1e9 / (4 * base.geometry.n_voxels))
    rng = np.random.default_rng(seed)
    print(f"writing {path.name}: {n} showers ({n * 4 * base.geometry.n_voxels / 1e9:.2f} GB)", flush=True)
    with ShowerWriter(path, base.geometry, dtype=np.float32, expected_n=n) as writer:
        written = 0
        while written < n:
            order = rng.permutation(len(base))[: n - written]
            for start in range(0, len(order), 4096):
                part = base[np.sort(order[start : start + 4096])]
                writer.append(part)
            written += len(order)
    return n


# ---- one training run (a child process) -------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    if args.limit_gb:
        cap = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from caloforge.io.source import ShowerSource
    from caloforge.runconfig import load_run_config
    from caloforge.training import train

    class Clock(Callback):
        def __init__(self) -> None:
            self.fit_start = time.perf_counter()
            self.train_start = self.t0 = self.t1 = 0.0
            self.steps = 0

        def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.train_start = time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, *_: Any) -> None:
            if trainer.global_step == args.warmup:
                self.t0 = time.perf_counter()
            self.t1, self.steps = time.perf_counter(), trainer.global_step

    config = load_run_config(ROOT / "configs" / "ds2-cpu.yaml")
    config.train.max_steps, config.train.max_minutes = args.steps, None
    config.train.checkpoint_every = 10 * args.steps
    config.train.batch_size = args.batch_size // args.devices
    config.train.accelerator = "cpu"
    if args.devices > 1:
        config.train.devices, config.train.strategy = args.devices, "ddp"
    config.data.stream = bool(args.stream)
    clock = Clock()
    started = time.perf_counter()
    result: dict[str, Any] = {"stream": bool(args.stream), "devices": args.devices, "limit_gb": args.limit_gb}
    try:
        source = ShowerSource.open(args.data, config.data.block_rows)
        result["file_gb"] = source.n_bytes / 1e9
        result["n_showers"] = len(source)
        train(source, args.out, config, progress=False, callbacks=[clock])
    except MemoryError as error:
        result["error"] = f"MemoryError: {error}"
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    rss_gb = peak_rss_kib() * 1024 / 1e9
    result.update(peak_rss_gb=round(rss_gb, 3), total_s=round(time.perf_counter() - started, 1))
    if "error" not in result:
        timed = clock.steps - args.warmup
        result.update(
            prepare_s=round(clock.train_start - started, 1),
            timed_steps=timed,
            steps_per_s=round(timed / (clock.t1 - clock.t0), 3),
            showers_per_s=round(timed * args.batch_size / (clock.t1 - clock.t0), 1),
        )
    Path(args.result).write_text(json.dumps(result, indent=2))


def peak_rss_kib() -> int:
    """This process's peak resident memory (VmHWM: its own address space only; getrusage's ru_maxrss
    carries the parent's peak over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(**options: Any) -> dict[str, Any]:
    result = Path(options["out"]).with_suffix(".json")
    shutil.rmtree(options["out"], ignore_errors=True)  # the bench's own scratch run of a previous call
    result.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "child", "--result", str(result)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    if options.get("threads"):
        env["OMP_NUM_THREADS"] = str(options["threads"])
    print("running:", " ".join(command[2:]), flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result.exists():
        tail = done.stderr[-3000:]
        return {"error": f"exit {done.returncode}", "stderr_tail": tail, **options}
    out = json.loads(result.read_text())
    print("  ", json.dumps(out), flush=True)
    return out


# ---- the two benchmarks ------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"commit": commit, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)}


def streaming(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / f"tiled-{args.file_gb:g}gb.h5", work / f"tiled-{args.fit_gb:g}gb.h5"
    write_tiled(big, Path(args.source), args.file_gb)
    write_tiled(small, Path(args.source), args.fit_gb, seed=1)
    common = {"steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "devices": 1,
              "limit_gb": args.limit_gb}
    runs = {
        "streamed_big_file": run_child(data=big, out=work / "run-streamed", stream=1, **common),
        "in_memory_small_file": run_child(data=small, out=work / "run-memory", stream=0, **common),
        "in_memory_big_file": run_child(data=big, out=work / "run-memory-big", stream=0,
                                        **{**common, "steps": 1, "warmup": 0}),
    }
    return {"mode": "streaming", "file_gb": args.file_gb, "limit_gb": args.limit_gb, "runs": runs}


def ddp(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    small = work / f"tiled-{args.fit_gb:g}gb.h5"
    write_tiled(small, Path(args.source), args.fit_gb, seed=1)
    common = {"data": small, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
              "stream": 0, "limit_gb": 0}
    threads = os.cpu_count() or 2
    runs = {
        "1_process": run_child(out=work / "run-ddp1", devices=1, threads=threads, **common),
        "2_processes": run_child(out=work / "run-ddp2", devices=2, threads=max(1, threads // 2), **common),
    }
    return {"mode": "ddp", "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["streaming", "ddp", "child"])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="showers to tile (Geant4 SiW)")
    parser.add_argument("--work", default="/tmp/caloforge-scale", help="where the big files and runs go")
    parser.add_argument("--file-gb", type=float, default=6.0)
    parser.add_argument("--fit-gb", type=float, default=1.0, help="size of the file that fits")
    parser.add_argument("--limit-gb", type=float, default=3.0, help="address-space cap of each run")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    # child mode
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--stream", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--result", default=None)
    args = parser.parse_args()
    if args.mode == "child":
        child(args)
        return
    summary = {**(streaming(args) if args.mode == "streaming" else ddp(args)), "machine": machine(),
               "command": "python bench/scale.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale_{args.mode}.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    print(f"written {path}")


if __name__ == "__main__":
    main()
