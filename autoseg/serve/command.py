"""The ``autoseg serve`` sub-command: its arguments, and turning them into a :class:`ServeConfig`.

Kept apart from :mod:`autoseg.serve.app` so that building the CLI parser does not import FastAPI.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from autoseg.errors import ConfigurationError
from autoseg.precision import DEVICES
from autoseg.settings import Settings

EPILOG_SERVE = """examples:
  autoseg serve -d Task08                        # http://127.0.0.1:8000/, this machine only
  autoseg serve -d Task03 --port 8080 -f 0 1     # two folds of the Task03 model
  autoseg serve -m task08_arunet.zip --workdir /data/autoseg_serve
  autoseg serve -d Task08 --roi-model Task03     # the one liver/vessel/tumour map of a linked run
  autoseg serve -d Task08 --host 0.0.0.0         # reachable from the network: there is no login
"""


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a web page to upload a CT and browse its segmentation",
                       description="Start a web server with a page to upload a CT (NIfTI, NRRD, MHA or a zip "
                                   "of a DICOM series), follow the prediction and browse the result: three "
                                   "planes with the labels over the CT, volumes, tumour sizes, downloads. "
                                   "Results stay in --workdir until deleted on the page. See docs/viewer.md.",
                       epilog=EPILOG_SERVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("-d", "--dataset", help="serve the model trained on this dataset")
    src.add_argument("-m", "--model", type=Path,
                     help="model folder, exported archive (.zip), ONNX export or built-in model (default without "
                          "-d: the built-in 'synthetic' liver, vessel and tumour model, docs/synthetic_model.md)")
    p.add_argument("--network", default=None, help="with -d: which trained network (default: as predict)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=None, help="folds to use (default: all present)")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default: CUDA when there is one, else the CPU), cpu or cuda")
    p.add_argument("--roi-model", default=None, metavar="DATASET_OR_PATH",
                   help="a linked run, as predict --roi-model: this model (e.g. Task03, the liver) finds the "
                        "organ, the served model predicts inside it, and the viewer shows one map of the organ "
                        "and the served model's classes (liver, vessel, tumour)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every "
                        "network interface, without any login)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for uploads and results (default: $AUTOSEG_RESULTS/<dataset>/serve)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-upload-mb", type=float, default=1024, help="largest upload (default: 1024)")
    limits.add_argument("--max-decompressed-mb", type=float, default=2048,
                        help="largest .gz/.zip contents and voxel data (default: 2048)")
    limits.add_argument("--max-queue", type=int, default=16, help="uploads waiting at most (default: 16)")
    limits.add_argument("--keep-jobs", type=int, default=100,
                        help="finished results kept; the oldest beyond this are deleted (default: 100; 0: no limit)")
    limits.add_argument("--job-ttl-hours", type=float, default=168,
                        help="finished results older than this are deleted (default: 168, one week; 0: never)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.builtin import default_edge_context, resolve_model
    from autoseg.inference.ensembles import member_plans
    from autoseg.inference.model import open_model, trained_model_folder
    from autoseg.serve.app import ServeConfig, serve
    from autoseg.serve.jobs import Retention
    from autoseg.serve.security import Limits
    from autoseg.cpu_share import configure_threads

    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port {args.port} is not a port number", fix="use a port in 1..65535")
    if min(args.max_upload_mb, args.max_decompressed_mb, args.max_queue) <= 0:
        raise ConfigurationError("the limits must be positive", fix="pass sizes in MB above 0 and a queue of 1 or more")
    if args.keep_jobs < 0 or args.job_ttl_hours < 0:
        raise ConfigurationError("--keep-jobs and --job-ttl-hours cannot be negative",
                                 fix="pass 0 to keep every result without that limit")
    configure_threads(args.device)
    folds = tuple(args.folds) if args.folds else None
    named = args.model or Path("synthetic")  # without -d: the built-in model unless -m names another
    chosen = (resolve_model(named, settings) if not args.dataset
              else trained_model_folder(args.dataset, args.network, settings))
    model = open_model(chosen, folds, args.checkpoint)
    roi = None
    if args.roi_model:  # as predict: a path that exists, else a dataset's trained model
        roi_path = Path(args.roi_model)
        roi = open_model(roi_path if roi_path.exists() else trained_model_folder(args.roi_model, None, settings))
    limits = Limits(max_upload=int(args.max_upload_mb * 2**20),
                    max_decompressed=int(args.max_decompressed_mb * 2**20), max_queue=args.max_queue)
    workdir = args.workdir or settings.results / model.plans.dataset_name / "serve"
    config = ServeConfig(model_folder=Path(model.folder), workdir=workdir.resolve(), host=args.host,
                         port=args.port, folds=folds, checkpoint=args.checkpoint, device=args.device,
                         roi_model_folder=Path(roi.folder) if roi is not None else None,
                         edge_context=default_edge_context(None if args.dataset else named, member_plans(model)),
                         limits=limits, retention=Retention(keep=args.keep_jobs or None,
                                                            ttl_s=args.job_ttl_hours * 3600 or None))
    serve(config, model, roi)
    return 0
