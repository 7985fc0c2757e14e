"""The ``autoseg`` command line. Reads the environment once into :class:`Settings` and hands it down.

Every user error is an :class:`AutosegError`: printed without a traceback, exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import autoseg
from autoseg.errors import AutosegError, ConfigurationError
from autoseg.layout import ModelFolder, PreprocessedDataset, RunOutputs, calibration_cache
from autoseg.precision import DEVICES, PRECISIONS, RUNTIMES, resolve_device
from autoseg.pretrain import add_pretrain_parser
from autoseg.serve.command import add_serve_parser
from autoseg.settings import Settings

if TYPE_CHECKING:
    from autoseg.inference.model import Model
    from autoseg.partial_labels import LabelSpace
    from autoseg.plans import Plans
    from autoseg.training.run import TrainRequest

log = logging.getLogger("autoseg")

EPILOG_PLAN = """examples:
  autoseg plan_and_preprocess -d Task08                 # CPU plan, calibrated on this machine
  autoseg plan_and_preprocess -d 8 --device cuda --gpu-memory 24
  autoseg plan_and_preprocess -d /data/Task08_HepaticVessel --max-slices 200
  autoseg plan_and_preprocess -d Task08 --only plan --force   # re-plan, keep fingerprint
"""

EPILOG_PHANTOM = """examples:
  autoseg phantom -o autoseg_raw                        # Task08-like phantom, 10 training cases
  autoseg phantom -o autoseg_raw --task Task03 -n 20 --test 4 --seed 7
"""


def _add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan_and_preprocess", help="fingerprint a dataset, plan the network, preprocess the cases",
        description="Fingerprint the raw dataset, derive plans.json under a hardware budget, and "
                    "preprocess every case. Outputs go to $AUTOSEG_PREPROCESSED/<dataset>/.",
        epilog=EPILOG_PLAN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, action="append",
                   help="Task08, 8, Dataset008_HepaticVessel, Task08_HepaticVessel or a folder path; "
                        "twice or more with --merge")
    p.add_argument("--merge", default=None, metavar="NAME",
                   help="merge the -d datasets into one dataset NAME with partial labels (classes matched "
                        "by name; e.g. -d Task03 -d Task08 --merge LiverVesselTumour), then plan it")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="plan for training on this device (default: auto, CUDA when there is one, else the CPU)")
    p.add_argument("--gpu-memory", type=float, default=8.0, metavar="GB",
                   help="GPU memory budget in GB for --device cuda (default: 8)")
    p.add_argument("--step-time", type=float, default=0.5, metavar="S",
                   help="CPU: target seconds of a training step's forward, backward and update (default: 0.5)")
    p.add_argument("--cpu-gflops", type=float, default=None,
                   help="CPU: throughput to plan with instead of this machine's calibration")
    p.add_argument("--verify", action="store_true",
                   help="CPU: also time the chosen plan for real and adjust it (depends on machine load)")
    p.add_argument("--recalibrate", action="store_true",
                   help="CPU: measure this machine again instead of using its cached calibration "
                        "($AUTOSEG_CACHE, default ~/.cache/autoseg)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast the plan is timed and trained in (default auto: fp16 on CUDA, bf16 on "
                        "CPUs with native bf16 instructions, else fp32)")
    p.add_argument("--network", default="arunet", help="network from the registry (default: arunet)")
    p.add_argument("--features", type=int, choices=(8, 16), default=None,
                   help="base features (default: chosen by the budget)")
    p.add_argument("--hu-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="Hounsfield window for CT (default: the labelled voxels' 0.5-99.5 percentiles "
                        "inside -160 240; give -160 240 for the whole abdominal window)")
    p.add_argument("--mirror", choices=("auto", "all", "none"), default="auto",
                   help="mirror augmentation (and --tta): auto (default) along the axes along which no class lies "
                        "on one side of the body (the liver on the right: not left-right), all (nnU-Net's), none; "
                        "existing plans are kept unless --force")
    p.add_argument("--max-slices", type=int, default=None,
                   help="exclude cases with more slices than this (reported in fingerprint.json)")
    p.add_argument("--only", choices=("fingerprint", "plan", "preprocess"), action="append",
                   help="run only these stages (repeatable); default: all three")
    p.add_argument("--force", action="store_true", help="redo stages even when their outputs are current")
    p.add_argument("-j", "--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--seed", type=int, default=12345, help="seed for sampling (default: 12345)")
    p.add_argument("--plans-from", type=Path, default=None, metavar="MODEL",
                   help="adopt a trained model's network, patch, batch and target spacing (a model folder, "
                        "an exported .zip or a built-in model such as 'synthetic'), so that `train --init MODEL` "
                        "can start from its weights")
    p.add_argument("--localiser", action="store_true",
                   help="also plan and preprocess the dataset's localiser (<dataset>/localiser/: the same network "
                        "at twice the spacing), which `train --localiser` trains and `predict --localise` uses to "
                        "find where the structures are before the folds slide at full resolution")
    p.set_defaults(func=_cmd_plan)


def _open_named_model(arg: Path, settings: Settings) -> "Model":
    """The model a path or a built-in name (``synthetic``) stands for, opened."""
    from autoseg.builtin import resolve_model
    from autoseg.inference.model import open_model

    return open_model(resolve_model(arg, settings))


def _template_plans(arg: Path, settings: Settings) -> "Plans":
    """The plans of ``--plans-from``'s model."""
    return _open_named_model(arg, settings).plans


