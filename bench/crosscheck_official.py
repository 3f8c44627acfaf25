"""Developer script: caloforge's metrics next to the official CaloChallenge evaluation on the same files.

Nothing is fetched: give a checkout of the public CaloChallenge/homepage repository, e.g.
``git -C /work/.mirror/CaloChallenge+homepage/repo worktree add /tmp/cc-official HEAD`` (or a git clone).
The official code is run, never copied:

* separation powers: the official ``code/evaluate.py -m hist-chi -d 2`` in a child process (matplotlib's
  LaTeX text rendering is switched off by intercepting ``plt.rc('text', ...)``: no LaTeX is needed for
  numbers); its ``histogram_chi2_2.txt`` is parsed.
* classifier tests: the official functions of ``evaluate.py`` (``prepare_low/high_data_for_classifier``,
  ``ttv_split``, ``DNN``, ``train_and_evaluate_cls``, ``load_classifier``, ``evaluate_cls`` with isotonic
  calibration) driven from a child process, because the script's own ``--dataset 2`` split needs exactly
  100k showers per file; the split is by fractions 0.6/0.2/0.2 instead, and the network size, epochs and
  learning rate are those given here for both sides.
* FPD/KPD: jetnet 0.2.5's ``fpd``/``kpd`` as ``evaluate.py`` calls them, on the official high-level
  feature arrays, with ``--jetnet-python`` (a Python with numpy<2, scipy, numba) and ``--jetnet-dir``
  (the unpacked jetnet 0.2.5 wheel); jetnet's module is loaded with stand-ins for its unused imports
  (torch, energyflow, its datasets), so that only ``jetnet/evaluation/gen_metrics.py`` runs.

Usage:
    python bench/crosscheck_official.py --official /tmp/cc-official --generated G.h5 --reference R.h5 \
        [--n 20000] [--jetnet-python /tmp/jn/bin/python --jetnet-dir /tmp/jetnet/x]

Prints the side-by-side numbers and writes bench/results/crosscheck_official.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MARK = "CROSSCHECK-RESULT "

# Runs the official evaluate.py as a script; only matplotlib's LaTeX switch is intercepted.
_RUN_SCRIPT = """
import os, runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
_rc = plt.rc
def _no_latex(group, **kwargs):
    if str(group).startswith("text"):
        return None
    return _rc(group, **kwargs)
plt.rc = _no_latex
code = sys.argv[1]
sys.argv = ["evaluate.py", *sys.argv[2:]]
sys.path.insert(0, code)
os.chdir(code)
runpy.run_path(os.path.join(code, "evaluate.py"), run_name="__main__")
"""

# Drives the official classifier functions with a fraction split (see the module doc).
_CLASSIFIER_SCRIPT = """
import argparse, json, os, runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.rc = lambda *a, **k: None
import numpy as np, h5py, torch
code, generated, reference, work, epochs, hidden, layers, lr, seed, modes = sys.argv[1:11]
sys.path.insert(0, code)
os.chdir(code)
ev = runpy.run_path(os.path.join(code, "evaluate.py"), run_name="cc_official")
min_energy = 0.5e-3 / 0.033
def features(path):
    f = h5py.File(path, "r")
    hlf = ev["HLF"].HighLevelFeatures("electron", filename="binning_dataset_2.xml")
    shower, energy = ev["extract_shower_and_energy"](f, "file")
    hlf.CalculateFeatures(np.where(shower < min_energy, 0.0, shower))
    hlf.Einc = energy
    return f, hlf
src_file, src_hlf = features(generated)
ref_file, ref_hlf = features(reference)
high_src = ev["prepare_high_data_for_classifier"](src_file, src_hlf, 0., threshold=min_energy)
high_ref = ev["prepare_high_data_for_classifier"](ref_file, ref_hlf, 1., threshold=min_energy)
np.save(os.path.join(work, "high_generated.npy"), high_src[:, :-1])
np.save(os.path.join(work, "high_reference.npy"), high_ref[:, :-1])
out = {}
for mode in [m for m in modes.split(",") if m]:
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    if mode == "cls-low":
        a = ev["prepare_low_data_for_classifier"](src_file, src_hlf, 0., normed=False, threshold=min_energy)
        b = ev["prepare_low_data_for_classifier"](ref_file, ref_hlf, 1., normed=False, threshold=min_energy)
    else:
        a, b = high_src.copy(), high_ref.copy()
    train, test, val = ev["ttv_split"](a, b)
    args = argparse.Namespace(cls_n_epochs=int(epochs), mode=mode, dataset="2", output_dir=work,
                              save_mem=False, device=torch.device("cpu"))
    model = ev["DNN"](num_layer=int(layers) - 1, num_hidden=int(hidden), input_dim=train.shape[1] - 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=float(lr))
    loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x)), batch_size=1000,
                                           shuffle=(i == 0)) for i, x in enumerate((train, test, val))]
    ev["train_and_evaluate_cls"](model, loaders[0], loaders[1], optimiser, args)
    model = ev["load_classifier"](model, args)
    with torch.no_grad():
        acc, auc, jsd = ev["evaluate_cls"](model, loaders[2], args, final_eval=True,
                                           calibration_data=loaders[1])
    out[mode] = {"auc": float(auc), "jsd": float(jsd), "accuracy": float(acc), "best_epoch": args.best_epoch,
                 "n_train": len(train), "n_validation": len(val)}
