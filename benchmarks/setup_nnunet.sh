#!/usr/bin/env bash
# Create benchmarks/.venv-nnunet: a separate virtual environment holding nnU-Net v2, the reference
# tool that benchmarks/bench_preprocess.py runs as a separate program (no nnU-Net code is imported
# into autoseg). Usage, from the repository root or anywhere:
#
#     bash benchmarks/setup_nnunet.sh            # PYTHON=python3.11 VENV=... to override
#
# What this does and why (worked out on the project's 2-core CPU machine):
#
# 1. torch first, pinned to a CPU build. `pip install nnunetv2` resolves
#    dynamic-network-architectures -> timm -> torchvision, and torchvision pulls a ~5 GB CUDA build of
#    torch 2.14.1. torch==2.13.0 is found as a local CPU wheel on the project's machines (pip's
#    find-links); elsewhere set TORCH_SPEC / TORCH_PIP_ARGS to a CPU wheel of your choice.
# 2. nnunetv2 and dynamic-network-architectures with --no-deps, so neither timm nor torchvision is
#    installed. nnUNetv2_plan_and_preprocess never imports timm (it is only used by the Primus
#    transformer architectures), and the planners only import dynamic_network_architectures' plain
#    and residual U-Nets.
# 3. Only the runtime dependencies that plan_and_preprocess imports, found by running it on a tiny
#    dataset and adding what failed to import: acvl-utils, batchgenerators(v2), SimpleITK, blosc2,
#    numpy, scipy, scikit-image, scikit-learn, pandas, tqdm, einops and nibabel (imported by nnU-Net's
#    reader/writer registry), plus matplotlib and seaborn, which nnU-Net's trainer module imports at
#    the top (its training plots) and so do training and prediction (the predictor finds the
#    trainer class by importing it). nnunetv2's other declared dependencies (graphviz, imagecodecs,
#    yacs, requests) are for architecture drawing, TIFF codecs and model download, so they are left
#    out; `pip check` therefore reports them missing: that is expected.
#
# The versions below are those the published figures in docs/benchmarks.md were measured with.
# numpy/scipy/SimpleITK/blosc2 match autoseg's own .venv so that both tools run on the same kernels.
# `pip index versions nnunetv2` listed 2.8.1 as the newest release when this was written.
# Result: about 1.7 GB (torch CPU ~0.9 GB), installed in about a minute.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$HERE/.venv-nnunet}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
TORCH_PIP_ARGS="${TORCH_PIP_ARGS:-}"
NNUNET_SPEC="${NNUNET_SPEC:-nnunetv2==2.8.1}"
DNA_SPEC="${DNA_SPEC:-dynamic-network-architectures==0.4.4}"
RUNTIME_DEPS=(
    "acvl-utils==0.2.6"
    "batchgenerators==0.25.5"
    "batchgeneratorsv2==0.3.6"
    "SimpleITK==2.5.7"
    "blosc2==4.14.1"
    "numpy==2.4.6"
    "scipy==1.17.1"
    "scikit-image==0.26.0"
    "scikit-learn==1.9.1"
    "pandas==3.1.1"
    "tqdm"
    "einops"
    "nibabel==5.4.2"
    "matplotlib==3.11.2"
    "seaborn==0.13.2"
)

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
# shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of words on purpose
"${PIP[@]}" $TORCH_PIP_ARGS "$TORCH_SPEC"
"${PIP[@]}" --no-deps "$NNUNET_SPEC" "$DNA_SPEC"
"${PIP[@]}" "$TORCH_SPEC" "${RUNTIME_DEPS[@]}"

# Smoke test: the entry point loads and so do the modules plan_and_preprocess imports lazily.
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import nnunetv2.experiment_planning.plan_and_preprocess_api  # noqa: F401
import nnunetv2.experiment_planning.experiment_planners.default_experiment_planner  # noqa: F401
import nnunetv2.preprocessing.preprocessors.default_preprocessor  # noqa: F401
import nnunetv2.training.nnUNetTrainer.nnUNetTrainer  # noqa: F401  (training and prediction)
import nnunetv2.inference.predict_from_raw_data  # noqa: F401
import torch
for name in ("timm", "torchvision"):
    try:
        md.version(name)
        raise SystemExit(f"{name} got installed: the CUDA torch may have come with it")
    except md.PackageNotFoundError:
        pass
print(f"nnunetv2 {md.version('nnunetv2')} with torch {torch.__version__} ready")
EOF
"$VENV/bin/nnUNetv2_plan_and_preprocess" -h >/dev/null
echo "nnU-Net v2 installed in $VENV"
