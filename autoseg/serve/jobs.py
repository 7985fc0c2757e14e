"""Prediction jobs on disk and the one worker thread that runs them, one at a time, in upload order.

Each job is a folder ``<workdir>/jobs/<id>/`` with a random hexadecimal id: the checked input under a
fixed name, ``status.json``, and when done ``labels.nii.gz`` and ``report.json``. The folders are the
only state, so a restarted server keeps earlier results and puts unfinished jobs back in the queue.

The id only names a job; reading or deleting it takes its token, a secret returned once to the
uploader. ``status.json`` keeps only the token's SHA-256, compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from autoseg.errors import AutosegError
from autoseg.io import read_json, write_json
from autoseg.layout import JobFolder
from autoseg.serve.security import StoredInput, UploadError

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[0-9a-f]{16}")
TOKEN_BYTES = 32                       # 256 random bits per job token
FINISHED = ("done", "failed")
#: Predicts ``input`` into ``job_dir`` (``labels.nii.gz``, ``report.json``); returns the report.
Runner = Callable[[Path, Path, str], dict[str, Any]]


@dataclass
class JobStore:
    """The job folders under ``root``; every read and write of a status goes through here."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.owner: IO[str] | None = None

    def claim(self, lock: Path) -> None:
        """Hold the file ``lock`` open and locked so that a second server cannot run the same jobs."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no claim
            return
        handle = open(lock, "w")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise AutosegError("another `autoseg serve` is using this folder", lock.parent,
                               "stop the other server, or give this one another --workdir") from None
        self.owner = handle

    def release(self) -> None:
        if self.owner is not None:
            self.owner.close()
            self.owner = None

    def folder(self, job_id: str) -> Path:
        """The folder of an existing job; ids are checked against a pattern before any path is made."""
        if not JOB_ID.fullmatch(job_id) or not JobFolder(self.root / job_id).status.is_file():
            raise UploadError(f"no result with id '{job_id[:40]}'", 404, "it may have been deleted; "
                              "reload the page for the current list")
        return self.root / job_id

    def new_folder(self) -> tuple[str, Path]:
        job_id = secrets.token_hex(8)
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def authorised(self, job_id: str, token: str) -> dict[str, Any]:
        """A job's status when ``token`` is its token; otherwise the same 404 as for a missing job, so
        that a guessed id tells nothing."""
        try:
            status = self.status(job_id)
        except UploadError:
            status = {}
        expected = status.get("token_sha256", "")
        if not (token and expected and hmac.compare_digest(token_digest(token), expected)):
            raise UploadError("no result with this id and token", 404,
                              "open the result from the page it was uploaded from; it may have been deleted")
        return status

    def status(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            return dict(read_json(JobFolder(self.folder(job_id)).status))

    def write(self, job_id: str, status: dict[str, Any]) -> None:
        with self.lock:
            if (self.root / job_id).is_dir():
                write_json(JobFolder(self.root / job_id).status, status)

    def update(self, job_id: str, **changes: Any) -> dict[str, Any] | None:
        """Change fields of a job's status; None when the job was deleted meanwhile."""
        with self.lock:
            try:
                status = self.status(job_id)
            except UploadError:
                return None
            status.update(changes)
            self.write(job_id, status)
            return status

    def prune(self, keep: int | None, ttl_s: float | None, now: float) -> list[str]:
        """Delete the folders of finished jobs beyond the newest ``keep`` or finished more than
        ``ttl_s`` seconds ago (None: no such limit); waiting and running jobs are never deleted."""
        with self.lock:
            finished = sorted((s for s in self.all() if s["state"] in FINISHED), key=_finished_at, reverse=True)
            kept = finished if keep is None else finished[:keep]
            doomed = finished[len(kept):] + [s for s in kept if ttl_s is not None and _finished_at(s) < now - ttl_s]
            for status in doomed:
                shutil.rmtree(self.root / status["id"], ignore_errors=True)
            return [s["id"] for s in doomed]

    def all(self) -> list[dict[str, Any]]:
        """Every job's status, newest first."""
        with self.lock:
            found = []
            for path in self.root.glob(f"*/{JobFolder.STATUS}"):
                if JOB_ID.fullmatch(path.parent.name):
                    found.append(read_json(path))
            return sorted(found, key=lambda s: -s["created"])

    def remove_incomplete_uploads(self) -> None:
        """Folders left without a status by an upload that was cut off (server stopped mid-upload)."""
        for folder in self.root.iterdir():
            if folder.is_dir() and not JobFolder(folder).status.is_file():
                shutil.rmtree(folder, ignore_errors=True)


def _finished_at(status: dict[str, Any]) -> float:
    return float(status.get("finished") or status["created"])


