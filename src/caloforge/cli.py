"""The ``caloforge`` command. Thin: parses arguments, calls the library, prints, sets the exit code.

Every command's errors that come from bad input (``CaloforgeError``) or the file system (``OSError``) are
printed as one line ``error: ...`` with exit code 2, never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from caloforge.allocator import heap_for_large_tensors
from caloforge.errors import CaloforgeError, InputError
from caloforge.geometry import CylindricalGeometry

app = typer.Typer(
    name="caloforge",
    help="Train, run, validate and ship generative calorimeter-shower models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    """Print an error line and leave with exit code 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


# ---- commands are added below, one section per concern ------------------------------------------------


# ---- shower files: info, convert, geometries (caloforge.io, caloforge.geometry) ----------------------
def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _grid_text(g: CylindricalGeometry) -> str:
    """'45 x 16 x 9' (layers x alpha x radial) or the layer count of a per-layer binning."""
    if g.is_regular:
        return f"{g.n_layers} x {g.n_alpha} x {g.n_radial}"
    return f"{g.n_layers} layers, per-layer binning"


@app.command("info")
def info_command(
    file: str = typer.Argument(..., help="HDF5 shower file (CaloChallenge or Par04/LEMURS layout)."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry preset, if the file "
                                        "does not name one and its shape fits several."),
    chunk_size: int = typer.Option(10_000, "--chunk-size", min=1, help="Showers read at a time."),
) -> None:
    """Describe a shower file: format, geometry, size, energy and angle ranges, sparsity, E_dep/E_inc."""
    from caloforge.io import summarize_file

    s = summarize_file(file, geometry, chunk_size=chunk_size, progress=True)
    info, g = s.info, s.info.geometry
    rows = [
        ("file", f"{info.path} ({_megabytes(info.size_bytes)})"),
        ("format", info.format),
        ("geometry", f"{g.name}: {_grid_text(g)} (layers x alpha x radial) = {g.n_voxels} voxels, "
                     f"{g.material}, {g.depth_mm:.4g} mm deep (from {info.geometry_source})"),
    ]
    if info.medium is not None:
        rows.append(("medium", f"{info.medium} (simulated in it; the readout is the geometry's)"))
    if s.empty:
        # No statistics to show (they would all be NaN); say so plainly. A description, so exit 0.
        rows.append(("showers", "0 (the file holds no showers)"))
        for key, value in rows:
            typer.echo(f"{key:<12} {value}")
        return
    rows.append(("showers", " x ".join(map(str, info.showers_shape)) + f", {info.showers_dtype}"
                 + (f", {info.compression}" if info.compression else "")))
    low, high = s.ranges["energy"]
    rows.append(("energy", f"{low:.6g} .. {high:.6g} MeV ({low / 1e3:.6g} .. {high / 1e3:.6g} GeV)"))
    units = {"theta": "rad", "phi": "rad", "detector": ""}
    for name, unit in units.items():
        if name in s.ranges:
            low, high = s.ranges[name]
            rows.append((name, f"{low:.6g} .. {high:.6g} {unit}".rstrip()))
        else:
            rows.append((name, "not recorded (default applies)"))
    rows.append(("sparsity", f"{s.sparsity:.4f} (fraction of zero voxels)"))
    rows.append(("E_dep/E_inc", f"{s.deposit_fraction_mean:.4g} mean, {s.deposit_fraction_std:.4g} std"))
    for key, value in rows:
        typer.echo(f"{key:<12} {value}")


@app.command("convert")
def convert_command(
    source: str = typer.Argument(..., help="Input HDF5 shower file."),
    destination: str = typer.Argument(..., help="Output file; written atomically."),
    to: str = typer.Option(..., "--to", help="Output layout: calochallenge or par04."),
    float16: bool = typer.Option(False, "--float16", help="Store showers as float16 (max 65504 MeV)."),
    chunk_size: int = typer.Option(10_000, "--chunk-size", min=1, help="Showers in memory at a time."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry preset of the input, "
                                        "if the file does not name one and its shape fits several."),
    compression: str | None = typer.Option(None, "--compression", help="HDF5 filter: gzip or lzf."),
) -> None:
    """Convert a shower file between the CaloChallenge and Par04/LEMURS layouts, streaming."""
    from caloforge.io import convert_file

    info = convert_file(source, destination, to, geometry=geometry, dtype="float16" if float16 else None,
                        chunk_size=chunk_size, compression=compression, progress=True)
    typer.echo(f"wrote {info.path}: {info.format}, {info.n_showers} showers, {info.showers_dtype}, "
               f"geometry {info.geometry.name}, {_megabytes(info.size_bytes)}")


@app.command("geometries")
def geometries_command() -> None:
    """List the named detector geometries (presets)."""
    from caloforge.geometry import PRESETS

    header = ("name", "layers x alpha x radial", "voxels", "depth mm", "material", "description")
    rows = [header] + [
        (g.name, _grid_text(g), str(g.n_voxels), f"{g.depth_mm:.4g}", g.material, g.description)
        for g in PRESETS.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  "
                   + row[-1])