def _cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.planners.planner import PlannerOptions
    from autoseg.pipeline import plan_and_preprocess

    options = PlannerOptions(
        device=args.device, gpu_memory_gb=args.gpu_memory, step_time_target_s=args.step_time,
        network=args.network, base_features=args.features,
        hu_window=tuple(args.hu_window) if args.hu_window else None, cpu_gflops=args.cpu_gflops,
        verify=args.verify, seed=args.seed, precision=args.precision, mirror=args.mirror,
        calibration_cache=calibration_cache(settings.cache), recalibrate=args.recalibrate,
        template=_template_plans(args.plans_from, settings) if args.plans_from else None)
    stages = tuple(args.only) if args.only else ("fingerprint", "plan", "preprocess")
    dataset = _dataset_to_plan(args.dataset, args.merge, settings)
    out = plan_and_preprocess(dataset, settings, options, stages=stages, max_slices=args.max_slices,
                              workers=args.workers, force=args.force, localiser=args.localiser)
    print(f"done: {out}")
    return 0


def _dataset_to_plan(specs: list[str], merge: str | None, settings: Settings) -> str:
    """The one dataset ``-d`` names, or the merged dataset of several (written or brought up to date)."""
    if merge is None:
        if len(specs) > 1:
            raise ConfigurationError(f"{len(specs)} datasets given ({', '.join(specs)}) without --merge",
                                     fix="plan them one at a time, or merge them: --merge NAME")
        return specs[0]
    from autoseg.merge import merge_datasets

    folder = merge_datasets(specs, merge, settings.raw)
    print(f"merged {', '.join(specs)} into {folder} (train and predict it as -d {merge})")
    return str(folder)


def _add_phantom_parser(sub: argparse._SubParsersAction) -> None:
    from autoseg.phantom import add_trunk_version_argument

    p = sub.add_parser("phantom", help="write a synthetic abdominal CT task (MSD format)",
                       description="Generate the embedded default dataset: synthetic abdominal CT with "
                                   "liver, hepatic vessels and tumours, as an MSD task folder.",
                       epilog=EPILOG_PHANTOM, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="folder to write the task folder into (default: $AUTOSEG_RAW)")
    p.add_argument("--task", choices=("Task08", "Task03", "LiverVesselTumour"), default="Task08",
                   help="Task08 vessel + tumour (default), Task03 liver + tumour, LiverVesselTumour liver + "
                        "vessel + tumour (family 3 only)")
    p.add_argument("-n", "--num-training", type=int, default=10)
    p.add_argument("--test", type=int, default=2, help="held-out test cases (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", type=int, choices=(1, 2, 3), default=1,
                   help="1: the phantoms of the demo and the tests (default); 2: an independent family with "
                        "other anatomy, contrast phases, lesion kinds and noise, to test a model tuned on "
                        "family 1 (e.g. autoseg phantom -o raw2 --family 2 --tumour-free-share 0.3); 3: trunk "
                        "phantoms, thorax to pelvis with randomised field of view and appearance, the training "
                        "data of the synthetic model (docs/synthetic_model.md)")
    p.add_argument("--tumour-free-share", type=float, default=None, metavar="S",
                   help="share of tumour-free livers among the training and among the test cases (default: 0.3 "
                        "for families 2 and 3, none for family 1)")
    add_trunk_version_argument(p)
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.phantom import write_task

    out = write_task(args.output or settings.raw, task=args.task, num_training=args.num_training,
                     num_test=args.test, seed=args.seed, family=args.family,
                     tumour_free_share=args.tumour_free_share, trunk_version=args.trunk_version)
    print(f"wrote {out}")
    return 0


EPILOG_TRAIN = """examples:
  autoseg train -d Task08                          # all five folds, one after another
  autoseg train -d Task08 -f 0 --time-budget 1h    # one fold; the LR schedule follows the budget
  autoseg train -d Task08 -f 2 --continue          # resume fold 2 with its own budget and seed
  autoseg train -d Task08 --compute-budget 20m     # the steps 20 idle minutes make; a busy machine takes longer
  autoseg train -d Task08 --network resenc_unet --recipe adam_plateau --loss weighted_dice_focal
"""


def parse_duration(text: str) -> float:
    """Seconds from '90', '90s', '45m', '2h' or '1h30m'."""
    import re

    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 90s, 45m, 2h or 1h30m")
    h, mi, se = (float(g) if g else 0.0 for g in m.groups())
    seconds = h * 3600 + mi * 60 + se
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive duration")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability: give a number from 0 to 1")
    return value


