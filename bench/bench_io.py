"""Shower-file throughput and streaming memory: write, stream-read, convert, summarise.

Writes a file of random sparse showers in a dataset-3-sized geometry (40500 voxels, float32), then
measures MB/s of each pass and the peak memory allocated while streaming it (tracemalloc sees numpy and
h5py buffers), which should scale with the chunk, not the file.

    python bench/bench_io.py --n 4000 --chunk-size 500
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from caloforge.data import ShowerSet
from caloforge.geometry import get_geometry
from caloforge.io import ShowerWriter, convert_file, iter_showers, summarize_file


def random_chunk(geometry, n, rng):
    values = rng.exponential(1.0, (n, geometry.n_voxels)).astype(np.float32)
    values[values < 2.0] = 0.0  # ~86% zeros, like dataset 3
    return ShowerSet(values, geometry, rng.uniform(1e3, 1e6, n))


def timed(label, fn, n_bytes, results):
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    results[label] = {"seconds": round(seconds, 3), "MB_per_s": round(n_bytes / 1e6 / seconds, 1)}
    print(f"{label:<22} {seconds:7.2f} s  {n_bytes / 1e6 / seconds:8.1f} MB/s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="showers in the test file")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--geometry", default="calochallenge-3")
    parser.add_argument("--out", type=Path, default=Path("bench/results/io.json"))
    args = parser.parse_args()

    geometry = get_geometry(args.geometry)
    rng = np.random.default_rng(0)
    n_bytes = args.n * geometry.n_voxels * 4
    results: dict[str, object] = {
        "n_showers": args.n, "geometry": geometry.name, "chunk_size": args.chunk_size,
        "file_MB": round(n_bytes / 1e6, 1),
    }
    if n_bytes > 4e9:
        raise SystemExit("keep the file under 4 GB: the benchmark holds its random chunks in memory")
    chunks = [random_chunk(geometry, min(args.chunk_size, args.n - i), rng)
              for i in range(0, args.n, args.chunk_size)]

    with tempfile.TemporaryDirectory() as tmp:
        source, par04 = Path(tmp) / "s.h5", Path(tmp) / "p.h5"

        def write() -> None:
            with ShowerWriter(source, geometry, expected_n=args.n) as writer:
                for chunk in chunks:
                    writer.append(chunk)

        timed("write calochallenge", write, n_bytes, results)
        chunks.clear()

        def stream() -> int:
            tracemalloc.start()
            total = sum(len(c) for c in iter_showers(source, args.chunk_size))
            results["stream_peak_MB"] = round(tracemalloc.get_traced_memory()[1] / 1e6, 1)
            tracemalloc.stop()
            return total

        assert timed("stream read", stream, n_bytes, results) == args.n
        chunk_mb = args.chunk_size * geometry.n_voxels * 4 / 1e6
        results["chunk_MB"] = round(chunk_mb, 1)
        print(f"{'stream peak memory':<22} {results['stream_peak_MB']:7.1f} MB  "
              f"(file {n_bytes / 1e6:.0f} MB, one chunk {chunk_mb:.0f} MB)")
        timed("convert -> par04", lambda: convert_file(source, par04, "par04", chunk_size=args.chunk_size),
              n_bytes, results)
        timed("summarise (info)", lambda: summarize_file(par04, chunk_size=args.chunk_size), n_bytes, results)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