# ---- the embedded GFlash simulator (caloforge.simulate, caloforge.spectra) -----------------------------
@app.command("simulate")
def simulate_command(
    geometry: str = typer.Option(..., "--geometry", "-g",
                                 help="Geometry preset (see 'caloforge geometries')."),
    n: int = typer.Option(..., "--n", min=0, help="Number of showers."),
    energy: str = typer.Option(..., "--energy", help="Incident energy spectrum in MeV: 50000, "
                               "uniform:a,b, log-uniform:a,b, power-law:a,b,index, discrete:a,b,.., "
                               "powers-of-two:a,b."),
    out: str = typer.Option(..., "--out", help="Output HDF5 file (written atomically)."),
    theta: str | None = typer.Option(None, "--theta", help="Polar angle spectrum in radians (default: "
                                     "normal incidence pi/2, not recorded)."),
    phi: str | None = typer.Option(None, "--phi",
                                   help="Azimuth spectrum in radians (default 0, not recorded)."),
    threshold_mev: float | None = typer.Option(None, "--threshold-mev", min=0.0, help="Cell readout "
                                               "threshold in MeV (default: the material's, SiW 0.01515)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the conditions and the showers."),
    file_format: str = typer.Option("calochallenge", "--format", help="calochallenge or par04."),
    float16: bool = typer.Option(False, "--float16", help="Store showers as float16 (max 65504 MeV)."),
    config: str | None = typer.Option(None, "--config", help="YAML file with GFlashConfig keys "
                                      "(threshold_mev, max_spots, radial_scale, tuning, ...)."),
    gflash_params: str | None = typer.Option(None, "--gflash-params", help="Fitted parameters from "
                                             "'caloforge fit-gflash' (a GFlashConfig YAML, read like "
                                             "--config; both may be given if no key differs)."),
    material: str | None = typer.Option(None, "--material", help="Simulate this medium on the geometry's "
                                        "readout (SiW, SciPb, PbWO4, ATLAS, ODD, ALLEGRO; default: the "
                                        "geometry's own)."),
    detector: int | None = typer.Option(None, "--detector", min=0, help="Write this detector index with "
                                        "every shower (multi-detector training sets)."),
) -> None:
    """Simulate electron showers with the embedded GFlash parameterisation and write them to a file."""
    import dataclasses
    import time

    from caloforge.geometry import get_geometry
    from caloforge.simulate import GFlashConfig, simulate_to_file
    from caloforge.spectra import parse_spectrum

    g = get_geometry(geometry)
    settings = _gflash_settings(config, gflash_params) if config or gflash_params else GFlashConfig()
    if threshold_mev is not None:
        settings = dataclasses.replace(settings, threshold_mev=threshold_mev)
    if material is not None:
        settings = dataclasses.replace(settings, material=material)
    specs = (parse_spectrum(energy, "--energy", positive=True),
             None if theta is None else parse_spectrum(theta, "--theta"),
             None if phi is None else parse_spectrum(phi, "--phi"))
    start = time.perf_counter()
    simulate_to_file(out, g, n, *specs, config=settings, seed=seed, format=file_format,
                     dtype="float16" if float16 else "float32", progress=True, detector=detector)
    seconds = time.perf_counter() - start
    typer.echo(f"simulated {n} showers in {seconds:.2f} s ({n / max(seconds, 1e-9):.0f} showers/s), "
               f"geometry {g.name}, medium {settings.material_for(g).name}"
               + ("" if detector is None else f", detector {detector}") + f", wrote {out}"
               + (f", GFlash parameters of {gflash_params}" if gflash_params else ""))


def _gflash_settings(config: str | None, gflash_params: str | None) -> Any:
    """The GFlashConfig of --config and/or --gflash-params: one loader (``load_yaml``); given both, their
    keys are merged, and a key the two files set to different values is an error."""
    from caloforge.config import from_dict, load_yaml, read_yaml_mapping
    from caloforge.simulate import GFlashConfig

    paths = [p for p in (config, gflash_params) if p is not None]
    for path in paths:
        load_yaml(GFlashConfig, path)  # each file checked on its own: errors name the file at fault
    if len(paths) == 1:
        return load_yaml(GFlashConfig, paths[0])
    assert config is not None and gflash_params is not None

    def merge(a: dict[str, Any], b: dict[str, Any], prefix: str) -> dict[str, Any]:
        merged = dict(a)
        for key, value in b.items():
            if isinstance(value, dict) and isinstance(a.get(key), dict):
                merged[key] = merge(a[key], value, f"{prefix}{key}.")
            elif key in a and a[key] != value:
                raise InputError(gflash_params, f"{prefix}{key}", f"is {value!r} but --config {config} "
                                 f"sets {a[key]!r}", "one value: give the key in one of the two files")
            else:
                merged[key] = value
        return merged

    data = merge(read_yaml_mapping(config), read_yaml_mapping(gflash_params), "")
    return from_dict(GFlashConfig, data, f"{config} + {gflash_params}")