def _parse_folds(values: list[str] | None) -> tuple[int, ...]:
    if not values or values == ["all"]:
        return (0, 1, 2, 3, 4)
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise AutosegError(f"-f takes fold numbers 0-4 or 'all', got {values}") from None


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the planned network with 5-fold cross-validation",
                       description="Train folds of the planned network on the preprocessed dataset. "
                                   "Results go to $AUTOSEG_RESULTS/<dataset>/<network>/fold_K/.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="dataset (as for plan_and_preprocess)")
    p.add_argument("-f", "--fold", nargs="+", default=None, help="folds 0-4, or 'all' (default: all)")
    p.add_argument("--network", default=None, help="override the planned network")
    p.add_argument("--regions", action="store_true",
                   help="one sigmoid per region of nested classes (liver = liver + tumour, tumour) instead of "
                        "a softmax, as nnU-Net trains nested structures; the model goes to <network>_regions "
                        "and find_best chooses between the two by cross-validation")
    p.add_argument("--localiser", action="store_true",
                   help="train the dataset's localiser (planned by `plan_and_preprocess --localiser`) instead of "
                        "the model; it goes to <dataset>/localiser/ and `predict --localise` uses it (one fold "
                        "is enough, e.g. -f 0)")
    p.add_argument("--recipe", default=None, help="sgd_poly, adam_plateau or adam_poly (default: planned)")
    p.add_argument("--sampler", choices=("voxels", "components"), default=None,
                   help="how a foreground-forced patch picks its centre: voxels (nnU-Net's: a lesion in proportion "
                        "to its size) or components (a connected component of the class at random, then a voxel "
                        "of it: small lesions as often as large ones); default: the recipe's (voxels)")
    p.add_argument("--class-contrast", type=_probability, default=None, metavar="P",
                   help="with probability P per training patch and labelled class in it, give the class a new "
                        "contrast to the tissue around it (a CNR of 1-4, darker or brighter), keeping its texture: "
                        "an experiment for lesion kinds and contrast phases that a few training cases do not show; "
                        "at 0.5 it lowered tumour Dice on family-2 phantoms (docs/training.md); default: the "
                        "recipe's (0, off)")
    p.add_argument("--edge-context", type=_probability, default=None, metavar="F",
                   help="let training patches reach F times the patch's slices beyond either end of a case's slice "
                        "axis, the case mirrored there, as `predict --edge-context F` extends a case; the model then "
                        "predicts with that edge context by default (docs/training.md); default: the recipe's "
                        "(none: padding 0 beyond the ends)")
    p.add_argument("--lesion-paste", type=_probability, default=None, metavar="P",
                   help="with probability P per training patch, paste one of the training cases' lesions into it, "
                        "inside the class it lies in (the liver) or, where none is labelled, near the other classes "
                        "(the vessels), where the tissue matches its own surroundings: more lesions in more places "
                        "for a task of few cases (docs/training.md); 0: off; default: the recipe's (off)")
    p.add_argument("--lesion-class", default=None, metavar="NAME",
                   help="with --lesion-paste: the class pasted (default: the one class whose name means tumour: "
                        "tumour, tumor, cancer, lesion, ...)")
    p.add_argument("--loss", default=None, help="dice_ce, dice_wce, dice_wce_anneal, dice, dice03_ce07 or "
                                                "weighted_dice_focal (default: the recipe's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=_positive_int, default=None, help="number of epochs (default: planned)")
    budget.add_argument("--time-budget", type=parse_duration, default=None, metavar="DURATION",
                        help="train each fold for this long in wall time, e.g. 20m or 2h (a busy machine "
                             "makes fewer steps in it)")
    budget.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                        help="train each fold for N steps, however long the machine takes")
    budget.add_argument("--compute-budget", type=parse_duration, default=None, metavar="DURATION",
                        help="train each fold for the steps the plan's calibrated step time fits in DURATION "
                             "on an idle machine: a busy machine takes longer, the model is the same")
    p.add_argument("--iterations", type=_positive_int, default=None, help="iterations per epoch (default: planned)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, sampling and augmentation (default: the plans' seed; a "
                        "resumed fold keeps its own)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads, fixed (default: the cores other processes leave free, re-checked "
                        "every few seconds); fix it for bit-identical reruns")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default: CUDA when there is one, else the CPU), cpu or cuda")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume unfinished folds from their last checkpoint")
    p.add_argument("--force", action="store_true",
                   help="retrain the selected folds (-f) from scratch, discarding their checkpoints; "
                        "retraining all folds also lets changed plans replace the model's")
    p.add_argument("-j", "--workers", type=int, default=1, help="augmentation worker processes (default: 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (long GPU runs)")
    p.add_argument("--validation-runtime", choices=RUNTIMES, default="torch",
                   help="what runs the network in the end-of-fold validation on the CPU: PyTorch (default) or "
                        "OpenVINO (pip install openvino; as predict --runtime, docs/inference.md); training "
                        "steps are always PyTorch's")
    p.add_argument("--init", type=Path, default=None, metavar="MODEL",
                   help="start fresh folds from a trained model's weights (its first fold): a model folder, "
                        "an exported .zip or a built-in model such as 'synthetic' (fine-tuning; the plans must "
                        "describe the same network, e.g. planned with --features 8 for 'synthetic')")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="autocast of the network's arithmetic (default: planned; auto: fp16 on CUDA, bf16 "
                        "on CPUs with native bf16 instructions, else fp32)")
    scale = p.add_argument_group("scaling out")
    scale.add_argument("--gpus", type=int, default=None, metavar="N",
                       help="data-parallel training of each fold on N GPUs of this machine (runs torchrun)")
    scale.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: folds one after another (default); ray: each fold as a Ray task")
    scale.add_argument("--ray-address", default=None,
                       help="with --executor ray: address of an existing cluster (default: start a local one)")
    scale.add_argument("--cpus-per-fold", type=int, default=None,
                       help="with --executor ray on CPU: CPUs per fold task (default: this machine's cores / folds)")
    p.set_defaults(func=_cmd_train)


