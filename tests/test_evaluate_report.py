"""End to end: two small simulated files -> report directory, through the library and the command."""

from __future__ import annotations

import json
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from caloforge.cli import main
from caloforge.data import ShowerSet
from caloforge.evaluate import ClassifierConfig, EvaluateConfig, evaluate_files
from caloforge.evaluate.features import compute_features
from caloforge.evaluate.plots import azimuthal_profile
from caloforge.geometry import CylindricalGeometry, get_geometry
from caloforge.io import write_showers
from caloforge.simulate import GFlashConfig, simulate

# 4 layers x 6 alpha x 5 radial bins of 4.65 mm in SiW: small enough for a fast test, real physics.
SMALL = CylindricalGeometry.regular("small-siw", 4, 6, [4.65 * i for i in range(6)], 3.4, "SiW")
FAST = EvaluateConfig(
    classifier=ClassifierConfig(n_hidden=16, n_layers=2, epochs=2), fpd_min_samples=200, fpd_max_samples=400,
    fpd_batches=2, fpd_points=3, kpd_batch_size=200, kpd_batches=3, seed=11, chunk_size=150,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("evaluate")
    paths = []
    for name, seed in (("generated", 1), ("reference", 2)):
        energy = 10 ** np.random.default_rng(seed).uniform(3, 5, 400)
        path = folder / f"{name}.h5"
        write_showers(path, simulate(SMALL, energy, seed=seed, config=GFlashConfig(max_spots=300)))
        paths.append(path)
    return paths[0], paths[1]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.metrics: list[tuple[str, str]] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(str(a["src"]))
        if a.get("data-metric"):
            self._open = str(a["data-metric"])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.metrics.append((self._open, data.strip()))
            self._open = None


def _lookup(metrics: dict, dotted: str) -> object:
    value: object = metrics
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"{dotted} is not in metrics.json"
        value = value[key]
    return value


def test_report_refers_only_to_existing_images_and_numbers(files: tuple[Path, Path], tmp_path: Path) -> None:
    generated, reference = files
    out = tmp_path / "report"
    returned = evaluate_files(generated, reference, out, FAST, show_progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(returned))
    assert metrics["seed"] == 11 and metrics["geometry"] == "small-siw"
    assert metrics["samples"]["generated"]["n_selected"] == 400
    assert metrics["files"]["reference"] == str(reference)
    assert set(metrics["classifier"]) == {"low", "high"}
    assert metrics["classifier"]["low"]["inputs"] == 1 + SMALL.n_voxels
    # 400 showers split 60/20/20 per sample
    assert metrics["classifier"]["high"]["n_validation"] == 160

    page = _Page()
    page.feed((out / "index.html").read_text())
    assert len(page.images) == len(metrics["plots"]) >= 15
    assert "azimuthal_profile.png" in page.images
    for image in page.images:
        assert (out / image).stat().st_size > 5000, image
    assert len(page.metrics) >= 10
    for dotted, shown in page.metrics:
        value = _lookup(metrics, dotted)
        assert isinstance(value, int | float)
        if isinstance(value, int):
            assert shown == str(value)
        else:
            assert float(shown) == pytest.approx(value, rel=5e-4), dotted
    assert re.search(r"AUC &lt; 0\.6|AUC < 0\.6", (out / "index.html").read_text())
    assert not list(tmp_path.glob(".report*")), "temporary directory left behind"


def test_azimuthal_profile_sums_each_alpha_bin_and_needs_one_alpha_binning() -> None:
    showers = np.zeros((2, SMALL.n_voxels))
    _, alpha, _ = SMALL.voxel_indices
    showers[:, alpha == 0] = 1.0  # every voxel of the first alpha bin (alpha in [-pi, -2 pi / 3))
    showers[1, alpha == 5] = 3.0
    features = compute_features(ShowerSet(showers, SMALL, np.full(2, 1e4)), threshold_mev=0.0)
    cells = SMALL.n_layers * SMALL.n_radial  # voxels per alpha bin
    np.testing.assert_allclose(azimuthal_profile(features), [cells, 0, 0, 0, 0, 1.5 * cells])
    photons = get_geometry("calochallenge-1-photons")  # layers of 1 and of 10 alpha bins
    mixed = ShowerSet(np.ones((2, photons.n_voxels)), photons, np.full(2, 1e4))
    assert azimuthal_profile(compute_features(mixed, threshold_mev=0.0)) is None


def test_command_selects_energy_range_and_reports_bad_input(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    generated, reference = files

    def run(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["caloforge", *map(str, args)])
        with pytest.raises(SystemExit) as leaving:
            main()
        captured = capsys.readouterr()
        return (leaving.value.code or 0), captured.out, captured.err

    out = tmp_path / "selected"
    config = tmp_path / "fast.yaml"
    config.write_text("fpd_min_samples: 100\nfpd_max_samples: 200\nfpd_batches: 2\nfpd_points: 3\n"
                      "kpd_batch_size: 100\nkpd_batches: 3\n")
    code, stdout, stderr = run("evaluate", generated, reference, "--out", out, "--classifier", "none",
                               "--no-plots", "--energy-range", "10000,100000", "--seed", 4,
                               "--config", config)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    expected = int(np.sum(10 ** np.random.default_rng(1).uniform(3, 5, 400) >= 10000))
    assert metrics["samples"]["generated"]["n_selected"] == expected
    assert metrics["settings"]["energy_range"] == [10000.0, 100000.0] and metrics["seed"] == 4
    assert metrics["classifier"] == {} and metrics["plots"] == []
    assert "FPD" in stdout and math.isfinite(metrics["fpd_x1e3"]["value"])

    code, _, stderr = run("evaluate", generated, reference, "--out", out, "--energy-range", "5,1")
    assert code == 2 and "error:" in stderr and "--energy-range" in stderr
    code, _, stderr = run("evaluate", generated, reference, "--out", out, "--theta-range", "0deg,10deg")
    assert code == 2 and "at least 10" in stderr
    code, _, stderr = run("evaluate", generated, tmp_path / "missing.h5", "--out", out)
    assert code == 2 and "error:" in stderr


def test_separation_summary_gives_every_layer_kind_its_own_colour(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from matplotlib.colors import to_rgba

    from caloforge.evaluate import plots
    from caloforge.evaluate.histograms import LAYER_KINDS

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    powers = {f"{kind}_{layer}": 0.01 * (i + 1) for i, kind in enumerate(LAYER_KINDS) for layer in range(3)}
    plots.plot_separation_summary(powers, 3, tmp_path / "summary.png")
    lines = [line for line in figures[0].axes[0].get_lines() if line.get_label() in LAYER_KINDS]
    assert len(lines) == len(LAYER_KINDS) == 8
    assert len({to_rgba(line.get_color()) for line in lines}) == len(lines)  # the style's cycle repeated one