def new_token() -> str:
    """A job's secret: unguessable, URL-safe, handed only to the uploader."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_status(job_id: str, token: str, name: str, stored: StoredInput, upload_bytes: int) -> dict[str, Any]:
    return {"id": job_id, "token_sha256": token_digest(token), "name": name, "state": "queued", "message": "",
            "created": time.time(), "started": None, "finished": None,
            "input": {"kind": stored.kind, "bytes": upload_bytes, "size_zyx": list(stored.size_zyx),
                      "file": stored.path.name}}


@dataclass(frozen=True)
class Retention:
    """How long finished jobs are kept: the newest ``keep`` of them, none older than ``ttl_s``."""

    keep: int | None = 100
    ttl_s: float | None = 7 * 24 * 3600.0


class Worker:
    """One background thread taking job ids from a FIFO queue; the server answers while it predicts.

    At most ``max_queue`` jobs wait: an upload reserves its place (:meth:`reserve`) before its body is
    read, so concurrent uploads cannot all pass the check; the place is taken by :meth:`submit` or
    given back by :meth:`release`. ``forget`` is told of every job folder deleted by retention.
    """

    def __init__(self, store: JobStore, runner: Runner, after: Callable[[Path], dict[str, Any]] | None = None,
                 max_queue: int = 16, retention: Retention | None = None,
                 forget: Callable[[str], None] | None = None):
        self.store, self.runner, self.after = store, runner, after
        self.max_queue, self.retention = max_queue, retention or Retention()
        self.forget = forget or (lambda job_id: None)
        self.reserved = 0
        self.pending: deque[str] = deque()
        self.current: str | None = None
        self.cond = threading.Condition(store.lock)
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.seconds_per_voxel: float | None = None

    def start(self) -> None:
        """Resume unfinished jobs of an earlier run in upload order, then start the thread."""
        self.store.remove_incomplete_uploads()
        for status in sorted(self.store.all(), key=lambda s: s["created"]):
            if status["state"] in ("queued", "running"):
                self.store.update(status["id"], state="queued", started=None)
                self.pending.append(status["id"])
            elif status["state"] == "done" and status.get("seconds_per_voxel"):
                self.seconds_per_voxel = status["seconds_per_voxel"]
        self.prune()
        self.thread = threading.Thread(target=self._loop, name="autoseg-predict", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)

    def reserve(self) -> None:
        """Take a place in the queue for an upload about to be read; refuse (429) when it is full."""
        with self.cond:
            if len(self.pending) + self.reserved >= self.max_queue:
                raise UploadError(f"{self.max_queue} uploads are already waiting", 429,
                                  "try again when some have finished")
            self.reserved += 1

    def release(self) -> None:
        """Give back the place of an upload that was refused."""
        with self.cond:
            self.reserved -= 1

    def submit(self, job_id: str) -> None:
        """Queue an accepted upload in the place it reserved."""
        with self.cond:
            self.reserved -= 1
            self.pending.append(job_id)
            self.cond.notify_all()

    def prune(self) -> None:
        """Apply the retention limits to the finished jobs."""
        for job_id in self.store.prune(self.retention.keep, self.retention.ttl_s, time.time()):
            log.info("job %s: deleted by the retention limits", job_id)
            self.forget(job_id)

    def queued(self) -> int:
        with self.cond:
            return len(self.pending)

    def position(self, job_id: str) -> int | None:
        """1 for the next job to run, 2 for the one after, ...; None when not waiting."""
        with self.cond:
            return self.pending.index(job_id) + 1 if job_id in self.pending else None

    def delete(self, job_id: str) -> None:
        """Delete a job's folder; a job being predicted right now cannot be deleted."""
        with self.cond:
            folder = self.store.folder(job_id)
            if self.current == job_id:
                raise UploadError("this result is being predicted right now", 409,
                                  "delete it when its prediction has finished")
            if job_id in self.pending:
                self.pending.remove(job_id)
            shutil.rmtree(folder)

    def _next(self) -> str | None:
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return None
            self.current = self.pending.popleft()
            return self.current

    def _loop(self) -> None:
        while (job_id := self._next()) is not None:
            try:
                self._run(job_id)
            finally:
                with self.cond:
                    self.current = None
            self.prune()

    def _run(self, job_id: str) -> None:
        status = self.store.update(job_id, state="running", started=time.time())
        if status is None:
            return
        folder = self.store.root / job_id
        name = status["name"]
        log.info("job %s (%s): predicting", job_id, name)
        try:
            self.runner(folder, folder / status["input"]["file"], name)
            extra = self.after(folder) if self.after else {}
        except AutosegError as exc:
            self._fail(job_id, str(exc).replace(str(folder / status["input"]["file"]), name))
            return
        except Exception as exc:  # a bug must fail one job, never the worker thread
            log.exception("job %s failed", job_id)
            self._fail(job_id, f"prediction failed with an internal error: {type(exc).__name__}: {exc}")
            return
        finished = time.time()
        voxels = max(1, int(status["input"]["size_zyx"][0]) * int(status["input"]["size_zyx"][1])
                     * int(status["input"]["size_zyx"][2]))
        rate = (finished - status["started"]) / voxels
        self.seconds_per_voxel = rate
        self.store.update(job_id, state="done", finished=finished, seconds_per_voxel=rate, **extra)
        log.info("job %s (%s): done in %.1f s", job_id, name, finished - status["started"])

    def _fail(self, job_id: str, message: str) -> None:
        log.warning("job %s failed: %s", job_id, message)
        self.store.update(job_id, state="failed", finished=time.time(), message=message)

    def estimate(self, status: dict[str, Any]) -> float | None:
        """Expected seconds for a job, from the speed of the last finished one (None before any)."""
        if self.seconds_per_voxel is None:
            return None
        size = status["input"]["size_zyx"]
        return round(self.seconds_per_voxel * size[0] * size[1] * size[2], 1)