def train_request(args: argparse.Namespace) -> "TrainRequest":
    """What ``autoseg train``'s parsed arguments ask for."""
    from autoseg.training.run import TrainRequest

    return TrainRequest(dataset=args.dataset, folds=_parse_folds(args.fold), network=args.network,
                        recipe=args.recipe, loss=args.loss, epochs=args.epochs,
                        iterations_per_epoch=args.iterations, time_budget_s=args.time_budget,
                        steps=args.steps, compute_budget_s=args.compute_budget, precision=args.precision,
                        force=args.force, seed=args.seed, regions=args.regions, localiser=args.localiser,
                        sampler=args.sampler, class_contrast=args.class_contrast, edge_context=args.edge_context,
                        lesion_paste=args.lesion_paste, lesion_class=args.lesion_class)


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.training.distributed import DistContext, launch_torchrun
    from autoseg.training.loop import TrainOptions
    from autoseg.training.run import prepare, run_fold

    if args.gpus:
        return launch_torchrun(args.gpus, args.argv)
    req = train_request(args)
    dist = DistContext(settings.rank, settings.world_size, settings.local_rank)
    if dist.enabled and args.executor == "ray":
        raise ConfigurationError("--executor ray and torchrun do not combine",
                                 fix="use torchrun (or --gpus) for one fold on several GPUs, or Ray for folds "
                                     "in parallel")
    dist.init(dist.device(args.device))
    from autoseg.networks.openvino_runtime import require_runtime

    require_runtime(args.validation_runtime, args.device)  # before anything is written, not at the fold's end
    init, source = (_init_weights(args.init, settings), str(args.init)) if args.init else (None, "")
    options = TrainOptions(device=args.device, workers=args.workers, continue_training=args.continue_training,
                           dist=dist, compile=args.compile, threads=args.threads, init_weights=init,
                           init_source=source, validation_runtime=args.validation_runtime)
    jobs = prepare(req, settings, options)
    if args.executor == "ray":
        from autoseg.training.ray_executor import run_folds_on_ray

        records = run_folds_on_ray(jobs, options, args.ray_address, args.cpus_per_fold)
    else:
        records = [run_fold(job, options) for job in jobs]
    if dist.is_main:
        for record in records:
            _print_fold(record)
    dist.shutdown()
    return 0


def _init_weights(arg: Path, settings: Settings) -> dict:
    """The weights of ``--init``'s model (its first fold), on the CPU."""
    from autoseg.inference.model import ArchiveModel, TrainedModel

    model = _open_named_model(arg, settings)
    if not isinstance(model, (TrainedModel, ArchiveModel)):
        raise ConfigurationError(f"--init {arg}: starting from weights needs a PyTorch model", arg,
                                 "pass a model folder or an archive from `autoseg export` (not an ONNX export)")
    return {k: v.detach().cpu() for k, v in model.network(model.folds[0]).state_dict().items()}


def _print_fold(record: dict) -> None:
    final = record.get("final_validation")
    if final:
        dice = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in final["mean_dice"].items())
        print(f"fold {record['fold']}: validation Dice of the whole held-out cases: {dice}")
    elif "val_dice" in record:
        print(f"fold {record['fold']}: epoch {record['epoch']} patch validation Dice {record['val_dice']}")


EPILOG_PREDICT = """examples:
  autoseg predict -i images/ -o segmentations/ -d Task08          # five-fold ensemble
  autoseg predict -i ct.nii.gz -o out/ -d Task08 -f 0 --overlays  # one fold, PNG overlays
  autoseg predict -i dicom_series/ -o out/ -m results/Task08_HepaticVessel/arunet --tta
  autoseg predict -i images/ -o out/ -d Task08 --roi-model Task03    # vessels and tumours inside the liver
"""