@app.command("fit-gflash")
def fit_gflash_command(
    data: str = typer.Argument(..., help="Full-simulation shower file (e.g. Geant4) to fit to."),
    out: str = typer.Option(..., "--out", help="Output YAML of fitted GFlash parameters (written "
                            "atomically; use with 'caloforge simulate --gflash-params')."),
    n_showers: int = typer.Option(2000, "--n-showers", min=1, help="Showers of DATA to fit to (a seeded "
                                  "random choice; all when the file holds fewer)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the choice of showers and of the simulation "
                             "(the same for every evaluation)."),
    max_evaluations: int = typer.Option(300, "--max-evaluations", min=1, help="Most simulations the "
                                        "optimiser may run (each ~0.8 s per 2000 SiW showers of 1-100 GeV)."),
    start: str | None = typer.Option(None, "--start", help="GFlashConfig YAML to start from, e.g. an "
                                     "earlier fit to refine; its threshold, max_spots and material stay."),
    max_spots: int | None = typer.Option(None, "--max-spots", min=1, help="Cap on spots per shower in the "
                                         "fit and in the written parameters (default 20000, or --start's): "
                                         "GFlash's own count reaches ~11000 at 100 GeV in SiW; a lower cap "
                                         "is faster but hits fewer cells at high energy."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry preset of DATA, if the "
                                        "file does not name one and its shape fits several."),
) -> None:
    """Fit the GFlash parameterisation's free parameters to a full-simulation file (scipy Nelder-Mead on
    histogram distances) and write them for 'caloforge simulate --gflash-params'."""
    import dataclasses
    import datetime

    from caloforge.io import atomic_output
    from caloforge.simulate import GFlashConfig
    from caloforge.simulate.fit import FIT_MAX_SPOTS, fit_gflash, params_yaml, read_fit_sample

    start_config = GFlashConfig(max_spots=FIT_MAX_SPOTS)
    if start is not None:
        from caloforge.config import load_yaml
        start_config = load_yaml(GFlashConfig, start)
    if max_spots is not None:
        start_config = dataclasses.replace(start_config, max_spots=max_spots)
    reference = read_fit_sample(data, n_showers, seed=seed, geometry=geometry)
    typer.echo(f"fitting GFlash to {len(reference)} showers of {data} (geometry "
               f"{reference.geometry.name}), at most {max_evaluations} evaluations", err=True)
    result = fit_gflash(reference, start=start_config, seed=seed, max_evaluations=max_evaluations)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = params_yaml(result, data, date)
    with atomic_output(out) as tmp:
        tmp.write_text(text)
    width = max(len(key) for key in result.parameters) if result.parameters else 0
    typer.echo(f"{'parameter':<{width}}  {'start':>10}  {'fitted':>10}")
    for key, (before, after) in result.parameters.items():
        typer.echo(f"{key:<{width}}  {before:>10.5g}  {after:>10.5g}")
    typer.echo(f"objective (mean separation power over {len(result.terms)} feature kinds): "
               f"{result.objective_start:.4f} -> {result.objective:.4f} after {result.n_evaluations} "
               f"evaluations in {result.seconds:.0f} s ({result.message})")
    typer.echo(f"wrote {out}; use it with: caloforge simulate --gflash-params {out} ...")


# ---- model families: families, train, generate, demo (caloforge.families, training, generate) -----------
@app.command("families")
def families_command() -> None:
    """List the model families (caloforge train --family NAME), one line each."""
    from caloforge.families import family_names, get_family
    from caloforge.runconfig import DEFAULT_FAMILY

    families = [get_family(name) for name in family_names()]
    width = max(len(f.name) for f in families)
    for f in families:
        default = " (default)" if f.name == DEFAULT_FAMILY else ""
        options = ", ".join(f.sample_options) or "none"
        typer.echo(f"{f.name:<{width}}  {f.representation:<7}  {f.summary}{default}; "
                   f"sampling options: {options}")


def _set_key(data: dict[str, Any], assignment: str) -> None:
    """Apply 'SECTION.KEY=VALUE' (VALUE read as YAML) to a run-config dict."""
    import yaml

    from caloforge.config import set_dotted

    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise InputError(None, "--set", f"is '{assignment}'", "KEY=VALUE, e.g. train.batch_size=64")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InputError(None, "--set", f"has a value that is not YAML: '{text}'",
                         "a YAML scalar or list") from None
    set_dotted(data, key, value)


@app.command("train")
def train_command(
    data: list[str] = typer.Option(..., "--data", help="HDF5 training showers (CaloChallenge or Par04 "  # noqa: B008
                                   "layout); repeat for several files of one geometry. Files larger than a "
                                   "quarter of memory are streamed (config data.stream)."),
    out: str = typer.Option(..., "--out", help="Run directory: config.yaml, logs/, checkpoints/, "
                            "model.ckpt."),
    config: str | None = typer.Option(None, "--config", help="YAML run config (family, model, preprocess, "
                                      "conditions, optim, train); defaults otherwise."),
    family: str | None = typer.Option(None, "--family", help="Model family (see 'caloforge families'; "
                                      "default: the config's, else edm-dit)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN/checkpoints/last.ckpt."),
    init_from: str | None = typer.Option(None, "--init-from", help="Start from the weights of this "
                                         "checkpoint (same family and geometry), e.g. to adapt a model to "
                                         "a new detector; its config is used unless --config is given."),
    teacher: str | None = typer.Option(None, "--teacher", help="Checkpoint of a trained model to distil "
                                       "(families that take a teacher); its config is used unless --config "
                                       "is given, e.g. --set model.distill.method=consistency --set "
                                       "model.sample.sampler=consistency --set model.sample.n_steps=1."),
    settings: list[str] = typer.Option([], "--set",  # noqa: B008 (typer's idiom for a repeatable option) help="Override one config key, e.g. "
                                       "--set model.dit.size=small --set train.batch_size=64 (repeatable)."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Overrides train.max_steps."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", min=0.01,
                                             help="Overrides train.max_minutes (wall-clock budget)."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry preset, if the file "
                                        "does not name one."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="Overrides train.accelerator "
                                           "(cpu, gpu, auto)."),
    devices: str | None = typer.Option(None, "--devices", help="Overrides train.devices: processes (GPUs) "
                                       "per node, e.g. 4, or auto."),
    num_nodes: int | None = typer.Option(None, "--num-nodes", min=1, help="Overrides train.num_nodes."),
    strategy: str | None = typer.Option(None, "--strategy", help="Overrides train.strategy (ddp, fsdp, "
                                        "auto); see docs/scale.md for many nodes."),
    precision: str | None = typer.Option(None, "--precision", help="Overrides train.precision "
                                         "(32-true; bf16-mixed on GPUs)."),
) -> None:
    """Train a model family on shower files (streamed when larger than memory; on several processes and
    nodes with --devices / --num-nodes / --strategy ddp)."""
    from caloforge.config import read_yaml_mapping
    from caloforge.io.source import ShowerSource
    from caloforge.runconfig import run_config_from_dict

    from_run = Path(out) / "checkpoints" / "last.ckpt" if resume else init_from
    if config is not None:
        base, source = read_yaml_mapping(config), config
    elif from_run is not None and Path(from_run).exists():
        from caloforge.checkpoint import read_checkpoint

        base, source = read_checkpoint(from_run, weights=False).config.to_dict(), str(from_run)
    elif teacher is not None and Path(teacher).exists():  # a student starts from its teacher's config
        from caloforge.checkpoint import read_checkpoint

        base, source = read_checkpoint(teacher, weights=False).config.to_dict(), str(teacher)
    else:
        base, source = {}, None
    for assignment in settings:
        _set_key(base, assignment)
    run_config = run_config_from_dict(base, source, family)  # every key checked before any work
    if max_steps is not None:
        run_config.train.max_steps = max_steps
    if max_minutes is not None:
        run_config.train.max_minutes = max_minutes
    for key, value in (("accelerator", accelerator), ("num_nodes", num_nodes), ("strategy", strategy),
                       ("precision", precision)):
        if value is not None:
            setattr(run_config.train, key, value)
    if devices is not None:
        run_config.train.devices = int(devices) if devices.isdigit() else devices
    showers = ShowerSource.open(data, run_config.data.block_rows, geometry)
    typer.echo(f"training {run_config.family} on {len(showers)} showers of {', '.join(data)} "
               f"(geometry {showers.geometry.name})", err=True)
    from caloforge.training import train

    # With --resume, train() refuses a config whose model sections differ from the run's, before writing.
    path = train(showers, out, run_config, resume=resume, init_from=init_from, teacher=teacher)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every process runs this command; one reports
        typer.echo(f"model written to {path}")


