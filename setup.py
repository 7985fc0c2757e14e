"""autoseg: a self-configuring segmentation pipeline for liver, hepatic vessels and liver tumours in CT.

The stage folders at the repository root are installed inside the ``autoseg`` namespace
(``planners/`` becomes ``autoseg.planners`` and so on) so that no generic top-level module names
such as ``training`` or ``inference`` are installed.
"""
from setuptools import setup

STAGES = ("planners", "preprocessing", "training", "inference")

setup(
    name="autoseg",
    version="0.1.0",
    description="Self-configuring liver, vessel and tumour segmentation for CT (nnU-Net style).",
    python_requires=">=3.10",
    packages=["autoseg", "autoseg.networks", "autoseg.serve"] + [f"autoseg.{s}" for s in STAGES],
    package_dir={"autoseg": "autoseg", **{f"autoseg.{s}": s for s in STAGES}},
    package_data={"autoseg.serve": ["static/*"]},
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "SimpleITK>=2.3",
        "batchgenerators>=0.25",
        "acvl-utils>=0.2.6",
        "connected-components-3d>=3.12",
        "dynamic-network-architectures>=0.4",
        "einops",
        "tqdm",
        "matplotlib",
        "pillow>=9",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
    ],
    extras_require={
        "distributed": ["ray>=2.9"],
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        "test": ["pytest>=7", "medpy==0.5.2", "httpx2>=2.0", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["autoseg=autoseg.cli:main"]},
)
