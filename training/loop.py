"""The training loop of one fold, composed of parts chosen by name from plans.json or CLI flags:
network, loss, recipe. Checkpoints every epoch; ``--continue`` resumes with the same schedule."""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autoseg.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from autoseg.cpu_share import configure_threads
from autoseg.errors import ConfigurationError
from autoseg.layout import PLANS, FoldFolder
from autoseg.metrics import dice_from_counts, mean_foreground
from autoseg.networks import build_network
from autoseg.plans import Plans
from autoseg.precision import RUNTIMES, autocast, resolve_precision
from autoseg.regions import decide
from autoseg.sliding_window import WindowOptions
from autoseg.training.data import CaseStore, make_train_stream, validation_patches
from autoseg.training.distributed import DistContext
from autoseg.training.lesion_paste import LesionPasteTransform, lesion_bank
from autoseg.training.fold_validation import validate_fold
from autoseg.training.losses import DeepSupervision, build_loss
from autoseg.training.progress import plot_progress, write_log
from autoseg.training.recipes import PlateauState, build_optimizer, poly_lr, set_lr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Run-time choices that are not planning decisions."""

    device: str = "cpu"
    workers: int = 1
    val_patches_per_case: int = 4
    continue_training: bool = False
    seed: int = 12345
    compile: bool = False
    final_validation: bool = True
    #: What runs the network in the end-of-fold validation on the CPU (``WindowOptions.runtime``):
    #: torch, or openvino (``train --validation-runtime``); training steps are always PyTorch's.
    validation_runtime: str = "torch"
    dist: DistContext = DistContext()
    #: CPU threads: None follows the cores other processes leave free (autoseg.cpu_share), a number
    #: fixes the count (reproducible arithmetic: the same seed, threads and steps give the same weights).
    threads: int | None = None
    #: Weights to start a fresh fold from (``train --init``): every tensor whose name and shape match
    #: the planned network's is copied, the rest keep their random initialisation.
    init_weights: dict[str, torch.Tensor] | None = None
    init_source: str = ""


def _check_validation_runtime(options: TrainOptions, device: str) -> None:
    """Refuse an unknown or unusable validation runtime when the fold starts, not when it ends (a
    missing OpenVINO on a Ray worker); on a GPU it is ignored, and said so."""
    if options.validation_runtime not in RUNTIMES:
        raise ConfigurationError(f"unknown validation runtime {options.validation_runtime!r}",
                                 fix=f"use one of {', '.join(RUNTIMES)}")
    if options.final_validation:
        from autoseg.networks.openvino_runtime import require_runtime

        require_runtime(options.validation_runtime, device)
        if options.validation_runtime == "openvino" and device != "cpu":
            log.warning("the validation runtime openvino runs on the CPU only: this fold's validation on %s "
                        "runs PyTorch", device)


class FoldTrainer:
    """Trains one fold; all state needed to resume lives in ``checkpoint_latest.pt``."""

    def __init__(self, plans: Plans, data_dir: Path, fold_dir: FoldFolder, train_cases: list[str],
                 val_cases: list[str], options: TrainOptions):
        self.plans, self.recipe, self.options = plans, plans.recipe, options
        self.fold_dir, self.data_dir = fold_dir, data_dir
        self.train_cases, self.val_cases = train_cases, val_cases
        self.dist = options.dist
        self.device = torch.device(self.dist.device(options.device))
        self.dist.init(str(self.device))
        self.class_names = {k: v for k, v in plans.labels.items() if k != 0}
        self.cores = configure_threads(self.device.type, options.threads)
        _check_validation_runtime(options, self.device.type)
        torch.manual_seed(options.seed)
        np.random.seed(options.seed % 2**32)
        random.seed(options.seed)
        kwargs = dict(plans.network.kwargs, deep_supervision=self.recipe.deep_supervision)
        self.network = build_network(plans.network.name, kwargs, plans.num_channels, plans.num_outputs)
        self.network.to(self.device)
        self.model = self.dist.wrap(self.network, str(self.device))  # what training steps call
        if options.compile:  # optional: worth its compile time on long GPU runs
            compiled = torch.compile(self.model)
            assert isinstance(compiled, torch.nn.Module)  # a compiled module is an OptimizedModule
            self.model = compiled
        self.space = plans.label_space
        self.loss = DeepSupervision(build_loss(self.recipe.loss, self.space, plans.regions))
        self.optimizer = build_optimizer(self.recipe, self.network.parameters())
        self.precision = resolve_precision(self.recipe.precision, self.device.type)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.plateau = PlateauState(self.recipe.initial_lr)
        self.epochs_log: list[dict[str, Any]] = []
        self.epoch, self.steps, self.train_seconds, self.best = 0, 0, 0.0, -1.0
        if options.continue_training and fold_dir.latest.is_file():
            self._resume(load_checkpoint(fold_dir.latest))
        elif options.init_weights is not None:
            transfer_weights(self.network, options.init_weights, options.init_source)

    # --- schedule -------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.recipe.steps or self.recipe.epochs * self.recipe.iterations_per_epoch

    def remaining(self) -> str:
        """What is left of the budget, for progress lines."""
        if self.recipe.time_budget_s:
            return f"{max(0.0, self.recipe.time_budget_s - self.train_seconds) / 60:.1f} min of training left"
        return f"{max(0, self.total_steps - self.steps)} of {self.total_steps} steps left"

    def progress(self) -> float:
        if self.recipe.time_budget_s:
            return self.train_seconds / self.recipe.time_budget_s
        return self.steps / max(self.total_steps, 1)

    def current_lr(self) -> float:
        if self.recipe.schedule == "plateau":
            return self.plateau.lr
        if self.recipe.schedule == "poly":
            return poly_lr(self.recipe.initial_lr, self.progress())
        raise ConfigurationError(f"unknown schedule '{self.recipe.schedule}' (known: plateau, poly)",
                                 fix=f"set recipe.schedule in {PLANS} to one of them")

    def finished(self) -> bool:
        return self.progress() >= 1.0 - 1e-9

    # --- state ----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "steps": self.steps,
                "train_seconds": self.train_seconds, "best": self.best,
                "plateau": [self.plateau.lr, self.plateau.best, self.plateau.bad_epochs,
                            self.plateau.since_improvement],
                "log": self.epochs_log, "rng": rng_state(), "plans": self.plans.to_dict(),
                "network_name": self.plans.network.name}

    def _resume(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.steps = int(state["epoch"]), int(state["steps"])
        self.train_seconds, self.best = float(state["train_seconds"]), float(state["best"])
        self.plateau = PlateauState(*state["plateau"])
        self.epochs_log = list(state["log"])
        restore_rng(state["rng"])
        log.info("resumed fold %d at epoch %d (%.0f%% of the schedule)", self.fold_dir.fold, self.epoch,
                 100 * self.progress())

    # --- one epoch ------------------------------------------------------------------------------
    def train_epoch(self, stream) -> dict[str, float]:
        self.network.train()
        losses, wait, start = [], 0.0, time.perf_counter()
        bar = tqdm(range(self.recipe.iterations_per_epoch), desc=f"epoch {self.epoch}", leave=False,
                   disable=None)
        for _ in bar:
            self.train_seconds = self.dist.broadcast_float(self.train_seconds, str(self.device))
            if self.finished():
                break
            if self.cores is not None:
                self.cores.adapt()
            t0 = time.perf_counter()
            batch = next(stream)
            t1 = time.perf_counter()
            wait += t1 - t0
            set_lr(self.optimizer, self.current_lr())
            losses.append(self.train_step(batch))
            self.steps += 1
            self.train_seconds += time.perf_counter() - t0
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        self.train_seconds = self.dist.broadcast_float(self.train_seconds, str(self.device))
        elapsed = time.perf_counter() - start
        mean_loss = self.dist.mean_float(float(np.mean(losses)) if losses else math.nan, str(self.device))
        shared = ({} if self.cores is None else
                  {"threads": self.cores.threads, "others_busy_cores": round(self.cores.others, 2)})
        return {"train_loss": mean_loss, "steps": len(losses),
                "train_time_s": elapsed, "step_time_s": elapsed / max(len(losses), 1),
                "data_wait_share": wait / max(elapsed, 1e-9), "seed": self.options.seed, **shared}

    def train_step(self, batch: dict[str, Any]) -> float:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["seg"][:, 0].round().long().to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.loss.set_progress(self.progress())
        with autocast(self.device.type, self.precision):
            out = self.model(data)
        loss = self.loss(_as_float(out), target)  # the loss in fp32 whatever the autocast
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self, patches: list[np.ndarray]) -> dict[str, Any]:
        """Pooled per-class Dice over a fixed set of validation patches (never with background)."""
        self.network.eval()
        labels = sorted(self.class_names)
        counts = {lab: np.zeros(3, dtype=np.int64) for lab in labels}
        losses = []
        for i in range(0, len(patches), self.plans.batch_size):
            chunk = np.stack(patches[i:i + self.plans.batch_size])
            data = torch.from_numpy(chunk[:, :-1]).to(self.device)
            target = torch.from_numpy(chunk[:, -1]).round().long().to(self.device)
            with autocast(self.device.type, self.precision):
                out = self.network(data)
            out = out[0] if isinstance(out, (list, tuple)) else out
            losses.append(float(self.loss.loss(out.float(), target)))
            pred = decide(out, self.plans.regions)
            if self.space.is_partial:  # each patch annotates its own source's classes
                for p_np, r_np in zip(pred.cpu().numpy(), target.cpu().numpy()):
                    for lab, c in self.space.confusion(p_np, r_np, labels).items():
                        counts[lab] += c if c is not None else (0, 0, 0)
                continue
            for lab in labels:
                p, r = pred == lab, target == lab
                tp = int((p & r).sum())
                counts[lab] += (tp, int(p.sum()) - tp, int(r.sum()) - tp)
        dice = {lab: dice_from_counts(*counts[lab]) for lab in labels}
        return {"val_loss": float(np.mean(losses)), "val_dice": {self.class_names[k]: v for k, v in dice.items()},
                "val_mean_dice": mean_foreground(dice)}

    def _lesion_paste(self) -> LesionPasteTransform | None:
        """The recipe's lesion pasting with the bank of this fold's training lesions (None: off)."""
        r = self.recipe
        if not r.lesion_paste or r.lesion_class is None:
            return None
        # a store of its own, closed when the bank is made: the training store's open cases stay as they were
        bank = lesion_bank(CaseStore(self.data_dir, self.train_cases), r.lesion_class, r.lesion_host or 0,
                           self.plans.patch_size, self.options.seed)
        if not bank:
            log.warning("lesion pasting: no %s component of this fold's training cases fits a patch with tissue "
                        "of its host around it; nothing will be pasted", self.class_names[r.lesion_class])
        else:
            log.info("lesion pasting: %d lesions of %d training cases, p %s", len(bank), len(self.train_cases),
                     r.lesion_paste)
        return LesionPasteTransform(bank, r.lesion_paste, r.lesion_class, r.lesion_host or 0,
                                    self.plans.target_spacing, len(self.plans.labels))

    # --- the fold -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until the schedule (epochs or time budget) ends; returns the final epoch's record."""
        self.fold_dir.root.mkdir(parents=True, exist_ok=True)
        train_store = CaseStore(self.data_dir, self.train_cases)
        val_store = CaseStore(self.data_dir, self.val_cases)
        val = validation_patches(val_store, self.plans.patch_size, self.options.val_patches_per_case,
                                 self.options.seed, self.recipe.edge_context or 0.0)
        stream = make_train_stream(train_store, self.plans.patch_size, self.plans.augmentation,
                                   self.plans.batch_size, self.recipe.oversample_foreground,
                                   self.options.seed + 1000 * self.epoch + 7919 * self.dist.rank,
                                   self.options.workers, self.recipe.sampler, self.recipe.class_contrast or 0.0,
                                   len(self.plans.labels), self.recipe.edge_context or 0.0,
                                   self._lesion_paste())
        summary = None
        try:
            while not self.finished():
                record = self._one_epoch(stream, val)
                if record.get("early_stop"):
                    break
        finally:
            if hasattr(stream, "_finish"):
                stream._finish()
        if self.dist.is_main and (self.finished() or (self.epochs_log and self.epochs_log[-1].get("early_stop"))):
            if self.options.final_validation:
                window = WindowOptions(device=str(self.device), precision=self.precision,
                                       between_batches=self.cores.adapt if self.cores else None,
                                       runtime=self.options.validation_runtime,
                                       edge_context=self.recipe.edge_context or 0.0)
                summary = validate_fold(self.network, self.plans, val_store, self.fold_dir.validation.root, window)
            save_checkpoint(self.fold_dir.final, self._state())
        self.dist.barrier()
        record = dict(self.epochs_log[-1]) if self.epochs_log else {}
        if summary is not None:
            record["final_validation"] = {"mean_dice": dict(summary.mean_dice),
                                          "mean_foreground_dice": summary.mean_foreground_dice}
        return record

    def _one_epoch(self, stream, val: list[np.ndarray]) -> dict[str, Any]:
        t0 = time.perf_counter()
        train = self.train_epoch(stream)
        metrics = self.validate(val)
        stop = False
        if self.recipe.schedule == "plateau":
            stop = self.plateau.update(metrics["val_mean_dice"], self.recipe)
        record = {"epoch": self.epoch, **train, **metrics, "lr": self.optimizer.param_groups[0]["lr"],
                  "epoch_time_s": time.perf_counter() - t0, "progress": min(self.progress(), 1.0),
                  "early_stop": stop, "time": time.time()}
        if self.dist.enabled:
            record["world_size"] = self.dist.world_size
            record["replica_max_abs_diff"] = self.dist.check_replicas(self.network, str(self.device))
        self._warn_if_cpu_contended(record)
        record = json.loads(json.dumps(record, default=float))  # plain Python numbers for the checkpoint
        self.epochs_log.append(record)
        self.epoch += 1
        score = metrics["val_mean_dice"]
        improved = not math.isnan(score) and score > self.best
        self.best = score if improved else self.best
        if not self.dist.is_main:
            return record
        if improved:
            save_checkpoint(self.fold_dir.best, self._state())
        save_checkpoint(self.fold_dir.latest, self._state())
        write_log(self.fold_dir.log, self.epochs_log)
        plot_progress(self.fold_dir.progress_plot, self.epochs_log, self.class_names)
        log.info("fold %d epoch %d: loss %.4f, val Dice %s, %.1f s (data wait %.0f%%); %s", self.fold_dir.fold,
                 record["epoch"], record["train_loss"],
                 {k: round(v, 3) for k, v in record["val_dice"].items()}, record["epoch_time_s"],
                 100 * record["data_wait_share"], self.remaining())
        return record


    def _warn_if_cpu_contended(self, record: dict[str, Any]) -> None:
        """Say so when CPU steps take far longer than planned even after adapting the threads to
        the cores other processes leave free (autoseg.cpu_share): usually more busy processes than
        cores. A budget in steps (``--steps``, ``--compute-budget``) then still trains the planned
        model, only later; a ``--time-budget`` trains it less. A pinned plan (``--cpu-gflops``) has no
        estimate for this machine to compare with."""
        estimate = self.plans.estimates.step_time_estimate_s
        if (self.device.type != "cpu" or not estimate or not self.plans.estimates.calibrated
                or self.epoch > 3 or record["steps"] < 5):
            return
        if record["step_time_s"] > 3 * estimate:
            log.warning("fold %d: steps take %.2f s, %.0fx the planned %.2f s, with %s thread(s); other processes "
                        "keep %.1f cores busy", self.fold_dir.fold, record["step_time_s"],
                        record["step_time_s"] / estimate, estimate, record.get("threads", "?"),
                        record.get("others_busy_cores", float("nan")))