@app.command("adapt")
def adapt_command(
    checkpoint: str | None = typer.Argument(None, help="The pre-trained model.ckpt to adapt."),
    data: list[str] = typer.Option(..., "--data", help="HDF5 showers of the new detector (repeatable; "  # noqa: B008
                                   "one detector, loaded into memory)."),
    out: str = typer.Option(..., "--out", help="Run directory of the adapted model (as for train)."),
    method: str = typer.Option("full", "--method", help="Which weights train: full (all), bias (the "
                               "biases only) or lora (low-rank updates of the linear layers)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="A model shipped in the package "
                                          "instead of CHECKPOINT (see 'caloforge models')."),
    slot: int | None = typer.Option(None, "--slot", min=0, help="Detector slot the new detector takes "
                                    "(default: the first one the model was not trained on)."),
    max_steps: int = typer.Option(2000, "--max-steps", min=1, help="Training steps of the adaptation."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", min=0.01,
                                             help="Wall-clock budget (default: none)."),
    lora_rank: int = typer.Option(8, "--lora-rank", min=1, help="Rank of each low-rank update (lora)."),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha", min=0.0, help="Scale alpha of the updates "
                                     "(they are multiplied by alpha / rank)."),
    settings: list[str] = typer.Option([], "--set",  # noqa: B008
                                       help="Override a key of the pre-trained run's config, e.g. "
                                       "--set optim.lr=3e-4 (train, optim and data keys; repeatable)."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry preset, if the file "
                                        "does not name one."),
) -> None:
    """Adapt a pre-trained model to a new detector from few showers: the detector takes a spare slot,
    and training starts from the pre-trained weights (all of them, biases only, or LoRA updates)."""
    from caloforge.adaptation import adapt
    from caloforge.adapters import ADAPT_METHODS
    from caloforge.checkpoint import read_checkpoint
    from caloforge.io.source import ShowerSource
    from caloforge.runconfig import run_config_from_dict

    if method not in ADAPT_METHODS:
        raise InputError(None, "--method", f"is '{method}'", f"one of {', '.join(ADAPT_METHODS)}")
    source = _model_source(checkpoint, pretrained)
    if source.endswith(".onnx"):
        raise InputError(source, None, "is an exported graph", "a model.ckpt (graphs cannot be trained)")
    base = read_checkpoint(source, weights=False).config.to_dict()
    for assignment in settings:
        _set_key(base, assignment)
    run_config = run_config_from_dict(base, source)
    run_config.train.max_steps = max_steps
    run_config.train.max_minutes = max_minutes
    showers = ShowerSource.open(data, run_config.data.block_rows, geometry)
    typer.echo(f"adapting {source} to {len(showers)} showers of {', '.join(data)} ({method})", err=True)
    path, claimed = adapt(source, showers, out, method, slot=slot, config=run_config, lora_rank=lora_rank,
                          lora_alpha=lora_alpha)
    typer.echo(f"adapted to detector slot {claimed} ({method}); wrote {path}")


@app.command("tune")
def tune_command(
    data: list[str] = typer.Option(..., "--data", help="HDF5 training showers (repeatable, as for train)."),  # noqa: B008
    space: str = typer.Option(..., "--space", help="YAML search: base run config, objective, pruner and the "
                              "space of dotted keys (see caloforge.tune)."),
    out: str = typer.Option(..., "--out", help="Study directory: study.db, trial-NNNN/ runs, best.yaml."),
    n_trials: int = typer.Option(..., "--n-trials", min=1, help="Finished trials the study should hold "
                                 "(all workers together); running again continues a study."),
    config: str | None = typer.Option(None, "--config", help="Base run config YAML (replaces the search "
                                      "file's base)."),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL shared by workers "
                                       "(default sqlite:///OUT/study.db; PostgreSQL/MySQL for many nodes)."),
    study_name: str = typer.Option("caloforge", "--study-name", help="Study name in the storage."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry preset, if the file "
                                        "does not name one."),
) -> None:
    """Search a family's hyperparameters with Optuna: short trainings scored on held-out showers, pruned
    early, the best run config written as OUT/best.yaml."""
    from caloforge.io.source import ShowerSource
    from caloforge.tune import load_tune_config, trial_config, tune

    search = load_tune_config(space, config)  # every key checked before any work
    showers = ShowerSource.open(data, trial_config(search, {}).data.block_rows, geometry)
    typer.echo(f"tuning {len(search.space)} parameters of {search.base.get('family', 'edm-dit')} on "
               f"{len(showers)} showers ({search.objective}, {n_trials} trials)", err=True)
    summary = tune(showers, search, out, n_trials, storage=storage, study_name=study_name,
                   report=lambda line: typer.echo(line, err=True))
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in summary["best_params"].items())
    typer.echo(f"best {search.objective} {summary['best_value']:.5g} (trial {summary['best_trial']} of "
               f"{summary['n_finished']}): {shown}")
    typer.echo(f"best run config written to {summary['best_config']} (caloforge train --config)")


