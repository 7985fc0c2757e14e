"""Sharing the CPU with other processes: PyTorch's intra-op threads follow the cores left free.

PyTorch's OpenMP threads spin at every barrier. When another process keeps one of the cores busy,
a spinning thread holds a core that the thread it waits for needs, and every parallel region waits
for a time slice: on the 2-core AMD EPYC machine a training step of the demo plan took 0.50 s idle
and 8.6-11.4 s beside one Python busy loop with 2 threads, 1.4-2.0 s with 1 thread (with three
other jobs running, /tmp measurement of 2026-12-04; docs/benchmarks.md has the benchmark).
``OMP_WAIT_POLICY=PASSIVE`` avoids the spin but costs ~18 % on an idle machine and can only be set
before the OpenMP runtime starts.

So autoseg watches the machine instead. :class:`CoreShare` measures, over a few seconds, how many
cores the processes outside this one's process tree keep busy (``/proc/stat`` for the cores this
process may run on, less this process and its descendants, e.g. the augmentation workers) and sets
``torch.set_num_threads`` to the cores left free, at least one. It is called between steps (and
between sliding-window batches), from the thread that runs the network, because OpenMP's thread
count is a property of the calling thread. On an idle machine it keeps every core and costs one
read of a few ``/proc`` files every ``interval_s`` seconds.

Where ``/proc`` is absent (not Linux) it keeps every core, as autoseg did before.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Share of a core another process must keep busy before autoseg leaves that core to it: a browser
#: tab or an editor below this does not cost a thread; a busy loop (1.0) or a second training does.
TAKEN_CORE_SHARE = 0.5


def usable_cores() -> list[int]:
    """The CPU ids this process may run on (its affinity mask: a container's cpuset, ``taskset``)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _cores_busy_seconds(cores: list[int]) -> float | None:
    """Busy seconds of ``cores`` since boot (user, nice, system, irq, softirq, steal), from /proc/stat."""
    wanted = {f"cpu{c}" for c in cores}
    busy = 0.0
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                name, *values = line.split()
                if name in wanted:
                    v = [float(x) for x in values[:8]]
                    busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    except (OSError, ValueError):
        return None
    return busy / os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) of every process in /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # ended while we looked
            continue
        fields = text[text.rfind(")") + 2:].split()  # after the command name, which may hold spaces
        table[int(entry.name)] = (int(fields[1]), (float(fields[11]) + float(fields[12])) / tick)
    return table


def own_tree(root: int | None = None) -> dict[int, float]:
    """CPU seconds used so far by process ``root`` (default: this one, all its threads) and by every
    living descendant, by PID."""
    root = os.getpid() if root is None else root
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return out


def own_tree_seconds(root: int | None = None) -> float:
    """CPU seconds used so far by process ``root`` (default: this one) and its living descendants."""
    return sum(own_tree(root).values())


@dataclass
class CpuSample:
    wall: float
    cores_busy: float
    #: CPU seconds so far of this process tree, by PID.
    own: dict[int, float]


def sample_cpu(cores: list[int]) -> CpuSample | None:
    busy = _cores_busy_seconds(cores)
    if busy is None:
        return None
    return CpuSample(time.monotonic(), busy, own_tree())


def others_busy_cores(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Cores kept busy by processes outside this process tree between two samples."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    if any(pid not in after.own for pid in before.own):
        # a process of ours ended in between: its last seconds left our tree (they would read as
        # others' load, or as a drop of ours); this interval says nothing reliable
        return None
    own = sum(seconds - before.own.get(pid, 0.0) for pid, seconds in after.own.items())
    others = (after.cores_busy - before.cores_busy) - own
    return max(0.0, others / (after.wall - before.wall))


def threads_for(cores: int, others: float) -> int:
    """Threads to run with when other processes keep ``others`` of ``cores`` cores busy."""
    taken = math.floor(others + (1.0 - TAKEN_CORE_SHARE))
    return max(1, min(cores, cores - taken))


@dataclass
class CoreShare:
    """Keeps ``torch.set_num_threads`` at the cores other processes leave free (see module doc).

    ``adapt()`` is cheap to call often: it looks at the machine at most every ``interval_s``
    seconds. ``history`` keeps (seconds since start, others' busy cores, threads) at each change.
    """

    enabled: bool = True
    interval_s: float = 2.0
    cores: list[int] = field(default_factory=usable_cores)
    #: The most threads to use (default: one per usable core).
    max_threads: int = 0
    threads: int = 0
    others: float = 0.0
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.max_threads = self.max_threads or len(self.cores)
        self.threads = self.max_threads
        torch.set_num_threads(self.threads)
        self._start = time.monotonic()
        self._last = sample_cpu(self.cores) if self.enabled else None

    def adapt(self) -> int:
        """Re-measure the machine if ``interval_s`` has passed, set the thread count; returns it."""
        if not self.enabled or self._last is None or time.monotonic() - self._last.wall < self.interval_s:
            return self.threads
        now = sample_cpu(self.cores)
        others = others_busy_cores(self._last, now)
        self._last = now
        if others is None:
            return self.threads
        self.others = others
        wanted = min(self.max_threads, threads_for(len(self.cores), others))
        if wanted != self.threads:
            log.info("other processes keep %.1f of %d cores busy: computing with %d thread%s (was %d)",
                     others, len(self.cores), wanted, "" if wanted == 1 else "s", self.threads)
            self.threads = wanted
            torch.set_num_threads(wanted)
            self.history.append((round(time.monotonic() - self._start, 1), round(others, 2), wanted))
        return self.threads


def configure_threads(device: str, threads: int | None = None) -> CoreShare | None:
    """On CPU, a :class:`CoreShare`: ``threads`` fixed, or (None) every usable core, fewer while
    other processes keep cores busy. CUDA runs are left alone."""
    if device != "cpu":
        return None
    return CoreShare(enabled=threads is None, max_threads=threads or 0)
