"""Scaling out: one fold data-parallel over 2 processes (torchrun, gloo on CPU), and two folds as
Ray tasks on a local Ray instance."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.io import read_json
from autoseg.phantom import write_task
from tests.optional import requires_extra
from tests.workspaces import autoseg_env

PLAN = ["plan_and_preprocess", "-d", "8", "--cpu-gflops", "20", "-j", "1", "--step-time", "0.3"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("scale")
    write_task(root / "raw", task="Task08", num_training=5, num_test=0, seed=5,
               spacing_range=((4.0, 3.5, 3.5), (5.0, 4.0, 4.0)))
    env = autoseg_env(root)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(PLAN) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return {**os.environ, **env, "OMP_NUM_THREADS": "1"}


def _fold(env: dict[str, str], fold: int) -> Path:
    return Path(env["AUTOSEG_RESULTS"]) / "Task08_HepaticVessel" / "arunet" / f"fold_{fold}"


def _run(cmd: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_torchrun_two_processes_keep_replicas_identical(workspace: dict[str, str]) -> None:
    """Each rank draws different patches (its data seed is offset by the rank); only the gradient
    all-reduce keeps the replicas equal, which the trainer checks against rank 0 every epoch."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "autoseg", "train", "-d", "8", "-f", "0", "--epochs", "2", "--iterations", "3", "-j", "0"]
    _run(cmd, workspace)
    fold = _fold(workspace, 0)
    lines = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [0, 1]
    assert all(e["world_size"] == 2 and e["replica_max_abs_diff"] == 0.0 for e in lines)
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True)
    assert state["steps"] == 6  # same schedule as one process: 2 epochs x 3 steps
    assert (fold / "validation" / "summary.json").is_file()


def _diverge_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from autoseg.training.distributed import DistContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = DistContext(rank, 2, rank)
    ctx.init("cpu")
    net = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(net.weight, 1.0 + rank)  # rank 1 differs
    try:
        ctx.check_replicas(net, "cpu")
        queue.put((rank, "no error"))
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        queue.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


def test_replica_check_detects_diverged_parameters() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_diverge_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all("replicas diverged" in results[r] for r in (0, 1)), results


@requires_extra("distributed")
def test_ray_executor_trains_two_folds_as_tasks(workspace: dict[str, str]) -> None:
    env = {**workspace, "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "autoseg", "train", "-d", "8", "-f", "1", "2", "--executor", "ray",
           "--cpus-per-fold", "1", "--epochs", "2", "--iterations", "3", "-j", "0"]
    proc = _run(cmd, env, timeout=400)
    splits = read_json(Path(workspace["AUTOSEG_PREPROCESSED"]) / "Task08_HepaticVessel" / "splits.json")
    for fold in (1, 2):
        folder = _fold(workspace, fold)
        state = torch.load(folder / "checkpoint_final.pt", weights_only=True)
        assert state["steps"] == 6
        summary = read_json(folder / "validation" / "summary.json")
        assert sorted(summary["cases"]) == sorted(splits[fold]["val"])
        assert f"fold {fold}: validation Dice" in proc.stdout


def test_gpus_without_cuda_is_a_clear_error(workspace: dict[str, str], capsys, monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for k in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS"):
        monkeypatch.setenv(k, workspace[k])
    assert main(["train", "-d", "8", "-f", "0", "--gpus", "2"]) == 2
    assert "CUDA GPU" in capsys.readouterr().err