def _model_source(checkpoint: str | None, pretrained: str | None) -> str:
    """The checkpoint (or .onnx) file to use: the argument, or the shipped model ``--pretrained`` names."""
    if (checkpoint is None) == (pretrained is None):
        raise InputError(None, "CHECKPOINT / --pretrained", "both given" if checkpoint else "neither given",
                         "a checkpoint file, or --pretrained NAME (see 'caloforge models')")
    if pretrained is not None:
        from caloforge.pretrained import model_path

        return str(model_path(pretrained))
    assert checkpoint is not None
    return checkpoint


@app.command("models")
def models_command() -> None:
    """List the pretrained models shipped in the package (generate/export --pretrained NAME)."""
    from caloforge.pretrained import list_models, list_samples

    models = list_models()
    if not models:
        typer.echo("no pretrained models are shipped in this installation")
    for m in models:
        typer.echo(f"{m.name}  ({m.family}) {m.description}")
        typer.echo(f"  trained on  {m.training_data}")
        typer.echo(f"  conditions  {m.conditions}")
        figures = ", ".join(f"{k} {v}" for k, v in m.metrics.items() if k != "measured")
        typer.echo(f"  measured    {figures}")
        if "measured" in m.metrics:
            typer.echo(f"              ({m.metrics['measured']})")
    for s in list_samples():
        typer.echo(f"reference sample {s.name}: {s.description}")


def sampling_options(steps: int | None, sampler: str | None, assignments: list[str]) -> dict[str, Any]:
    """The sampling options of the command line (``None``: the run's own): --steps and --sampler, and any
    family's as --option KEY=VALUE (VALUE read as YAML; the family refuses names it does not take). The
    bench scripts that take --option read it here too."""
    import yaml

    options: dict[str, Any] = {"n_steps": steps, "sampler": sampler}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise InputError(None, "--option", f"is '{assignment}'", "KEY=VALUE, e.g. top_k=50")
        try:
            options[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise InputError(None, "--option", f"has a value that is not YAML: '{text}'",
                             "a YAML scalar") from None
    return options


OPTION_HELP = ("A family's sampling option KEY=VALUE (repeatable), e.g. --option top_k=50 for vq-gpt; "
               "'caloforge families' lists each family's options.")


@app.command("generate")
def generate_command(
    checkpoint: str | None = typer.Argument(None, help="model.ckpt written by 'caloforge train', or a "
                                            ".onnx sampler graph written by 'caloforge export' (run by "
                                            "onnxruntime)."),
    n: int = typer.Option(..., "--n", min=1, help="Number of showers."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="A model shipped in the package "
                                          "instead of CHECKPOINT (see 'caloforge models')."),
    energy: str = typer.Option(..., "--energy", help="Incident energy spectrum in MeV, e.g. 50000 or "
                               "log-uniform:1000,1000000."),
    out: str = typer.Option(..., "--out", help="Output HDF5 file (written atomically)."),
    theta: str | None = typer.Option(None, "--theta", help="Polar angle spectrum in radians (default: "
                                     "normal incidence, not recorded)."),
    phi: str | None = typer.Option(None, "--phi", help="Azimuth spectrum in radians."),
    detector: int | None = typer.Option(None, "--detector", min=0, help="Detector slot of a multi-detector "
                                        "model (default: the slot it was trained or adapted on, if one)."),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Showers per model call."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the run's)."),
    sampler: str | None = typer.Option(None, "--sampler", help="heun, euler, stochastic, dpmpp_2m or "
                                       "dpmpp_2m_logsnr (few steps) (default: the run's)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the conditions and the noise."),
    file_format: str = typer.Option("calochallenge", "--format", help="calochallenge or par04."),
    strict: bool = typer.Option(False, "--strict", help="Refuse conditions outside the training range "
                                "(default: warn and generate)."),
    device: str = typer.Option("cpu", "--device", help="Where a checkpoint's model runs: cpu, cuda, "
                               "cuda:1, ... (the same seed gives the same showers up to float rounding)."),
    option: list[str] = typer.Option([], "--option", help=OPTION_HELP),  # noqa: B008
    readout: str | None = typer.Option(None, "--readout", help="Voxelise onto this geometry preset, another "
                                       "readout of the detector the model was trained on (readout-free "
                                       "families only, e.g. mdma-gan; see 'caloforge geometries')."),
) -> None:
    """Generate showers from a checkpoint (or an exported .onnx graph) alone."""
    import numpy as np

    from caloforge.generate import generate_to_file, load_generator
    from caloforge.geometry import get_geometry
    from caloforge.safeguards import check_request, energy_response
    from caloforge.spectra import parse_spectrum

    checkpoint = _model_source(checkpoint, pretrained)
    rng = np.random.default_rng(seed)
    energies = parse_spectrum(energy, "--energy", positive=True).sample(n, rng)
    thetas = None if theta is None else parse_spectrum(theta, "--theta").sample(n, rng)
    phis = None if phi is None else parse_spectrum(phi, "--phi").sample(n, rng)
    options = sampling_options(steps, sampler, option)
    generator: Any
    if checkpoint.endswith(".onnx"):
        from caloforge.onnx_runtime import load_onnx_generator

        if readout is not None:
            raise InputError(checkpoint, "--readout", "was given with an exported graph, whose voxelisation "
                             "is fixed", "a checkpoint (.ckpt)")

        # Same generation interface as ShowerGenerator, so generate_to_file writes the same format.
        generator = load_onnx_generator(checkpoint)
        ranges = generator.ranges
    else:
        import torch

        try:
            where = torch.device(device)
            torch.empty(0, device=where)  # fails now, not mid-run, where there is no such device
        except (RuntimeError, AssertionError) as error:
            raise InputError(None, "--device", f"is '{device}' ({error})",
                             "cpu, or a CUDA device this machine has") from None
        generator = load_generator(checkpoint, device=where,
                                   readout=None if readout is None else get_geometry(readout))
        generator.sampler_for(**options)  # a bad option fails before any work
        ranges = generator.content.ranges
    # Reported once, here, before the progress display starts; the generator is told not to repeat it.
    for problem in check_request(ranges, energies, thetas, phis, strict=strict, source=checkpoint):
        typer.echo(f"warning: {problem}; the model extrapolates there", err=True)
    count = generate_to_file(generator, out, energies, thetas, phis, detector, seed=seed,
                             batch_size=batch_size,
                             file_format=file_format, warn_outside=False, **options)
    typer.echo(f"wrote {count} showers to {out}")
    from caloforge.io import iter_showers

    typer.echo(energy_response(iter_showers(out), ranges).summary())