#: Least share of the planned network's parameters ``--init`` must fill for the start to count.
MIN_TRANSFERRED_SHARE = 0.5


def transfer_weights(network: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> float:
    """Copy into ``network`` every tensor of ``weights`` whose name and shape match (a pretrained
    model's encoder and decoder; not an output layer with another number of classes); returns the
    share of the network's parameters filled. Under :data:`MIN_TRANSFERRED_SHARE` it is an error:
    the plans describe another network than the one the weights came from."""
    own = network.state_dict()
    matched = {k: v for k, v in weights.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    params = dict(network.named_parameters())
    total = sum(p.numel() for p in params.values())
    filled = sum(params[k].numel() for k in matched if k in params)
    share = filled / max(1, total)
    if share < MIN_TRANSFERRED_SHARE:
        raise ConfigurationError(
            f"--init {source}: only {share:.0%} of the planned network's parameters match the model's "
            "weights (name and shape); the plans describe another network",
            fix="plan with the pretrained model's network and base features (for the synthetic model: "
                "`autoseg plan_and_preprocess -d DATASET --features 8 --network arunet`), then train again")
    own.update({k: v.to(own[k].dtype) for k, v in matched.items()})
    network.load_state_dict(own)
    skipped = sorted(set(own) - set(matched))
    shown = ", ".join(skipped[:4]) + (", ..." if len(skipped) > 4 else "")
    log.info("--init %s: %d of %d tensors (%.0f%% of the parameters) copied; %d kept their random start%s",
             source, len(matched), len(own), 100 * share, len(skipped), f" ({shown})" if skipped else "")
    return share


def _as_float(out: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]):
    if isinstance(out, (list, tuple)):
        return [o.float() for o in out]
    return out.float()
