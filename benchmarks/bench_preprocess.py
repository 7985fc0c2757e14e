"""Plan-and-preprocess benchmark: autoseg against nnU-Net v2 on the same synthetic Task08-like data.

Generates a hepatic-vessel task with autoseg's phantom generator (MSD layout, read by autoseg), links
it into an nnU-Net v2 raw dataset (Dataset008_HepaticVessel), and runs each tool's plan-and-preprocess
command in a fresh process with the same number of worker processes. For each run it measures the wall
time and the peak memory of the whole process tree (the tool forks workers, so the resident set sizes
of all processes in its session are summed every 0.1 s; the proportional set size, which counts pages
shared between forked workers once, is reported beside it). Results go to
``benchmarks/results/preprocess.json``; ``docs/benchmarks.md`` keeps the latest figures.

Not run by CI. Needs ``benchmarks/setup_nnunet.sh`` run first (nnU-Net in its own venv) and Linux
(/proc). Run from the repository root::

    .venv/bin/python benchmarks/bench_preprocess.py              # 10 cases, ~512x512, 40-120 slices
    .venv/bin/python benchmarks/bench_preprocess.py --small      # 4 small cases, a quick check
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
DATASET = "Dataset008_HepaticVessel"
MSD_TASK = "Task08_HepaticVessel"
#: Spacing ((z, y, x) low, high) in mm, drawn per case. The phantom's field of view is 220 x 350 x
#: 350 mm, so this gives 449-515 voxels in-plane and 44-122 slices: close to MSD Task08's portal
#: venous CT (512 x 512, 0.6-1.0 mm; slices 1.5-8 mm).
FULL_SPACING = ((1.8, 0.68, 0.68), (5.0, 0.78, 0.78))
#: --small: 220-250 voxels in-plane, 44-73 slices.
SMALL_SPACING = ((3.0, 1.4, 1.4), (5.0, 1.6, 1.6))
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- process-tree memory sampling ----------------------------------------------------------------

def _session_pids(sid: int) -> list[int]:
    """Pids of every live process in session ``sid`` (the tool and all its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != b"Z":  # field 6 (session); skip zombies
            pids.append(int(entry))
    return pids


def _rss(pid: int) -> int:
    """Resident set size of one process in bytes (0 if it is gone); cheap: reads ``statm``."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 if it is gone).

    Expensive: the kernel walks the process's page tables under its memory-map lock. Measured on
    the 2-core VM against a training process (1.3 GiB): 37 ms per read of two processes, and read
    at 10 Hz it slowed the training steps it watched from 0.46 to 0.62 s.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _process_name(pid: int) -> str:
    """A short name for a process: its command line, cut to 80 characters."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


@dataclass
class MemoryPeak:
    """Peaks of the summed RSS and PSS over a session, sampled by a background thread.

    ``stage`` is set by the output reader; ``stage_rss`` keeps the peak RSS seen during each stage.
    RSS is read every ``interval`` s; PSS (costly to read, see ``_pss``) only while the RSS sum
    grows and, near its peak, every ``pss_interval`` s, so the PSS peak is a lower bound (shared
    pages can put it where the RSS sum is not near its own peak).
    """

    sid: int
    interval: float = 0.1
    pss_interval: float = 5.0
    rss: int = 0
    pss: int = 0
    max_procs: int = 0
    samples: int = 0
    stage: str = "startup"
    stage_rss: dict[str, int] = field(default_factory=dict)
    at_peak: list[tuple[str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        last_pss, rss_at_pss = -math.inf, 0
        while not self._stop.is_set():
            pids = _session_pids(self.sid)
            sizes = [_rss(p) for p in pids]
            rss = sum(sizes)
            now = time.monotonic()
            # PSS while the tree grows (3 % past the last read) and, near the RSS peak, every
            # pss_interval s: where its own peak can lie, without reading it at 10 Hz
            grown = rss > 1.03 * rss_at_pss
            near_peak = rss >= 0.97 * self.rss and now - last_pss >= self.pss_interval
            if rss and (grown or near_peak):
                self.pss = max(self.pss, sum(_pss(p) for p in pids))
                last_pss, rss_at_pss = now, rss
            if rss > self.rss:
                self.rss = rss
                self.at_peak = [(_process_name(p), s) for p, s in zip(pids, sizes)]
            self.stage_rss[self.stage] = max(self.stage_rss.get(self.stage, 0), rss)
            self.max_procs = max(self.max_procs, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


# --- running one tool ------------------------------------------------------------------------------

@dataclass
class RunResult:
    tool: str
    command: list[str]
    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    max_processes: int
    memory_samples: int
    stages_s: dict[str, float]
    stage_peak_rss_bytes: dict[str, int]
    rss_by_process_at_peak: list[tuple[str, int]]
    load_avg_before: list[float]
    load_avg_after: list[float]
    log: str


def _output_lines(fd: int):
    """Lines of a pipe split at newlines and carriage returns, so progress bars are seen as they move."""
    buf = b""
    while chunk := os.read(fd, 65536):
        buf += chunk
        *done, buf = re.split(rb"[\r\n]", buf)
        yield from (d.decode(errors="replace").rstrip() for d in done if d.strip())
    if buf.strip():
        yield buf.decode(errors="replace").rstrip()


def run_measured(tool: str, cmd: list[str], env: dict[str, str], log_path: Path,
                 stage_markers: dict[str, str], timeout: float) -> RunResult:
    """Run ``cmd`` in a new session; time it, sample its tree's memory, timestamp its output lines.

    ``stage_markers`` maps a stage name to a substring of the output line that starts it; a stage
    lasts until the next marker seen (or the end of the run).
    """
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=BENCH / "work")
    peak = MemoryPeak(sid=proc.pid)
    sampler = threading.Thread(target=peak.run, daemon=True)
    sampler.start()
    killer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))  # the whole session
    killer.start()
    starts: dict[str, float] = {}
    lines = []
    assert proc.stdout is not None
    try:
        for line in _output_lines(proc.stdout.fileno()):
            now = time.perf_counter() - t0
            lines.append(f"{now:8.2f} {line}")
            for stage, marker in stage_markers.items():
                if stage not in starts and marker in line:
                    starts[stage] = now
                    peak.stage = stage
        proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        killer.cancel()
    wall = time.perf_counter() - t0
    if wall >= timeout:
        lines.append(f"killed after {timeout:.0f} s (--timeout)")
    peak.stop()
    sampler.join()
    log_path.write_text("\n".join(lines) + "\n")
    ordered = sorted(starts.items(), key=lambda kv: kv[1])
    stages = {"startup": round(ordered[0][1], 2)} if ordered else {}
    stages.update({name: round((ordered[i + 1][1] if i + 1 < len(ordered) else wall) - t, 2)
                   for i, (name, t) in enumerate(ordered)})
    result = RunResult(tool, cmd, proc.returncode, round(wall, 2), peak.rss, peak.pss, peak.max_procs,
                       peak.samples, stages, dict(peak.stage_rss), peak.at_peak, load_before,
                       [round(x, 2) for x in os.getloadavg()],
                       str(log_path.relative_to(REPO) if log_path.is_relative_to(REPO) else log_path))
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}), see {log_path}"
    print(f"{tool}: {status}; wall {wall:.1f} s, peak RSS {peak.rss / 2**30:.2f} GiB "
          f"(PSS {peak.pss / 2**30:.2f} GiB, {peak.max_procs} processes), stages {stages}", flush=True)
    if proc.returncode != 0:
        print("\n".join(lines[-25:]))
    return result


