"""Small tensor programs replayed as CUDA graphs, so that a GPU runs them with one launch instead of one per
kernel.

A program is a function without arguments that reads and writes tensors it keeps (the same storage and
shapes on every call) and changes no Python state: the L-BFGS steps of the linear probe (``lbfgs.py``), a
few dozen kernels each over a few thousand numbers, whose launches, not their arithmetic, set the probe's
pace on a GPU. On a CUDA device a :class:`Program` runs eagerly on its first call (on the capture stream,
so that lazily created cuBLAS workspaces exist before a capture), is captured into a ``torch.cuda.CUDAGraph``
on its second call and replayed from then on. Elsewhere, or with graphs off, it simply runs.

Graphs are on by default; ``SSL_MI_CUDA_GRAPHS=0`` in the environment or :func:`set_enabled` (``False``)
turns them off. A capture that fails turns them off for the rest of the process, with one logged warning,
and the computation goes on eagerly: the user's training never stops for it. Python's cycle collector is
paused during a capture, and an owner frees its graphs with :meth:`Program.release` when done: a graph or
tensor freed by the collector in the middle of a capture would break it.

Captures share one memory pool per device, kept for the process (its size is the largest program's
scratch). That is safe because a program writes its results into tensors allocated outside the capture,
so whatever a capture allocates is scratch, and all replays run in order on the caller's stream. So the
programs of one device must run from one thread and on one stream at a time, as the probe's do. Captures
do not synchronise the device or empty the allocator's cache (``torch.cuda.graph`` would: both are costly
inside a training process).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from typing import Callable, Dict, Iterator, Optional

import torch

log = logging.getLogger(__name__)

_enabled = os.environ.get("SSL_MI_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")
_failure: Optional[str] = None  # the first failed capture: graphs are off for the process after it
_capture_lock = threading.Lock()  # CUDA allows one capture at a time per process
_streams: Dict[int, "torch.cuda.Stream"] = {}
_anchors: Dict[int, tuple] = {}  # per device: a one-kernel graph that keeps the shared pool alive, and its tensor


def set_enabled(enabled: bool) -> None:
    """Turn CUDA graphs on or off for programs made from now on and those not captured yet (the default
    comes from ``SSL_MI_CUDA_GRAPHS``). After a failed capture they stay off: the allocator may still be
    recording into the shared pool."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def switched(enabled: bool) -> Iterator[None]:
    """CUDA graphs on or off inside the ``with`` block, the previous setting restored after it."""
    previous = _enabled
    set_enabled(enabled)
    try:
        yield
    finally:
        set_enabled(previous)


def enabled() -> bool:
    """Whether new programs on a CUDA device are captured: on, and no capture has failed."""
    return _enabled and _failure is None


def failure() -> Optional[str]:
    """The error of the capture that turned graphs off, if one did."""
    return _failure


class Program:
    """``body`` run eagerly, or on ``device`` (CUDA, graphs on) captured on its second call and replayed."""

    def __init__(self, body: Callable[[], None], device: torch.device) -> None:
        self.body, self.device = body, torch.device(device)
        self.graphed = self.device.type == "cuda" and enabled()
        self.calls, self.replays = 0, 0
        self.graph: Optional["torch.cuda.CUDAGraph"] = None

    def release(self) -> None:
        """Free the graph now (a graph freed later, by Python's cycle collector in the middle of another
        capture, would break that capture)."""
        self.graph = None
        self.graphed = False

    def __call__(self) -> None:
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            self.replays += 1
        elif not (self.graphed and enabled()):
            self.body()
        elif self.calls == 1:
            _on_capture_stream(self.device, self.body)
        else:
            self.graph = _capture(self.body, self.device)
            if self.graph is None:
                self.graphed = False
                self.body()
            else:
                self.graph.replay()
                self.replays += 1


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _capture_stream(device: torch.device) -> "torch.cuda.Stream":
    index = _device_index(device)
    if index not in _streams:
        _streams[index] = torch.cuda.Stream(device=index)
    return _streams[index]


def _pool(device: torch.device) -> tuple:
    """The device's shared pool, owned by an anchor graph that lives as long as the process: a pool whose
    graphs have all been freed cannot be shared again (the allocator asserts), and the programs' graphs
    live only as long as their L-BFGS run. Call outside a capture."""
    index = _device_index(device)
    if index not in _anchors:
        stream, cell = _capture_stream(device), torch.zeros(1, device=f"cuda:{index}")
        stream.wait_stream(torch.cuda.current_stream(device))
        anchor = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            anchor.capture_begin(capture_error_mode="thread_local")
            cell.add_(1.0)
            anchor.capture_end()
        _anchors[index] = (anchor, cell)
    return _anchors[index][0].pool()


def _on_capture_stream(device: torch.device, body: Callable[[], None]) -> None:
    """Run ``body`` on the capture stream, ordered after and before the caller's stream."""
    stream, current = _capture_stream(device), torch.cuda.current_stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        body()
    current.wait_stream(stream)


def _capture(body: Callable[[], None], device: torch.device) -> Optional["torch.cuda.CUDAGraph"]:
    """``body`` captured into a graph (nothing runs yet), or None after turning graphs off if it failed."""
    global _failure
    stream = _capture_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    collecting = gc.isenabled()
    gc.disable()  # a cycle collected mid-capture may free a graph or an event: CUDA forbids that during capture
    try:
        with _capture_lock:
            pool = _pool(device)
            with torch.cuda.stream(stream):
                graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                try:
                    body()
                finally:
                    graph.capture_end()
    except Exception as error:  # never stop the caller's computation for a graph
        _failure = f"{type(error).__name__}: {error}"
        log.warning("CUDA graph capture failed (%s); CUDA graphs are off for this process and the probe runs "
                    "eagerly (set SSL_MI_CUDA_GRAPHS=0 to skip the attempt)", _failure)
        return None
    finally:
        if collecting:
            gc.enable()
    return graph