print("CROSSCHECK-RESULT " + json.dumps(out), flush=True)
"""

# jetnet 0.2.5 fpd/kpd, loaded from the unpacked wheel with stand-ins for imports these two never use.
_JETNET_SCRIPT = """
import importlib.util, json, sys, types
import numpy as np
jetnet_dir, arrays = sys.argv[1], sys.argv[2]
torch = types.ModuleType("torch")
torch.Tensor = type("Tensor", (), {})
data = types.ModuleType("torch.utils.data"); data.DataLoader = object
utils = types.ModuleType("torch.utils"); utils.data = data
torch.utils = utils
ef = types.ModuleType("energyflow"); emd = types.ModuleType("energyflow.emd"); emd.emds = None
jn = types.ModuleType("jetnet"); jn.__path__ = []
jn_utils = types.ModuleType("jetnet.utils")
jn_data = types.ModuleType("jetnet.datasets"); jn_data.JetNet = object
jn.utils, jn.datasets = jn_utils, jn_data
sys.modules.update({"torch": torch, "torch.utils": utils, "torch.utils.data": data, "energyflow": ef,
                    "energyflow.emd": emd, "jetnet": jn, "jetnet.utils": jn_utils,
                    "jetnet.datasets": jn_data})
spec = importlib.util.spec_from_file_location("gen_metrics", jetnet_dir + "/jetnet/evaluation/gen_metrics.py")
gm = importlib.util.module_from_spec(spec)
sys.modules["gen_metrics"] = gm
spec.loader.exec_module(gm)
ref = np.load(arrays + "/high_reference.npy"); gen = np.load(arrays + "/high_generated.npy")
fpd, fpd_err = gm.fpd(ref, gen, min_samples=10000)
kpd, kpd_err = gm.kpd(ref, gen, batch_size=10000)
print("CROSSCHECK-RESULT " + json.dumps({"fpd_x1e3": [fpd * 1e3, fpd_err * 1e3],
                                          "kpd_x1e3": [kpd * 1e3, kpd_err * 1e3]}), flush=True)