# --- data ------------------------------------------------------------------------------------------

def make_task(work: Path, cases: int, small: bool, seed: int) -> Path:
    """Write (or keep, if current) the phantom task in MSD layout; return its folder."""
    from autoseg.phantom import write_task

    spacing = SMALL_SPACING if small else FULL_SPACING
    t0 = time.perf_counter()
    root = write_task(work / ("msd-small" if small else "msd"), "Task08", num_training=cases, num_test=0,
                      seed=seed, spacing_range=spacing)
    print(f"phantom task {root} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return root


def to_nnunet_raw(msd: Path, raw_root: Path) -> Path:
    """Link the MSD task into an nnU-Net v2 raw dataset (imagesTr/*_0000.nii.gz, labelsTr, dataset.json)."""
    meta = json.loads((msd / "dataset.json").read_text())
    out = raw_root / DATASET
    if out.exists():
        shutil.rmtree(out)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    for pair in meta["training"]:
        name = Path(pair["image"]).name
        case = name[: -len(".nii.gz")]
        _link(msd / "imagesTr" / name, out / "imagesTr" / f"{case}_0000.nii.gz")
        _link(msd / "labelsTr" / name, out / "labelsTr" / name)
    dataset_json = {
        "name": meta["name"],
        "description": meta["description"],
        "channel_names": {k: v for k, v in meta["modality"].items()},
        "labels": {name: int(ident) for ident, name in meta["labels"].items()},
        "numTraining": len(meta["training"]),
        "file_ending": ".nii.gz",
    }
    (out / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def describe_cases(msd: Path) -> dict[str, Any]:
    """Shapes (z, y, x) and spacings (z, y, x) of the training images, read from their headers."""
    import SimpleITK as sitk

    shapes, spacings = [], []
    for path in sorted((msd / "imagesTr").glob("*.nii.gz")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        shapes.append(list(reader.GetSize()[::-1]))
        spacings.append([round(s, 3) for s in reader.GetSpacing()[::-1]])
    voxels = sum(z * y * x for z, y, x in shapes)
    return {"cases": len(shapes), "shapes_zyx": shapes, "spacings_zyx_mm": spacings,
            "total_voxels": voxels,
            "raw_bytes_on_disk": _tree_bytes(msd / "imagesTr") + _tree_bytes(msd / "labelsTr")}


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


# --- what each tool produced -----------------------------------------------------------------------

def nnunet_outputs(pre: Path) -> dict[str, Any]:
    plans_path = pre / DATASET / "nnUNetPlans.json"
    if not plans_path.is_file():
        return {"error": f"{plans_path} missing"}
    plans = json.loads(plans_path.read_text())
    out: dict[str, Any] = {"plans_file": str(plans_path.relative_to(REPO)), "configurations": {}}
    for name, cfg in plans["configurations"].items():
        if "spacing" not in cfg:
            continue
        folder = pre / DATASET / cfg.get("data_identifier", "")
        out["configurations"][name] = {
            "target_spacing_zyx_mm": [round(s, 3) for s in cfg["spacing"]],
            "patch_size": cfg["patch_size"], "batch_size": cfg["batch_size"],
            "median_image_size": cfg["median_image_size_in_voxels"],
            "network": cfg["architecture"]["network_class_name"].rsplit(".", 1)[-1],
            "preprocessed": folder.is_dir(),
            "output_bytes": _tree_bytes(folder),
        }
    out["gt_segmentations_bytes"] = _tree_bytes(pre / DATASET / "gt_segmentations")
    out["total_output_bytes"] = _tree_bytes(pre / DATASET)
    return out


def autoseg_outputs(pre: Path) -> dict[str, Any]:
    folder = pre / MSD_TASK
    plans_path = folder / "plans.json"
    if not plans_path.is_file():
        return {"error": f"{plans_path} missing"}
    plans = json.loads(plans_path.read_text())
    est = plans.get("estimates", {})
    return {
        "plans_file": str(plans_path.relative_to(REPO)),
        "target_spacing_zyx_mm": plans.get("target_spacing"),
        "patch_size": plans.get("patch_size"), "batch_size": plans.get("batch_size"),
        "median_shape": plans.get("median_shape"),
        "network": plans.get("network", {}).get("name"),
        "step_time_measured_s": est.get("step_time_measured_s"),
        "cases_written": len([p for p in (folder / "data").glob("*.json") if not p.name.startswith(".")]),
        "output_bytes": _tree_bytes(folder / "data"),
        "total_output_bytes": _tree_bytes(folder),
    }


# --- machine ---------------------------------------------------------------------------------------

def _venv_versions(python: Path, packages: list[str]) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, platform, sys\n"
            f"v = {{p: (m.version(p) if p in {{d.metadata['Name'].lower() for d in m.distributions()}} "
            f"else None) for p in {packages!r}}}\n"
            "v['python'] = platform.python_version()\nprint(json.dumps(v))")
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
        return json.loads(out)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        return {"error": str(exc)}


def source_commit() -> tuple[str, str]:
    """(short commit, uncommitted changes) of the code that runs. A copy made with ``git archive``
    (how a long benchmark runs while the checkout changes) has no git of its own: it names its commit
    in ``AUTOSEG_COMMIT`` (which wins where set), or the figures say it is unknown rather than naming
    none, or the HEAD of a checkout it was unpacked in."""
    if os.environ.get("AUTOSEG_COMMIT"):
        return os.environ["AUTOSEG_COMMIT"], ""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO, capture_output=True, text=True)
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO.resolve() or not found.stdout.strip():
        return "unknown (no git checkout of its own: set AUTOSEG_COMMIT)", ""  # not another checkout's HEAD
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return found.stdout.strip(), dirty


def commit_label() -> str:
    """:func:`source_commit` as the figures name it: the commit, ``+uncommitted`` where the checkout
    has changes (read when called: a long benchmark's checkout may move between its rows)."""
    commit, dirty = source_commit()
    return commit + ("+uncommitted" if dirty else "")


def machine_info(nnunet_python: Path) -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")).split()[1]) * 1024
    return {
        "cpu": model, "cores": os.cpu_count(), "ram_gib": round(mem / 2**30, 1),
        "os": platform.platform(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "autoseg_commit": commit_label(),
        "autoseg_venv": _venv_versions(Path(sys.executable), ["torch", "numpy", "scipy", "simpleitk"]),
        "nnunet_venv": _venv_versions(nnunet_python, ["nnunetv2", "torch", "numpy", "scipy", "simpleitk",
                                                      "blosc2"]),
    }


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=None, help="training cases (default 10; 4 with --small)")
    p.add_argument("--small", action="store_true", help="coarse spacing (~240x240 in-plane): a quick run")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes for both tools (default 2)")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool, alternating; medians reported")
    p.add_argument("--tools", nargs="+", choices=("nnunet", "autoseg"), default=["nnunet", "autoseg"])
    p.add_argument("--nnunet-all-configs", action="store_true",
                   help="also time nnU-Net's default command (2d, 3d_fullres, 3d_lowres)")
    p.add_argument("--autoseg-cached", action="store_true",
                   help="also time autoseg with this machine's CPU calibration already cached")
    p.add_argument("--autoseg-args", default="", help="extra arguments for autoseg plan_and_preprocess")
    p.add_argument("--nnunet-venv", type=Path, default=BENCH / ".venv-nnunet")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a run is killed")
    p.add_argument("--output", type=Path, default=BENCH / "results" / "preprocess.json")
    args = p.parse_args(argv)
    if args.cases is None:
        args.cases = 4 if args.small else 10
    return args


