"""Run a test function in two real gloo processes (torch.multiprocessing.spawn on CPU)."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Callable

import torch


def _entry(rank: int, world_size: int, store: str, work: Callable, args: tuple) -> None:
    # a file rendezvous: no TCP port to pick, so none another process can take in between
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    work(rank, world_size, *args)
    torch.distributed.barrier()  # no rank tears gloo down while the other still talks to it
    torch.distributed.destroy_process_group()
    # Skip interpreter finalisation: gloo's C++ threads can still be joinable when CPython tears
    # down, which aborts the process ("terminate called without an active exception", seen in
    # CI once in ~10 runs). The work is done and its files are written; a failure above still
    # raises normally and spawn reports it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_in_gloo_processes(work: Callable, args: tuple = (), world_size: int = 2, deadline_seconds: float = 600.0) -> None:
    """Call ``work(rank, world_size, *args)`` in ``world_size`` processes joined by a gloo group.

    ``work`` must be a module-level function (spawn pickles it) and reports through files. A rank
    that raises fails the caller; ranks still running after ``deadline_seconds`` (one left waiting in
    a collective) are killed and the caller fails, instead of hanging the suite.
    """
    with tempfile.TemporaryDirectory(prefix="gloo-store-") as store_dir:
        context = torch.multiprocessing.start_processes(
            _entry, args=(world_size, os.path.join(store_dir, "store"), work, args), nprocs=world_size, join=False,
            start_method="spawn")
        deadline = time.monotonic() + deadline_seconds
        try:
            while not context.join(timeout=1.0):  # raises if a rank raised
                if time.monotonic() > deadline:
                    raise AssertionError(f"the gloo ranks did not finish within {deadline_seconds} s: a rank waits in a collective")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
