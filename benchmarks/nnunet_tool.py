"""nnU-Net v2 as the benchmarks' reference tool: its commands run as separate programs from its own
venv (``benchmarks/setup_nnunet.sh``); no nnU-Net code is imported into autoseg.

Used by ``bench_predict.py`` (its predictor on the same case) and ``race.py`` (training budgets).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-nnunet"
PYTHON = VENV / "bin" / "python"
DATASET = "Dataset008_HepaticVessel"
CONFIG = "3d_fullres"
TRAINER_DIR = f"nnUNetTrainer__nnUNetPlans__{CONFIG}"


def require_venv() -> None:
    if not PYTHON.is_file():
        raise SystemExit(f"{VENV} is missing: run `bash benchmarks/setup_nnunet.sh` first")


def env(root: Path, threads: int | None = None) -> dict[str, str]:
    """nnU-Net's three folders under ``root``; ``threads`` caps its torch/BLAS threads."""
    out = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "nnUNet_compile": "f"}
    if threads:
        out.update(OMP_NUM_THREADS=str(threads), nnUNet_n_proc_DA="1")
    return out


def command(name: str) -> str:
    return str(VENV / "bin" / name)


def plan(root: Path, processes: int = 1) -> Path:
    """Fingerprint and plan the raw dataset under ``root`` (no preprocessing); returns its plans file."""
    e = env(root)
    subprocess.run([command("nnUNetv2_extract_fingerprint"), "-d", "8", "-np", str(processes)], env=e,
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([command("nnUNetv2_plan_experiment"), "-d", "8"], env=e, check=True,
                   stdout=subprocess.DEVNULL)
    return root / "preprocessed" / DATASET / "nnUNetPlans.json"


def configuration(plans_file: Path) -> dict:
    """The 3d_fullres configuration of a plans file: patch, batch, features, spacing."""
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"][CONFIG]
    arch = cfg["architecture"]["arch_kwargs"]
    return {"patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"], "spacing": cfg["spacing"],
            "network": cfg["architecture"]["network_class_name"].rsplit(".", 1)[-1],
            "features_per_stage": arch["features_per_stage"], "n_stages": arch["n_stages"]}


_RANDOM_MODEL = r"""
import json, sys, shutil, torch
from pathlib import Path
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
plans_file, dataset_json, out, folds = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
plans = json.loads(plans_file.read_text()); ds = json.loads(dataset_json.read_text())
pm = PlansManager(plans); cm = pm.get_configuration("3d_fullres")
out.mkdir(parents=True, exist_ok=True)
shutil.copy(plans_file, out / "plans.json"); shutil.copy(dataset_json, out / "dataset.json")
for f in folds:
    torch.manual_seed(int(f))
    net = nnUNetTrainer.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, ds),
                                                   pm.get_label_manager(ds).num_segmentation_heads, False)
    (out / f"fold_{f}").mkdir(exist_ok=True)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               out / f"fold_{f}" / "checkpoint_final.pth")
print(sum(p.numel() for p in net.parameters()))
"""


def write_random_model(root: Path, folds: list[int]) -> tuple[Path, int]:
    """An nnU-Net results folder whose folds hold randomly initialised networks of its own plan
    (prediction time and memory do not depend on the weights); returns it and the parameter count."""
    out = root / "results" / DATASET / TRAINER_DIR
    proc = subprocess.run([str(PYTHON), "-c", _RANDOM_MODEL, str(root / "preprocessed" / DATASET / "nnUNetPlans.json"),
                           str(root / "raw" / DATASET / "dataset.json"), str(out), *map(str, folds)],
                          env=env(root), check=True, capture_output=True, text=True)
    return out, int(proc.stdout.split()[-1])


def predict_command(inputs: Path, output: Path, folds: list[int], tta: bool = False) -> list[str]:
    cmd = [command("nnUNetv2_predict"), "-i", str(inputs), "-o", str(output), "-d", "8", "-c", CONFIG,
           "-f", *map(str, folds), "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    return cmd if tta else cmd + ["--disable_tta"]