Run = tuple[str, list[str], dict[str, str], Path, dict[str, str]]


def tool_runs(args: argparse.Namespace, work: Path, msd_root: Path) -> list[Run]:
    """(name, command, env, folder to clear first, stage markers) for each requested run."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "AUTOSEG_"))}
    nn_env = {**base, "nnUNet_raw": str(work / "nnUNet_raw"),
              "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
              "nnUNet_results": str(work / "nnUNet_results")}
    as_env = {**base, "AUTOSEG_RAW": str(msd_root),
              "AUTOSEG_PREPROCESSED": str(work / "autoseg_preprocessed"),
              "AUTOSEG_CACHE": str(work / "autoseg_preprocessed"),
              "AUTOSEG_RESULTS": str(work / "autoseg_results")}
    nn_bin = args.nnunet_venv / "bin" / "nnUNetv2_plan_and_preprocess"
    w = str(args.workers)
    nn_markers = {"fingerprint": "Fingerprint extraction...", "plan": "Experiment planning...",
                  "preprocess": "Preprocessing..."}
    as_markers = {"fingerprint": "fingerprint:", "plan": "fingerprint: wrote",
                  "preprocess": "plan: wrote"}
    runs = []
    if "nnunet" in args.tools:
        runs.append(("nnunet_3d_fullres", [str(nn_bin), "-d", "8", "-c", "3d_fullres", "-np", w, "-npfp", w],
                     nn_env, work / "nnUNet_preprocessed" / DATASET, nn_markers))
    if "autoseg" in args.tools:
        cmd = [str(REPO / ".venv" / "bin" / "autoseg"), "plan_and_preprocess", "-d", "8", "-j", w]
        # a first run on this machine: clears the whole folder, the CPU calibration cache included
        runs.append(("autoseg", cmd + shlex.split(args.autoseg_args), as_env,
                     work / "autoseg_preprocessed", as_markers))
        if args.autoseg_cached:  # a later run: the calibration cached by the run above is reused
            runs.append(("autoseg_cached_calibration", cmd + shlex.split(args.autoseg_args),
                         as_env, work / "autoseg_preprocessed" / MSD_TASK, as_markers))
    if "nnunet" in args.tools and args.nnunet_all_configs:  # run in the first repetition only
        runs.append(("nnunet_all_configs", [str(nn_bin), "-d", "8", "-np", w, "-npfp", w], nn_env,
                     work / "nnUNet_preprocessed" / DATASET, nn_markers))
    return runs


def summarise(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Median wall and peak memory per tool over its successful repeats; failures are counted."""
    out: dict[str, dict[str, Any]] = {}
    for tool in dict.fromkeys(r.tool for r in results):
        every = [r for r in results if r.tool == tool]
        rs = [r for r in every if r.returncode == 0]
        out[tool] = {"runs": len(every), "failed": len(every) - len(rs), "all_ok": len(rs) == len(every)}
        if not rs:
            continue
        mid = sorted(rs, key=lambda r: r.wall_s)[(len(rs) - 1) // 2]  # the (lower) median run
        out[tool].update({
            "wall_s": round(statistics.median(r.wall_s for r in rs), 2),
            "wall_s_range": [min(r.wall_s for r in rs), max(r.wall_s for r in rs)],
            "peak_rss_gib": round(statistics.median(r.peak_rss_bytes for r in rs) / 2**30, 3),
            "peak_pss_gib": round(statistics.median(r.peak_pss_bytes for r in rs) / 2**30, 3),
            "stages_s_of_median_run": mid.stages_s,
            "stage_peak_rss_gib": {k: round(v / 2**30, 3) for k, v in mid.stage_peak_rss_bytes.items()}})
    return out


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each autoseg run's median wall and peaks divided by nnU-Net 3d_fullres's."""
    n = summary.get("nnunet_3d_fullres")
    if not (n and "wall_s" in n):
        return {}
    return {tool: {k: round(a[k] / n[k], 3) for k in ("wall_s", "peak_rss_gib", "peak_pss_gib") if n[k]}
            for tool, a in summary.items() if tool.startswith("autoseg") and "wall_s" in a}


def print_table(summary: dict[str, dict[str, Any]], ratio: dict[str, dict[str, float]]) -> None:
    print("\n| run | wall (s) | peak RSS, tree sum (GiB) | peak PSS (GiB) | stages of the median run (s) |")
    print("|---|---|---|---|---|")
    for tool, s in summary.items():
        flag = f" ({s['failed']} of {s['runs']} runs FAILED)" if s["failed"] else ""
        if "wall_s" not in s:
            print(f"| {tool}{flag} | | | | |")
            continue
        print(f"| {tool}{flag} | {s['wall_s']:.1f} | {s['peak_rss_gib']:.2f} | {s['peak_pss_gib']:.2f} | "
              f"{', '.join(f'{k} {v}' for k, v in s['stages_s_of_median_run'].items())} |")
    for tool, r in ratio.items():
        print(f"\n{tool} / nnU-Net 3d_fullres: wall {r['wall_s']:.2f}, peak RSS {r['peak_rss_gib']:.2f}, "
              f"peak PSS {r.get('peak_pss_gib', float('nan')):.2f} (target: <= 0.5 each)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = BENCH / "work"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    invocation = ".venv/bin/python benchmarks/bench_preprocess.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"command: {invocation}")
    machine = machine_info(args.nnunet_venv / "bin" / "python")
    print(f"machine: {json.dumps(machine, indent=1)}", flush=True)
    msd = make_task(work, args.cases, args.small, args.seed)
    to_nnunet_raw(msd, work / "nnUNet_raw")
    data = describe_cases(msd)
    print(f"data: {data['cases']} cases, shapes (z,y,x) {data['shapes_zyx']}, "
          f"{data['total_voxels'] / 1e6:.0f} M voxels, {data['raw_bytes_on_disk'] / 2**20:.0f} MiB on disk")
    runs = tool_runs(args, work, msd.parent)
    results: list[RunResult] = []
    outputs_by_run: dict[str, dict[str, Any]] = {}
    for rep in range(args.repeat):
        for name, cmd, env, clear, markers in runs:
            if name == "nnunet_all_configs" and rep:
                continue  # informative only: one run is enough
            shutil.rmtree(clear, ignore_errors=True)  # no tool may skip work done by an earlier run
            log = work / "logs" / f"{name}_{rep}.log"
            results.append(run_measured(name, cmd, env, log, markers, args.timeout))
            if name == "nnunet_3d_fullres":
                outputs_by_run[name] = nnunet_outputs(work / "nnUNet_preprocessed")
            elif name.startswith("autoseg"):
                outputs_by_run[name] = autoseg_outputs(work / "autoseg_preprocessed")
    summary = summarise(results)
    ratio = ratios(summary)
    print_table(summary, ratio)
    print(f"\noutputs of each command's last run: {json.dumps(outputs_by_run, indent=1)}")
    report = {"benchmark": "plan_and_preprocess", "command": invocation,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "data": data, "runs": [r.__dict__ for r in results], "summary": summary,
              "ratios_autoseg_over_nnunet_3d_fullres": ratio, "outputs_of_last_run": outputs_by_run}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {args.output}")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