"""


def _run(command: list[str], log: Path) -> dict[str, Any] | None:
    start = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=handle, text=True)
    log.write_text(log.read_text() + done.stdout)
    print(f"  {Path(command[1]).name if command[1].endswith('.py') else 'child'}: exit {done.returncode} "
          f"after {time.perf_counter() - start:.0f} s (log {log})", file=sys.stderr)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]))
    return None


def _official_separation(text: str) -> dict[str, float]:
    """Parse histogram_chi2_2.txt ("<name>: \\n<value>") into caloforge's histogram names."""
    names = {"Etot / Einc": "etot_einc", "Voxel distribution": "voxel_energy"}
    per_layer = {"E layer": "e_layer", "EC Eta layer": "centre_x", "EC Phi layer": "centre_y",
                 "Width Eta layer": "width_x", "Width Phi layer": "width_y"}
    result = {}
    for label, value in re.findall(r"^(.+?): \n(\S+)", text, flags=re.M):
        label = label.strip()
        match = re.fullmatch(r"(.+) (\d+)", label)
        if label in names:
            result[names[label]] = float(value)
        elif match and match.group(1) in per_layer:
            result[f"{per_layer[match.group(1)]}_{match.group(2)}"] = float(value)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of CaloChallenge/homepage")
    parser.add_argument("--generated", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--n", type=int, default=20_000, help="first N showers of each file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3, help="hidden layers (official: 3)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every voxel energy by this when "
                        "writing the compared files, e.g. 1 / sampling fraction so that raw visible energies "
                        "look like the CaloChallenge's (E_tot / E_inc ~ 1, inside the official [0.5, 1.5])")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--jetnet-python", type=Path, help="Python with numpy<2, scipy and numba")
    parser.add_argument("--jetnet-dir", type=Path, help="unpacked jetnet 0.2.5 wheel (holds jetnet/)")
    parser.add_argument("--work", type=Path, default=RESULTS / "crosscheck_work")
    parser.add_argument("--json", type=Path, default=RESULTS / "crosscheck_official.json")
    args = parser.parse_args()
    code = (args.official / "code").resolve()
    if not (code / "evaluate.py").exists():
        parser.error(f"{code}/evaluate.py not found: --official must be a checkout of CaloChallenge/homepage")

    from caloforge.evaluate import ClassifierConfig, EvaluateConfig
    from caloforge.evaluate.pipeline import collect, compute_metrics, low_level_capacity
    from caloforge.io import iter_showers, read_showers, write_showers

    work = args.work.resolve()
    (work / "official_hist").mkdir(parents=True, exist_ok=True)
    files = {}
    for role, path in (("generated", args.generated), ("reference", args.reference)):
        files[role] = work / f"{role}_{args.n}_x{args.scale:g}.h5"
        if not files[role].exists():
            part = read_showers(path)[: args.n]
            scaled = dataclasses.replace(part, showers=part.showers * np.float32(args.scale))
            write_showers(files[role], scaled)

    # ---- caloforge ----------------------------------------------------------------------------------
    network = ClassifierConfig(n_hidden=args.hidden, n_layers=args.layers, epochs=args.epochs,
                               learning_rate=args.lr, standardise=False)
    config = EvaluateConfig(classifier=network, seed=args.seed,
                            classifiers=() if args.skip_classifier else ("low", "high"))
    start = time.perf_counter()
    samples = [collect(iter_showers(files[r]), str(files[r]), config, low_level_capacity(6480, config))
               for r in ("generated", "reference")]
    ours = compute_metrics(samples[0], samples[1], config)
    print(f"caloforge: {time.perf_counter() - start:.0f} s", file=sys.stderr)

    # ---- official -----------------------------------------------------------------------------------
    hist_dir = work / "official_hist"
    (hist_dir / "histogram_chi2_2.txt").unlink(missing_ok=True)
    _run([sys.executable, "-c", _RUN_SCRIPT, str(code), "-i", str(files["generated"]), "-r",
          str(files["reference"]), "-m", "hist-chi", "-d", "2", "--output_dir", str(hist_dir)],
         work / "official_hist.log")
    chi2 = hist_dir / "histogram_chi2_2.txt"
    official_sep = _official_separation(chi2.read_text()) if chi2.exists() else {}
    # Also writes the official high-level feature arrays that jetnet's FPD/KPD read below.
    modes = "" if args.skip_classifier else "cls-low,cls-high"
    official_cls = _run([sys.executable, "-c", _CLASSIFIER_SCRIPT, str(code), str(files["generated"]),
                         str(files["reference"]), str(work), str(args.epochs), str(args.hidden),
                         str(args.layers), str(args.lr), str(args.seed), modes],
                        work / "official_classifier.log")
    official_fpd = None
    if args.jetnet_python and args.jetnet_dir:
        official_fpd = _run([str(args.jetnet_python), "-c", _JETNET_SCRIPT, str(args.jetnet_dir.resolve()),
                             str(work)], work / "jetnet.log")

    # ---- side by side -------------------------------------------------------------------------------
    ours_sep = ours["separation_power"]["histograms"]
    rows = []
    for kind in ("etot_einc", "e_layer", "centre_x", "centre_y", "width_x", "width_y", "voxel_energy"):
        names = [n for n in official_sep if n == kind or n.startswith(kind + "_")]
        if not names:
            continue
        a = np.array([official_sep[n] for n in names])
        b = np.array([ours_sep.get(n) if ours_sep.get(n) is not None else math.nan for n in names])
        rows.append({"metric": f"separation power {kind} (mean of {len(names)})",
                     "official": float(a.mean()), "caloforge": float(np.nanmean(b)),
                     "max_abs_difference": float(np.nanmax(np.abs(a - b)))})
    for kind, mode in (("low", "cls-low"), ("high", "cls-high")):
        if official_cls and mode in official_cls and kind in ours["classifier"]:
            for key in ("auc", "jsd"):
                rows.append({"metric": f"classifier {kind} {key.upper()}",
                             "official": official_cls[mode][key], "caloforge": ours["classifier"][kind][key]})
    if official_fpd:
        for key in ("fpd_x1e3", "kpd_x1e3"):
            rows.append({"metric": key.replace("_x1e3", " x1e3").upper(), "official": official_fpd[key][0],
                         "official_error": official_fpd[key][1], "caloforge": ours[key]["value"],
                         "caloforge_error": ours[key]["error"]})
    print(f"\n{'metric':44s} {'official':>14s} {'caloforge':>14s}  notes")
    for row in rows:
        note = ""
        if "max_abs_difference" in row:
            note = f"max |diff| per histogram {row['max_abs_difference']:.2e}"
        if "official_error" in row:
            note = f"errors {row['official_error']:.3g} / {row['caloforge_error']:.3g}"
        print(f"{row['metric']:44s} {row['official']:14.6g} {row['caloforge']:14.6g}  {note}")
    result = {
        "n_showers_each": args.n, "voxel_scale": args.scale,
        "files": {"generated": str(args.generated), "reference": str(args.reference)},
        "classifier_settings": {"hidden": args.hidden, "layers": args.layers, "epochs": args.epochs,
                                "lr": args.lr, "batch_size": 1000, "split": [0.6, 0.2, 0.2],
                                "seed": args.seed},
        "rows": rows, "official_separation": official_sep, "caloforge_separation": ours_sep,
        "official_classifier": official_cls, "official_fpd_kpd": official_fpd,
        "caloforge": {k: ours[k] for k in ("classifier", "fpd_x1e3", "kpd_x1e3")},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
