"""GLaM's learned mapping for two layers of an irregular readout (CaloChallenge dataset 1), as a picture.

For each chosen readout layer, the encoder matrix that maps the layer's radial bins (columns) onto the
regular grid's rings (rows): its initialisation (the area overlap of the rings, ``caloforge.models.glam``),
the trained one (the sampler's averaged weights in the checkpoint) and their difference. A row is one grid
ring; at initialisation it holds the area fractions of the layer's bins it overlaps (1 on the diagonal
blocks, 0 elsewhere), so what training moved shows as colour off the overlap pattern.

    python bench/plot_glam.py RUN/model.ckpt --layers 1,2 --out docs/glam_layers.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from caloforge.checkpoint import read_checkpoint
from caloforge.models.glam import GLaM, GLaMConfig

PREFIX = "denoiser.backbone.glam.encoders."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="model.ckpt of an edm-unet run on an irregular geometry")
    parser.add_argument("--layers", default="1,2", help="two readout layer indices (non-empty ones)")
    parser.add_argument("--out", required=True, help="PNG to write (a JSON of the figures beside it)")
    args = parser.parse_args()
    content = read_checkpoint(args.checkpoint)
    assert content.sampler_state is not None
    geometry = content.context.geometry
    if geometry.is_regular:
        raise SystemExit(f"{args.checkpoint}: geometry '{geometry.name}' is regular; GLaM is not used")
    initial = GLaM(geometry, GLaMConfig(init_noise=0.0))
    non_empty = [i for i, b in enumerate(geometry.layers) if b.n_voxels > 0]
    chosen = [int(x) for x in args.layers.split(",")]
    for layer in chosen:
        if layer not in non_empty:
            raise SystemExit(f"--layers: layer {layer} is empty or absent; non-empty layers: {non_empty}")
    grid_edges = initial.latent.r_edges_mm

    fig, axes = plt.subplots(len(chosen), 3, figsize=(11, 3.6 * len(chosen)), squeeze=False)
    summary = {}
    for row, layer in enumerate(chosen):
        k = non_empty.index(layer)
        start = initial.encoders[k].detach().numpy()  # (R, R_l)
        learned = content.sampler_state[f"{PREFIX}{k}"].numpy()
        delta = learned - start
        binning = geometry.layers[layer]
        summary[layer] = {"grid_rings": int(start.shape[0]), "layer_bins": int(start.shape[1]),
                          "n_alpha": binning.n_alpha, "max_abs_change": float(np.abs(delta).max()),
                          "rms_change": float(np.sqrt((delta**2).mean())),
                          "row_sums_learned": [float(s) for s in learned.sum(axis=1)]}
        limit = max(np.abs(delta).max(), 1e-12)
        # trained entries may leave [0, 1]: one colour scale for both
        lo, top = min(0.0, float(learned.min())), max(1.0, float(learned.max()))
        panels = [(start, "initial: ring area overlap", "viridis", lo, top),
                  (learned, f"learned ({content.step} steps)", "viridis", lo, top),
                  (delta, "learned - initial", "RdBu_r", -limit, limit)]
        for col, (matrix, title, cmap, lo, hi) in enumerate(panels):
            ax = axes[row, col]
            image = ax.imshow(matrix, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", origin="lower")
            fig.colorbar(image, ax=ax, fraction=0.046)
            ax.set_title(f"layer {layer} ({binning.n_alpha} alpha x {binning.n_radial} r): {title}",
                         fontsize=9)
            ax.set_xlabel(f"layer's radial bin (edges {binning.r_edges[0]:g}-{binning.r_edges[-1]:g} mm)")
            ax.set_ylabel(f"grid ring ({len(grid_edges) - 1} rings, to {grid_edges[-1]:g} mm)")
    fig.suptitle(f"GLaM encoders, {geometry.name}: readout bins -> regular grid ({Path(args.checkpoint)})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2))
    for layer, figures in summary.items():
        print(f"layer {layer}: {figures['grid_rings']} x {figures['layer_bins']}, max |change| "
              f"{figures['max_abs_change']:.3g}, rms {figures['rms_change']:.3g}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