def _add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with the trained folds' ensemble",
                       description="Segment a file, a folder of images or a DICOM series folder. Writes "
                                   "<case>.nii.gz on the input's grid and <case>.report.json per case.",
                       epilog=EPILOG_PREDICT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", type=Path, required=True, help="image file, folder or DICOM folder")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="use the model trained on this dataset")
    src.add_argument("-m", "--model", type=Path,
                     help="model folder (results/<dataset>/<network>), exported .zip or ONNX export folder, or "
                          "a built-in model: 'synthetic' (liver, vessels, tumours, trained on phantoms only; "
                          "docs/synthetic_model.md)")
    p.add_argument("--network", default=None,
                   help="with -d: which trained network (default: best.json's from find_best, else the planned one)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=None, help="folds to use (default: all present)")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final")
    p.add_argument("--roi-model", default=None, metavar="DATASET_OR_PATH",
                   help="predict only inside the foreground of this model (e.g. Task03, a liver model) "
                        "plus a margin, and write one map of both: 1 the organ (liver), then the main "
                        "model's classes (2 vessel, 3 tumour); a trained dataset name, a model folder "
                        "or an exported model")
    p.add_argument("--roi-crop-only", action="store_true",
                   help="with --roi-model: use it only to crop; the map holds the main model's classes")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="skip the post-processing that find_best decided from cross-validation")
    p.add_argument("--roi-margin-mm", type=float, default=10.0, help="margin around the ROI (default: 10 mm)")
    p.add_argument("--roi-all-components", action="store_true",
                   help="box every foreground component of the ROI model (default: only the largest, one "
                        "organ, so stray false positives do not widen the region)")
    p.add_argument("--tta", action="store_true",
                   help="mirroring test-time augmentation along the axes the model was trained mirrored along "
                        "(up to 8x slower in 3D)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default: 0.5)")
    p.add_argument("--tile-scale", type=float, default=1.0, metavar="F",
                   help="slide tiles F times the trained patch along each axis (at most the case's size; "
                        "default 1: the patch). Fewer tiles and less border for the same overlap; "
                        "docs/inference.md has what it does to time and Dice")
    p.add_argument("--edge-context", type=float, default=None, metavar="F",
                   help="extend each case at both ends of its slice axis by F times the patch, mirrored, before "
                        "sliding, so the tiles at the field of view's ends see anatomy go on (default: the share "
                        "the model was trained with, `train --edge-context`; else a built-in model's recipe value; "
                        "else 0; docs/inference.md)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="on the CPU, run the networks in PyTorch's default NCDHW layout instead of "
                        "channels-last (the same probabilities up to rounding, slower; docs/inference.md)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="what runs the networks on the CPU: PyTorch (default) or OpenVINO, which compiles each "
                        "network into fused kernels (pip install openvino; docs/inference.md has its time and "
                        "Dice); ignored on a GPU")
    p.add_argument("--localise", action="store_true",
                   help="a first pass of one network without overlap finds the foreground; the folds then "
                        "predict only the tiles that hold it (faster; docs/inference.md says what it can "
                        "change). Default: every fold over the whole case. The dataset's localiser, when "
                        "trained (train --localiser), takes the first look instead, at an eighth of the cost")
    p.add_argument("--localiser", type=Path, default=None, metavar="FOLDER",
                   help="with --localise: this localiser's folder (default: <results>/<dataset>/localiser beside "
                        "the model, when trained)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto (default: CUDA when there is one, else the CPU), cpu or cuda")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads, fixed (default: the cores other processes leave free, re-checked "
                        "between sliding-window batches)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the forward passes (default auto: fp16 on CUDA, bf16 on CPUs with "
                        "native bf16 instructions, else fp32; docs/inference.md)")
    p.add_argument("--save-probabilities", action="store_true", help="also write softmax probabilities")
    p.add_argument("--overlays", action="store_true", help="write PNG slices with the labels over the CT")
    p.add_argument("--output-format", choices=("nifti", "dicom-seg"), default="nifti",
                   help="nifti (default): the NIfTI label map; dicom-seg: also <case>.seg.dcm, a DICOM "
                        "Segmentation object referencing the input DICOM series (needs a DICOM series input)")
    p.add_argument("--meshes", action="store_true",
                   help="write an STL surface mesh per structure present, in patient mm (LPS), for 3D Slicer "
                        "and other surgical planning viewers")
    p.add_argument("--uncertainty", action="store_true",
                   help="write <case>_uncertainty.nii.gz (normalised predictive entropy of the probabilities "
                        "calibrated by find_best, 0..1) and each lesion's confidence in the report")
    p.add_argument("--overwrite", action="store_true",
                   help="predict cases again whose label map and report exist (default: skip them)")
    p.add_argument("--keep-going", action="store_true",
                   help="on a case that fails, log it and go on with the others; report.json lists the "
                        "failures and the exit status is 2")
    p.set_defaults(func=_cmd_predict)