@app.command("calibrate")
def calibrate_command(
    checkpoint: str = typer.Argument(..., help="model.ckpt written by 'caloforge train'."),
    data: str = typer.Argument(..., help="Shower file the model was trained on (e.g. Geant4's): the "
                               "calibration takes its hit-cell spectrum. Never the file you score on."),
    out: str = typer.Option(..., "--out", help="Calibrated checkpoint to write (atomically); generate, "
                            "export and evaluate use it like any checkpoint."),
    n_showers: int = typer.Option(5000, "--n-showers", min=1, help="Showers generated for the fit, at "
                                  "incident energies drawn from DATA."),
    n_reference: int | None = typer.Option(None, "--n-reference", min=1, help="Showers of DATA to fit to "
                                           "(a seeded random choice; default all)."),
    energy_bins: int = typer.Option(8, "--energy-bins", min=1, help="Bins of ln E_inc."),
    quantiles: int = typer.Option(33, "--quantiles", min=2, help="Quantile knots per (layer, radial bin) "
                                  "and energy bin."),
    keep_layers: bool = typer.Option(True, "--keep-layer-energies/--free-layer-energies",
                                     help="Scale each layer back to its energy before the map."),
    map_layers: bool = typer.Option(False, "--map-layer-energies", help="Also map each layer's energy to "
                                    "DATA's quantiles of E_layer / E_inc (per layer and energy bin; needs "
                                    "--keep-layer-energies, which then restores the mapped energies)."),
    match_hit_count: bool = typer.Option(False, "--match-hit-count", help="Where the model makes more "
                                         "hits than DATA, zero its faintest ones down to DATA's count "
                                         "(off: the hit counts are the model's)."),
    candidate_threshold: float = typer.Option(1.0, "--candidate-threshold", help="With --match-hit-count: "
                                              "the model's cells down to this fraction of the readout "
                                              "threshold are candidate hits, so where it lights too few "
                                              "cells the count is brought up as well as down (edm-dit, "
                                              "edm-unet, mdma-gan; 1: only its hits)."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="Showers per model call."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampler steps (default: the run's); "
                                     "generate with the same setting the calibration was fitted for."),
    sampler: str | None = typer.Option(None, "--sampler", help="Sampler (default: the run's)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the choice of showers and energies, and the noise."),
    option: list[str] = typer.Option([], "--option", help=OPTION_HELP),  # noqa: B008
) -> None:
    """Fit a cell-spectrum calibration (quantile map of hit-cell energies per layer, radial bin and
    incident energy) of a trained model to its training data, and write the calibrated model."""
    import numpy as np

    from caloforge.calibration import CalibrationConfig
    from caloforge.checkpoint import read_checkpoint
    from caloforge.generate import calibrate_checkpoint
    from caloforge.io import read_sample
    from caloforge.progress import progress_bar

    config = CalibrationConfig(n_showers=n_showers, n_energy_bins=energy_bins, n_quantiles=quantiles,
                               preserve_layer_energies=keep_layers, match_hit_count=match_hit_count,
                               candidate_threshold=candidate_threshold, map_layer_energies=map_layers)
    options = sampling_options(steps, sampler, option)
    if read_checkpoint(checkpoint, weights=False).calibration is not None:
        typer.echo(f"{checkpoint} is calibrated already: its model is calibrated afresh and the new map "
                   "replaces the old one", err=True)
    reference = read_sample(data, n_reference, seed=seed, progress=True)
    typer.echo(f"calibrating {checkpoint} to {len(reference)} showers of {data}: generating {n_showers}",
               err=True)
    with progress_bar(n_showers, "generating", unit="shower") as bar:
        calibration = calibrate_checkpoint(checkpoint, reference, out, config, seed=seed,
                                           batch_size=batch_size, progress=bar.update, **options)
    change = (calibration.y - calibration.x).abs()  # (B, G, K) in ln E
    fitted = change.amax(dim=-1) > 0  # groups with a fitted map (the others are the identity)
    shift = change[fitted].median().item() if bool(fitted.any()) else 0.0
    layer_note = "" if calibration.layer_x is None else (
        f"; layer energies mapped ({calibration.info['layer_fitted_fraction']:.0%} of (layer, energy bin) "
        "maps fitted)")
    typer.echo(f"wrote {out}: {calibration.x.shape[1]} (layer, radial bin) groups x {energy_bins} energy "
               f"bins x {quantiles} quantiles; {calibration.info['fitted_fraction']:.0%} fitted (the rest "
               f"had under {config.min_hits} hits), median cell-energy correction of the fitted ones "
               f"x{np.exp(shift):.3f}{layer_note}; sampling {calibration.info['sampling']}")


@app.command("likelihood")
def likelihood_command(
    checkpoint: str = typer.Argument(..., help="model.ckpt of a 'flow' run (exact likelihood)."),
    files: list[str] = typer.Argument(..., help="Shower files to score (e.g. generated and Geant4)."),  # noqa: B008
    out: str | None = typer.Option(None, "--out", help="Also write every shower's log-likelihood to this "
                                   ".npz (one array per file, named file0, file1, ...)."),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Showers per model call."),
) -> None:
    """Score showers by their exact log-likelihood under a flow model (nats in the model's coordinates):
    compare files under one checkpoint, e.g. generated against Geant4 showers."""
    import numpy as np

    from caloforge.families.flow.likelihood import shower_log_likelihoods
    from caloforge.io import read_showers

    scores = {}
    for index, path in enumerate(files):
        values = shower_log_likelihoods(checkpoint, read_showers(path, dtype=np.float32), batch_size)
        scores[f"file{index}"] = values
        q05, median, q95 = np.quantile(values, [0.05, 0.5, 0.95])
        typer.echo(f"{path}: {len(values)} showers, log-likelihood mean {values.mean():.6g}, median "
                   f"{median:.6g}, 5-95 % [{q05:.6g}, {q95:.6g}]")
    if out is not None:
        from caloforge.io import atomic_output

        with atomic_output(out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **scores)  # type: ignore[arg-type]  # numpy's stub: keyword arrays
        typer.echo(f"wrote {out}")


@app.command("demo")
def demo_command(
    out: str = typer.Option("demo", "--out", help="Directory for the showers, the run and the report."),
    train: bool = typer.Option(False, "--train", help="Instead of the shipped model: simulate showers, "
                               "train a small DiT on the CPU and evaluate it (about 15 minutes on two "
                               "cores)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes, for a smoke test in under a minute."),
    seed: int = typer.Option(0, "--seed", help="Seeds the simulation, the training and the generation."),
    model: str | None = typer.Option(None, "--model", help="Score this instead of the default shipped "
                                     "model: a name from 'caloforge models' or a model.ckpt of your own (of "
                                     "the Geant4 SiW readout; the shipped sample is held out of "
                                     "bench/fidelity.py's seed-0 split, so a model trained on another split "
                                     "may have seen it)."),
) -> None:
    """Generate with the pretrained model shipped in the package, compare it with shipped Geant4 showers and
    write an HTML report (a few minutes); --train runs the whole pipeline on the embedded simulator."""
    import dataclasses
    import time

    from caloforge.demo import PRETRAINED_DEMO, run_demo, run_pretrained_demo

    start = time.perf_counter()

    def stage(text: str) -> None:
        typer.echo(f"[{(time.perf_counter() - start) / 60:4.1f} min] {text}", err=True)

    if train:
        result = run_demo(out, quick=quick, seed=seed, stage=stage)
    else:
        chosen = PRETRAINED_DEMO if model is None else dataclasses.replace(PRETRAINED_DEMO, model=model)
        small = dataclasses.replace(chosen, n_eval=200, classifier_epochs=1, plots=False,
                                    n_steps=4 if model is None else None)
        result = run_pretrained_demo(out, seed=seed, stage=stage, config=small if quick else chosen)
    numbers = ", ".join(f"{k} {v:.3g}" for k, v in result.headline.items() if v is not None)
    typer.echo(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min: {numbers}")
    typer.echo(f"model: {result.model}")
    typer.echo(f"report: {result.report}")


# ---- validation: metrics, plots and the HTML report (caloforge.evaluate) -------------------------------
def _parse_range(text: str | None, option: str, angle: bool = False) -> tuple[float, float] | None:
    """'MIN,MAX' -> (min, max); angles in radians, or in degrees with a 'deg' suffix ('85deg,95deg')."""
    if text is None:
        return None
    import math

    from caloforge.errors import InputError

    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        values = [math.radians(float(p[:-3])) if angle and p.endswith("deg") else float(p) for p in parts]
    except ValueError:
        unit = "radians, or degrees as 85deg,95deg" if angle else "MeV"
        raise InputError(None, option, f"is '{text}'", f"MIN,MAX in {unit}") from None
    if values[0] > values[1]:
        raise InputError(None, option, f"is '{text}' (min > max)", "MIN,MAX with MIN <= MAX")
    return values[0], values[1]


@app.command("evaluate")
def evaluate_command(
    generated: str = typer.Argument(..., help="Generated showers (HDF5, CaloChallenge or Par04 layout)."),
    reference: str = typer.Argument(..., help="Reference showers of the same geometry."),
    out: str = typer.Option(..., "--out", help="Report directory: index.html, metrics.json, plots (written "
                            "atomically; an existing one is replaced once the new one is complete)."),
    classifier: str = typer.Option("low,high", "--classifier", help="Classifier tests: low, high, "
                                   "low,high or none."),
    official: bool = typer.Option(False, "--official-classifier", help="The CaloChallenge network and "
                                  "training (3 x 2048, 50 epochs, Adam 2e-4; needs a GPU to be quick) "
                                  "instead of the CPU default (3 x 256, 15 epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Classifier epochs (overrides)."),
    energy_range: str | None = typer.Option(None, "--energy-range", help="Keep showers with incident "
                                            "energy in MIN,MAX MeV, e.g. 40000,60000."),
    theta_range: str | None = typer.Option(None, "--theta-range", help="Keep theta in MIN,MAX radians "
                                           "(or 85deg,95deg)."),
    phi_range: str | None = typer.Option(None, "--phi-range", help="Keep phi in MIN,MAX radians "
                                         "(or -5deg,5deg)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the classifier splits and FPD/KPD resampling "
                             "(written to metrics.json)."),
    max_showers: int | None = typer.Option(None, "--max-showers", min=1, help="Use at most N selected "
                                           "showers of each file."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw the plots."),
    config: str | None = typer.Option(None, "--config", help="YAML file with EvaluateConfig keys "
                                      "(command-line options given explicitly take precedence)."),
    likelihood: str | None = typer.Option(None, "--likelihood", help="A 'flow' model.ckpt: also score "
                                          "every shower of both files by its exact log-likelihood under it "
                                          "and compare the two distributions in the report."),
) -> None:
    """Compare generated showers with reference showers: CaloChallenge metrics, plots, HTML report."""
    import dataclasses
    import time

    from caloforge.errors import InputError
    from caloforge.evaluate import OFFICIAL_CLASSIFIER, EvaluateConfig, evaluate_files

    settings = EvaluateConfig()
    if config is not None:
        from caloforge.config import load_yaml
        settings = load_yaml(EvaluateConfig, config)
    kinds = tuple(k.strip() for k in classifier.split(",") if k.strip() and k.strip() != "none")
    if any(k not in ("low", "high") for k in kinds):
        raise InputError(None, "--classifier", f"is '{classifier}'", "low, high, low,high or none")
    network = OFFICIAL_CLASSIFIER if official else settings.classifier
    if epochs is not None:
        network = dataclasses.replace(network, epochs=epochs)
    settings = dataclasses.replace(
        settings, classifiers=kinds, classifier=network, seed=seed, plots=plots,
        max_showers=max_showers if max_showers is not None else settings.max_showers,
        energy_range=_parse_range(energy_range, "--energy-range") or settings.energy_range,
        theta_range=_parse_range(theta_range, "--theta-range", angle=True) or settings.theta_range,
        phi_range=_parse_range(phi_range, "--phi-range", angle=True) or settings.phi_range,
        likelihood=likelihood if likelihood is not None else settings.likelihood,
    )
    start = time.perf_counter()
    metrics = evaluate_files(generated, reference, out, settings)
    typer.echo(f"evaluated {metrics['samples']['generated']['n_selected']} generated vs "
               f"{metrics['samples']['reference']['n_selected']} reference showers in "
               f"{time.perf_counter() - start:.0f} s (seed {seed})")
    for kind, result in metrics["classifier"].items():
        typer.echo(f"  classifier {kind:4s}  AUC {result['auc']:.4f}  JSD {result['jsd']:.4f}")
    typer.echo(f"  FPD x1e3 {metrics['fpd_x1e3']['value']:.3f} +- {metrics['fpd_x1e3']['error']:.3f}   "
               f"KPD x1e3 {metrics['kpd_x1e3']['value']:.4f} +- {metrics['kpd_x1e3']['error']:.4f}")
    worst = max(metrics["separation_power"]["summary"].items(), key=lambda kv: kv[1]["mean"], default=None)
    if worst is not None:
        typer.echo(f"  largest mean separation power: {worst[0]} {worst[1]['mean']:.4f}")
    if "likelihood" in metrics:
        value = metrics["likelihood"]
        typer.echo(f"  log-likelihood under the flow: median generated {value['generated']['median']:.6g}, "
                   f"reference {value['reference']['median']:.6g} nats; separation power "
                   f"{value['separation_power']:.4f}")
    typer.echo(f"wrote {out}/index.html and {out}/metrics.json")


# ---- deployment: ONNX export (caloforge.export; the graphs are documented in docs/onnx.md) -------------
@app.command("export")
def export_command(
    checkpoint: str | None = typer.Argument(None, help="model.ckpt written by 'caloforge train'."),
    out: str = typer.Option(..., "--out", help="ONNX file to write (atomically)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="A model shipped in the package "
                                          "instead of CHECKPOINT (see 'caloforge models')."),
    target: str = typer.Option("caloforge", "--target", help="caloforge: the sampler graph at OUT and the "
                               "family's extra graphs (edm-dit: the denoiser) at <OUT stem>.<name>.onnx; "
                               "par04: the Geant4 Par04 (CaloDiT-2 contract) graph at OUT."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Sampler steps unrolled in the graph "
                                     "(default: the run's)."),
    sampler: str | None = typer.Option(None, "--sampler", help="heun, euler, stochastic, dpmpp_2m or "
                                       "dpmpp_2m_logsnr (few steps; default: the run's)."),
    extras: bool = typer.Option(True, "--extras/--no-extras", help="Also write the family's extra graphs "
                                "(target caloforge)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run the sampler graph with onnxruntime "
                               "and compare with PyTorch on the same noise (target caloforge)."),
    option: list[str] = typer.Option([], "--option", help=OPTION_HELP),  # noqa: B008
) -> None:
    """Export a checkpoint to ONNX for onnxruntime (Python, C++, Geant4 Par04)."""
    from caloforge.export import export_checkpoint
    from caloforge.onnx_runtime import check_export

    checkpoint = _model_source(checkpoint, pretrained)
    written = export_checkpoint(checkpoint, out, target=target, extras=extras,
                                **sampling_options(steps, sampler, option))
    for path in written:
        typer.echo(f"wrote {path}")
    if check and target == "caloforge":
        difference = check_export(checkpoint, written[0])
        typer.echo(f"onnxruntime vs PyTorch on the same noise: largest difference {difference:.3g} of the "
                   "largest deposit")


def main() -> None:
    """Console-script entry point. Large blocks come from the C heap (``allocator.heap_for_large_tensors``:
    generation about a third faster on a CPU)."""
    heap_for_large_tensors()
    try:
        app()
    except CaloforgeError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
