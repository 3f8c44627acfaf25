"""Plot the GFlash simulator's mean longitudinal and radial profiles (docs/gflash_profiles.png).

Rows: Par04 SiW (CaloChallenge dataset-3 binning, ``par04-siw``) and Par04 PbWO4 (``par04-pbwo4``);
columns: mean energy per layer against depth in X0, and mean energy density against radius in Moliere
radii, for incident electrons of 1, 10, 100 and 1000 GeV at normal incidence. The dashed lines are the
gamma distribution of the average profile with G&P's T and alpha (``gflash.mean_depth_of_maximum``,
``gflash.mean_alpha``), integrated over each layer: what the mean of many showers should follow.

    python bench/plot_gflash_profiles.py --n 300 --out docs/gflash_profiles.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mplhep as hep
import numpy as np

from caloforge.geometry import get_geometry
from caloforge.simulate import GFlashConfig, get_material, simulate
from caloforge.simulate.gflash import gamma_profile_integral, mean_alpha, mean_depth_of_maximum

ENERGIES_GEV = (1, 10, 100, 1000)
PANELS = (("par04-siw", "Par04 SiW (1.4 mm W + 0.3 mm Si)"), ("par04-pbwo4", "Par04 PbWO$_4$ (homogeneous)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="showers per energy")
    parser.add_argument("--out", type=Path, default=Path("docs/gflash_profiles.png"))
    args = parser.parse_args()

    hep.style.use("ROOT")
    fig, axes = plt.subplots(2, 2, figsize=(13, 10), constrained_layout=True)
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(ENERGIES_GEV)))
    for row, (name, title) in enumerate(PANELS):
        geometry = get_geometry(name)
        material = get_material(geometry.material)
        n_layers, _, n_radial = geometry.grid_shape
        z_edges_x0 = np.concatenate([[0.0], np.cumsum(geometry.layer_thickness_mm)]) / material.x0_mm
        r_edges = geometry.r_edges_mm
        ring_area = np.pi * (r_edges[1:] ** 2 - r_edges[:-1] ** 2)  # mm^2
        long_ax, rad_ax = axes[row]
        for energy_gev, colour in zip(ENERGIES_GEV, colours, strict=True):
            energy = energy_gev * 1000.0
            result = simulate(geometry, np.full(args.n, energy), seed=energy_gev, config=GFlashConfig())
            grid = geometry.to_grid(result.showers.astype(np.float64)) / energy  # fraction of E_inc
            per_layer = grid.sum(axis=(2, 3)).mean(axis=0)
            per_ring = grid.sum(axis=(1, 2)).mean(axis=0) / ring_area
            label = f"{energy_gev:g} GeV"
            hep.histplot(per_layer, z_edges_x0, ax=long_ax, color=colour, label=label, lw=2)
            # Average-profile gamma (G&P), times the visible fraction, integrated over each layer.
            alpha = float(mean_alpha(material, energy))
            t_max = float(mean_depth_of_maximum(material, energy))
            beta = (alpha - 1) / t_max
            expected = material.sampling_fraction * gamma_profile_integral(
                z_edges_x0[:-1], z_edges_x0[1:], np.full(n_layers, alpha), np.full(n_layers, beta)
            )
            centres = 0.5 * (z_edges_x0[:-1] + z_edges_x0[1:])
            long_ax.plot(centres, expected, ls="--", color=colour, lw=1.2)
            hep.histplot(per_ring, r_edges / material.moliere_mm, ax=rad_ax, color=colour, label=label, lw=2)
        long_ax.set_xlabel("depth [$X_0$]", fontsize=18)
        long_ax.set_ylabel(r"$\langle E_\mathrm{layer} \rangle / E_\mathrm{inc}$", fontsize=18)
        long_ax.set_title(title, fontsize=16)
        long_ax.plot([], [], ls="--", color="grey", label="G&P average profile")
        long_ax.legend(fontsize=13)
        rad_ax.set_yscale("log")
        rad_ax.set_xlabel(r"$r$ [$R_M$]" + f" ($R_M$ = {material.moliere_mm:.2f} mm, {n_radial} rings)",
                          fontsize=18)
        rad_ax.set_ylabel(r"$\langle E \rangle / E_\mathrm{inc}$ per mm$^2$", fontsize=18)
        rad_ax.set_title(title, fontsize=16)
        rad_ax.legend(fontsize=13)
    fig.suptitle(f"caloforge GFlash simulator: mean profiles of {args.n} electron showers per energy",
                 fontsize=17)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
