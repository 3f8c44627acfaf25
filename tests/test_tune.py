"""``caloforge tune``: an Optuna study over a family's run config, trials scored on held-out showers,
continued when run again, shared by concurrent workers through one SQLite storage."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from toys import toy_showers

from caloforge.errors import InputError
from caloforge.io import write_showers
from caloforge.runconfig import load_run_config
from caloforge.tune import load_tune_config

SCRIPT = Path(__file__).parent / "cli_with_toy.py"
SEARCH = {
    "base": {"family": "toy-gauss", "model": {"width": 8}, "optim": {"warmup_steps": 1},
             "train": {"batch_size": 16, "max_steps": 6, "checkpoint_every": 6, "log_every": 1},
             "data": {"validation_every": 2}},
    "objective": "val_loss",
    "startup_trials": 1,
    "space": {"optim.lr": {"float": [1.0e-4, 1.0e-1], "log": True}, "model.width": {"choices": [4, 8, 16]}},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tune")
    write_showers(root / "train.h5", toy_showers(80))
    (root / "search.yaml").write_text(yaml.safe_dump(SEARCH))
    return root / "train.h5", root / "search.yaml"


def finished(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def test_a_study_runs_its_trials_writes_the_best_config_and_continues(files: tuple[Path, Path], run,
                                                                      tmp_path: Path) -> None:
    data, search = files
    code, out, err = run("tune", "--data", data, "--space", search, "--out", tmp_path / "study",
                         "--n-trials", 4)
    assert code == 0, err
    assert "tuning 2 parameters of toy-gauss on 80 showers (val_loss, 4 trials)" in err
    assert err.count("trial ") >= 4 and "val_loss" in err
    assert "best val_loss " in out and f"written to {tmp_path / 'study' / 'best.yaml'}" in out
    states = finished(tmp_path / "study" / "study.db")
    assert len(states) == 4 and all(state in ("COMPLETE", "PRUNED") for _, state in states)
    assert len(list((tmp_path / "study").glob("trial-*/model.ckpt"))) == 4
    best = load_run_config(tmp_path / "study" / "best.yaml")  # what caloforge train --config takes
    assert best.family == "toy-gauss" and best.model.width in (4, 8, 16) and 1e-4 <= best.optim.lr <= 0.1
    assert best.data.validation_fraction == 0.1

    code, out, err = run("tune", "--data", data, "--space", search, "--out", tmp_path / "study",
                         "--n-trials", 5)
    assert code == 0, err
    assert "4 of 5 trials finished" in err and len(finished(tmp_path / "study" / "study.db")) == 5


def test_two_workers_share_one_sqlite_study(files: tuple[Path, Path], tmp_path: Path) -> None:
    data, search = files
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    command = [sys.executable, str(SCRIPT), "tune", "--data", str(data), "--space", str(search),
               "--out", str(tmp_path / "study"), "--n-trials", "4", "--storage", storage]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    failed = [err for w, (_, err) in zip(workers, results, strict=True) if w.returncode != 0]
    if failed:
        pytest.fail("a worker failed:\n" + "\n----\n".join(failed))
    states = finished(tmp_path / "shared.db")
    numbers = [n for n, _ in states]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5  # both may start the 4th at once
    assert all(state in ("COMPLETE", "PRUNED") for _, state in states)
    runs = sorted(p.name for p in (tmp_path / "study").glob("trial-*"))
    assert runs == [f"trial-{n:04d}" for n in sorted(numbers)]  # no two trials in one directory


def test_a_search_file_with_a_bad_key_is_refused_before_any_work(tmp_path: Path, run,
                                                                 files: tuple[Path, Path]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SEARCH, "space": {"model.widht": {"int": [4, 8]}}}))
    with pytest.raises(InputError, match=r"model\.widht"):
        load_tune_config(bad)
    bad.write_text(yaml.safe_dump({**SEARCH, "space": {"optim.lr": {"float": [0.1, 0.01]}}}))
    code, _, err = run("tune", "--data", files[0], "--space", bad, "--out", tmp_path / "s", "--n-trials", 1)
    assert code == 2 and "space.optim.lr.float" in err and "LOW < HIGH" in err
    assert not (tmp_path / "s").exists()
