"""The demos end to end at their --quick size: every artefact written, the report path printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from caloforge.cli import app
from caloforge.demo import DEMO, QUICK_DEMO
from caloforge.io import read_showers


def test_demo_train_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--train", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = out / "report" / "index.html"
    assert f"report: {report}" in result.stdout
    assert report.stat().st_size > 1000
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["classifier"]["low"]["auc"] <= 1.0
    generated = read_showers(out / "generated.h5")
    reference = read_showers(out / "reference.h5")
    assert len(generated) == len(reference) == QUICK_DEMO.n_eval
    assert generated.energy == pytest.approx(reference.energy)
    assert (out / "run" / "model.ckpt").exists()

    # a second demo into the same directory is refused, not overwritten
    again = CliRunner().invoke(app, ["demo", "--train", "--quick", "--out", str(out)])
    assert again.exit_code != 0


def test_full_demo_is_sized_for_two_cores() -> None:
    # the full demo trains for a fixed wall-clock budget, so its run time is bounded by construction
    assert DEMO.train_minutes is not None and DEMO.train_minutes <= 8
    assert DEMO.run_config().model.dit.resolved().hidden == DEMO.hidden


def test_demo_quick_scores_the_shipped_model_against_geant4(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report' / 'index.html'}" in result.stdout
    assert "g4-siw-dit" in result.stdout
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["classifier"]["low"]["auc"] <= 1.0
    assert len(read_showers(out / "generated.h5")) == len(read_showers(out / "reference.h5")) == 200


def test_demo_scores_a_checkpoint_of_ones_own(tmp_path: Path, run) -> None:
    from caloforge.pretrained import sample_path

    config = tmp_path / "toy.yaml"
    config.write_text("family: toy-gauss\nmodel: {width: 8}\ntrain: {batch_size: 64, max_steps: 2}\n")
    code, _, err = run("train", "--data", sample_path("g4-siw-electrons"), "--config", config,
                       "--out", tmp_path / "run")
    assert code == 0, err
    model = tmp_path / "run" / "model.ckpt"
    code, out, err = run("demo", "--quick", "--out", tmp_path / "demo", "--model", model)
    assert code == 0, err
    assert f"model: {model}" in out and "auc_low" in out
    code, _, err = run("demo", "--quick", "--out", tmp_path / "none", "--model", tmp_path / "missing.ckpt")
    assert code == 2 and "missing.ckpt" in err and "does not exist" in err