def model_folder(args: argparse.Namespace, settings: Settings) -> Path:
    """The model ``-m`` names, or the trained model of ``-d`` (``--network``, else the one
    ``find_best`` chose, else the planned one); ``predict``, ``export`` and ``serve`` take it."""
    from autoseg.builtin import resolve_model
    from autoseg.inference.model import trained_model_folder

    if args.model:
        return resolve_model(args.model, settings)
    return trained_model_folder(args.dataset, args.network, settings)


def _cmd_predict(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.inference.model import open_model, trained_model_folder
    from autoseg.inference.postprocessing import load_postprocessing
    from autoseg.inference.predictor import PredictOptions, predict
    from autoseg.inference.uncertainty import load_calibration
    from autoseg.cpu_share import configure_threads
    from autoseg.precision import resolve_precision

    from autoseg.builtin import default_edge_context
    from autoseg.inference.ensembles import member_plans

    if args.edge_context is not None and not 0 <= args.edge_context <= 1:  # NaN too
        raise ConfigurationError(f"--edge-context {args.edge_context}: a share of the patch from 0 to 1",
                                 fix="give e.g. --edge-context 0.25, or leave it out")
    cores = configure_threads(args.device, args.threads)
    from autoseg.networks.openvino_runtime import require_runtime

    require_runtime(args.runtime, args.device)  # before any case is read, not once per case
    model = open_model(model_folder(args, settings), tuple(args.folds) if args.folds else None, args.checkpoint)
    if args.edge_context is None:
        args.edge_context = default_edge_context(args.model, member_plans(model))
    roi = None
    if args.roi_model:
        roi_path = Path(args.roi_model)
        roi = open_model(roi_path if roi_path.exists() else trained_model_folder(args.roi_model, None, settings))
    if not args.tile_scale >= 1:  # NaN too
        raise ConfigurationError(f"--tile-scale {args.tile_scale}: a tile is at least the trained patch",
                                 fix="give 1 (the patch) or more, e.g. --tile-scale 2")
    if args.tile_scale != 1:
        from autoseg.inference.model import OnnxModel

        for m in (model, roi):
            if isinstance(m, OnnxModel):
                raise ConfigurationError("--tile-scale: an ONNX export takes only the patch it was exported at",
                                         m.folder, "predict with the PyTorch model folder or archive, or without "
                                                   "--tile-scale")
    from autoseg.sliding_window import edge_context_of

    if args.edge_context and not edge_context_of(model.plans, args.edge_context):
        log.warning("--edge-context is ignored: this model was not trained mirrored along the slice axis, so "
                    "anatomy mirrored beyond the field of view is new to it (docs/inference.md)")
    localiser = _localiser(args, model)
    options = PredictOptions(device=args.device, tta=args.tta, overlap=args.overlap, localise=args.localise,
                             localiser=localiser, tile_scale=args.tile_scale, channels_last=args.channels_last,
                             edge_context=args.edge_context,
                             runtime=args.runtime,
                             precision=resolve_precision(args.precision, args.device),
                             outputs=tuple(o for o, on in (("probabilities", args.save_probabilities),
                                                           ("overlays", args.overlays),
                                                           ("dicom-seg", args.output_format == "dicom-seg"),
                                                           ("meshes", args.meshes),
                                                           ("uncertainty", args.uncertainty)) if on),
                             roi_model=roi, roi_margin_mm=args.roi_margin_mm,
                             roi_postprocessing=(None if args.no_postprocessing or roi is None
                                                 else load_postprocessing(roi)),
                             roi_largest_component=not args.roi_all_components,
                             combine_roi=not args.roi_crop_only,
                             postprocessing=None if args.no_postprocessing else load_postprocessing(model),
                             calibration=load_calibration(model) if args.uncertainty else None,
                             cores=cores, command_line=("autoseg", *args.argv))
    result = predict(args.input, args.output, model, options, overwrite=args.overwrite,
                     keep_going=args.keep_going)
    for report in result.reports:
        print(f"{Path(report.input or '').name}: {report.volumes_ml} mL, {report.seconds} s")
        for warning in report.warnings or ():
            print(f"  warning: {warning}")
    if result.skipped:
        print(f"{len(result.skipped)} case(s) skipped: their outputs exist (--overwrite predicts them again)")
    if result.failed:
        names = ", ".join(Path(f["input"]).name for f in result.failed[:5])
        print(f"autoseg: error: {len(result.failed)} case(s) failed ({names}); see "
              f"{RunOutputs(args.output).report}", file=sys.stderr)
        return 2
    return 0


def _localiser(args: argparse.Namespace, model: "Model") -> "Model | None":
    """The localiser ``--localise`` uses: ``--localiser``'s, else the one trained beside the model."""
    from autoseg.inference.localise import find_localiser, open_localiser

    if args.localiser is not None:
        if not args.localise:
            raise ConfigurationError("--localiser is the first look of --localise", args.localiser,
                                     "add --localise, or drop --localiser")
        return open_localiser(args.localiser, model)
    return find_localiser(model) if args.localise else None


EPILOG_EVALUATE = """examples:
  autoseg evaluate -p segmentations/ -r labelsTr/                  # metrics.json, metrics.csv in -p
  autoseg evaluate -p pred/ -r ref/ --labels 1 2 --tolerance-mm 1 -o eval/
  autoseg evaluate -p results/Task08_HepaticVessel/arunet/fold_0/validation \\
                   -r autoseg_raw/Task08_HepaticVessel/labelsTr --allow-unmatched
"""


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted label maps against reference label maps",
                       description="Per case and foreground class: Dice, IoU, precision, recall, accuracy, "
                                   "HD95 and normalised surface Dice in mm, volume differences, lesion "
                                   "detection; per class their mean, median and 95% bootstrap interval over "
                                   "the cases (a class absent from reference and prediction of a case is "
                                   "left out there). Files are matched by name. Writes metrics.json and "
                                   "metrics.csv (see docs/evaluation.md).",
                       epilog=EPILOG_EVALUATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pred", type=Path, required=True, help="folder of predicted label maps")
    p.add_argument("-r", "--ref", type=Path, required=True, help="folder of reference label maps")
    p.add_argument("--labels", type=int, nargs="+", default=None,
                   help="label ids to score (default: the dataset's labels if known, else those in the references)")
    p.add_argument("-d", "--dataset", default=None, help="take label ids and names from this raw dataset")
    p.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default: 2)")
    p.add_argument("-o", "--output", type=Path, default=None, help="folder for metrics.json/.csv (default: -p)")
    p.add_argument("--allow-unmatched", action="store_true",
                   help="score only the cases present in both folders instead of failing")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the bootstrap intervals of the means (default: 0; recorded in metrics.json)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.evaluation import evaluate_folders, format_table, write_outputs

    labels, names, source, space = _evaluation_labels(args, settings)
    result = evaluate_folders(args.pred, args.ref, labels, names, args.tolerance_mm, args.allow_unmatched,
                              source, args.seed, space)
    json_path, csv_path = write_outputs(result, args.output or args.pred)
    print(format_table(result))
    print(f"wrote {json_path} and {csv_path}")
    return 0


