"""Worker processes that die with the process that started them.

A multiprocessing worker whose parent is killed with SIGKILL (out-of-memory killer, a scheduler's
time limit, ``kill -9``) does not notice: it finishes the tasks already queued for it, writing files
nobody will use, then blocks on its task queue forever holding its memory. Call
:func:`die_with_parent` first thing in every pool initializer::

    ProcessPoolExecutor(..., initializer=die_with_parent)   # or from your own initializer

Two mechanisms, because neither covers every start method alone:

* Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker when its *direct* parent
  exits. Immediate, but under the ``forkserver`` start method the direct parent is the fork server,
  which itself stays alive as long as any worker holds its liveness pipe, so it never fires there.
  (Strictly it fires when the parent *thread* that started the worker ends: create pools from a
  thread that outlives them, as a ``with`` block does.)
* A daemon thread waiting on :func:`multiprocessing.parent_process`'s sentinel, which becomes ready
  when the process that *asked* for the worker is gone (for every start method and platform). The
  thread ends the worker with ``os._exit``. Outside multiprocessing (no sentinel) it polls
  ``os.getppid()`` instead.

Files being written when a worker dies this way are left under their temporary names
(:func:`autoseg.io.atomic_path`), never as complete-looking outputs.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
EXIT_PARENT_GONE = 70  # exit status of a worker ended by the watchdog (EX_SOFTWARE)
_POLL_S = 1.0


def die_with_parent() -> None:
    """End this process as soon as its parent process dies (call it in a pool initializer).

    Also works in a process that is not a multiprocessing child; calling it twice is harmless."""
    _set_pdeathsig()
    parent = mp.parent_process()
    sentinel = getattr(parent, "sentinel", None) if parent is not None else None
    target: Callable[[int], None]
    if sentinel is not None:
        target, args = _wait_for_sentinel, (sentinel,)
    else:
        target, args = _poll_parent_pid, (os.getppid(),)
    threading.Thread(target=target, args=args, name="autoseg-die-with-parent", daemon=True).start()


def _set_pdeathsig() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its direct parent exits; False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable (%s); relying on the watchdog thread", exc)
        return False
    return True


def _wait_for_sentinel(sentinel: int) -> None:
    """Block until the parent's sentinel is ready (the parent is gone), then exit at once."""
    try:
        multiprocessing.connection.wait([sentinel])
    except OSError:  # the sentinel was closed under us: treat like a vanished parent
        pass
    os._exit(EXIT_PARENT_GONE)


def _poll_parent_pid(parent_pid: int) -> None:
    """Exit at once when this process is re-parented (its parent died); for non-multiprocessing use."""
    while os.getppid() == parent_pid:
        time.sleep(_POLL_S)
    os._exit(EXIT_PARENT_GONE)