def _evaluation_labels(args: argparse.Namespace, settings: Settings
                       ) -> tuple[list[int] | None, dict[int, str] | None, str, LabelSpace | None]:
    """Labels to score, their names and the references' partial labels: --labels, else the
    dataset's (-d, or dataset.json beside -r)."""
    from autoseg.datasets import find_dataset
    from autoseg.evaluation import metadata_labels

    names, source, space = None, "labels found in the references", None
    if args.dataset:
        dataset = find_dataset(args.dataset, settings.raw)
        names, source = dataset.labels, f"dataset.json of {dataset.root}"
        space = dataset.label_space
    elif (found := metadata_labels(args.ref)) is not None:
        names, source, space = found[0], str(found[1]), found[2]
    if args.labels:
        return sorted(set(args.labels) - {0}), names, "--labels", space
    return (sorted(k for k in names if k != 0) if names else None), names, source, space


def _add_summarize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summarize", help="cross-validation Dice of every trained network of a dataset",
                       description="Gather fold_K/validation/summary.json of every network under "
                                   "$AUTOSEG_RESULTS/<dataset>/ into one table; writes cv_summary.json there.")
    p.add_argument("-d", "--dataset", required=True, help="dataset (as for train)")
    p.set_defaults(func=_cmd_summarize)


def _cmd_summarize(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.inference.crossval import format_cv_table, results_dataset_dir, summarize, write_cv_summary

    dataset_dir = results_dataset_dir(args.dataset, settings)
    summary = summarize(dataset_dir)
    path = write_cv_summary(dataset_dir, summary)
    print(format_cv_table(summary))
    print(f"wrote {path}")
    return 0


def _add_find_best_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("find_best", help="pick the network with the best cross-validation Dice",
                       description="Choose the network with the highest cross-validation mean foreground "
                                   "Dice among those with all 5 folds validated; writes best.json, which "
                                   "`autoseg predict -d` then uses unless --network is given.")
    p.add_argument("-d", "--dataset", required=True, help="dataset (as for train)")
    p.set_defaults(func=_cmd_find_best)


def _cmd_find_best(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.inference.crossval import (choose_best, format_cv_table, results_dataset_dir, summarize,
                                            write_best, write_cv_summary)
    from autoseg.inference.ensembles import build_ensembles

    dataset_dir = results_dataset_dir(args.dataset, settings)
    summary = summarize(dataset_dir)
    ensembles = build_ensembles(dataset_dir, settings.preprocessed, summary)
    if ensembles:
        print(f"scored {len(ensembles)} ensemble(s) of networks: {', '.join(ensembles)}")
        summary = summarize(dataset_dir)
    write_cv_summary(dataset_dir, summary)  # the table below, ensembles included
    best = choose_best(summary)
    path = write_best(dataset_dir, best)
    print(format_cv_table(summary))
    _decide_postprocessing(dataset_dir / best.network, settings)
    _fit_calibration(dataset_dir / best.network, settings)
    folds = ",".join(str(f) for f in best.folds)
    print(f"best: {best.network} (mean foreground Dice {best.mean_foreground_dice:.3f}, folds {folds})")
    print(f"wrote {path}")
    return 0


EPILOG_EXPORT = """examples:
  autoseg export -d Task08 -o task08_arunet.zip         # one file: plans + weights of the folds
  autoseg export -d Task08 --onnx -o task08_onnx/       # plans.json + fold_K.onnx for deployment
  autoseg predict -i ct.nii.gz -o out/ -m task08_arunet.zip
"""


def _decide_postprocessing(model_dir: Path, settings: Settings) -> None:
    from autoseg.inference.ensembles import plans_of
    from autoseg.inference.postprocessing import decide_postprocessing, describe

    plans = plans_of(model_dir)
    decision = decide_postprocessing(model_dir, settings.preprocessed)
    if decision is None:
        print("post-processing: no validation predictions to decide from")
        return
    print(f"post-processing (from {decision.cases} CV cases): {describe(decision, plans.labels)}; "
          f"wrote {ModelFolder(model_dir).postprocessing}")


def _fit_calibration(model_dir: Path, settings: Settings) -> None:
    from autoseg.inference.ensembles import plans_of
    from autoseg.inference.uncertainty import fit_calibration

    plans = plans_of(model_dir)
    data = PreprocessedDataset(settings.preprocessed / plans.dataset_name).data
    calibration = fit_calibration(model_dir, data, space=plans.label_space)
    if calibration is None:
        print("calibration: no validation probabilities to fit on (predict --uncertainty uses T = 1)")
        return
    c = calibration
    print(f"calibration (from {c.cases} CV cases, {c.voxels} voxels): temperature {c.temperature:.3f}, "
          f"ECE {c.ece_before:.4f} -> {c.ece_after:.4f}; wrote {ModelFolder(model_dir).calibration}")


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained model as one shareable file, or as ONNX",
                       epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", "--dataset", help="export the model trained on this dataset")
    src.add_argument("-m", "--model", type=Path, help="model folder (results/<dataset>/<network>)")
    p.add_argument("--network", default=None, help="with -d: which trained network (default: as predict)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=None, help="folds to export (default: all present)")
    p.add_argument("--checkpoint", choices=("final", "best"), default="final")
    p.add_argument("--onnx", action="store_true", help="write ONNX networks into the folder -o")
    p.add_argument("-o", "--output", type=Path, required=True, help="archive (.zip) or, with --onnx, a folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing archive, or write into a non-empty ONNX folder")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from autoseg.artefacts import EnsembleManifest
    from autoseg.errors import AutosegError
    from autoseg.inference.export import check_export_target, export_archive, export_onnx
    from autoseg.inference.model import TrainedModel

    check_export_target(args.output, args.onnx, args.overwrite)
    folder = model_folder(args, settings)
    if ModelFolder(folder).is_ensemble:
        members = EnsembleManifest.load(ModelFolder(folder).ensemble_manifest).members
        raise AutosegError(f"this is an ensemble of {list(members)}; export writes one network", folder,
                           f"export each member with --network NAME (e.g. --network {members[0]})")
    model = TrainedModel.open(folder, tuple(args.folds) if args.folds else None,
                              args.checkpoint)
    out = (export_onnx(model, args.output, args.overwrite) if args.onnx
           else export_archive(model, args.output, args.overwrite))
    print(f"exported folds {sorted(model.checkpoints)} of {model.folder} to {out}")
    return 0


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_phantom_parser, _add_plan_parser, _add_train_parser, _add_predict_parser, _add_evaluate_parser,
    _add_summarize_parser, _add_find_best_parser, _add_export_parser, add_serve_parser, add_pretrain_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring segmentation of liver, hepatic vessels and liver tumours in CT. "
                    "Folders: $AUTOSEG_RAW, $AUTOSEG_PREPROCESSED, $AUTOSEG_RESULTS (default: "
                    "./autoseg_raw, ./autoseg_preprocessed, ./autoseg_results).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"autoseg {autoseg.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if getattr(args, "device", None) is not None:  # one resolution of auto for the whole command
            args.device = resolve_device(args.device, computes=args.command != "plan_and_preprocess")
        return int(args.func(args, Settings.from_env()))
    except AutosegError as exc:
        print(f"autoseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoseg: interrupted; finished outputs are kept, partial ones were not written",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
