"""``ssl-mi-fairseq-hydra-train`` with faults injected, for the reliability trials and tests.

The product's code paths stay as they are; this wrapper patches a few of its module globals in the
training process before the launcher runs. Each behaviour is off unless its environment variable
is set:

``CHAOS_SLOW_IO=<seconds>``  (crash trials: ``crash_trials.py``)
    The hook's writes take milliseconds on a tiny model, so a random SIGKILL would almost never land
    inside one. This stretches the time between the system calls the product already makes and
    prints a marker line before each stretched window:

    * ``@@eval <update> <sha256>``: an evaluation starts; the hash is of the model weights it scores
      (the harness checks that an exported file holds weights some evaluation actually scored).
    * ``@@history-write``: a history line is being written, in 4 flushed chunks with a pause after
      each (so a kill can tear the line, as a kill during a large write could).
    * ``@@export-begin`` / ``@@export-end``: an export starts / returns.
    * ``@@export-io fsync`` / ``@@export-io replaced <name>``: every ``fsync`` and ``os.replace`` of
      ``ssl_mi_callback.selection.export`` (exports, and the history rewrite at resume), each
      followed by a pause (temp files staged, file renamed but not yet its sidecar, ...).

``CHAOS_NAN_AT=<update>[,<update>...]``  (failure isolation)
    Before the evaluation at each listed update, the samples of the first held-out utterance are
    replaced by NaN in memory (the subset is loaded once at start-up, so this is what a corrupted
    file would look like to the model); they are restored after that evaluation. The NaN goes
    through the real forward pass and reaches the estimator.

``CHAOS_DELETE_HELDOUT_AFTER=<update>``
    After the evaluation at that update, the held-out audio files are deleted from disk.

``CHAOS_TRACE_WRITES=1``  (distributed runs)
    Every history append, history rewrite and export prints ``@@write <kind> rank=<rank>``.

Usage: the launcher's own arguments, e.g.
``CHAOS_NAN_AT=100 python benchmarks/reliability/chaos_launcher.py --config-dir recipes/fairseq --config-name tiny_wav2vec2 ...``
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
import types

PAUSE = float(os.environ.get("CHAOS_SLOW_IO", "0") or 0)


def marker(text: str) -> None:
    sys.stdout.write(f"@@{text}\n")
    sys.stdout.flush()


def weights_sha256(state_dict) -> str:
    """Hash of a model state dict (names, dtypes, shapes and bytes), the same for a live model and a loaded file."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _SlowWriter:
    """A binary file whose write() goes out in 4 chunks, flushed, with a pause after each."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, data) -> int:
        marker("history-write")
        data = bytes(data)
        step = max(1, -(-len(data) // 4))
        for start in range(0, len(data), step):
            self._handle.write(data[start:start + step])
            self._handle.flush()
            time.sleep(PAUSE / 2)
        return len(data)

    def __enter__(self):
        self._handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _slow_open(path, mode="r", *args, **kwargs):
    handle = open(path, mode, *args, **kwargs)
    return _SlowWriter(handle) if "a" in mode else handle


def _os_with_pauses() -> types.ModuleType:
    proxy = types.ModuleType("os_with_pauses")
    proxy.__dict__.update(os.__dict__)

    def fsync(fd):
        os.fsync(fd)
        marker("export-io fsync")
        time.sleep(PAUSE)

    def replace(src, dst, *args, **kwargs):
        os.replace(src, dst, *args, **kwargs)
        marker(f"export-io replaced {os.path.basename(dst)}")
        time.sleep(PAUSE)

    proxy.fsync, proxy.replace = fsync, replace
    return proxy


def _updates(name: str) -> set:
    return {int(part) for part in os.environ.get(name, "").split(",") if part.strip()}


def install() -> None:
    """Patch the product's modules in this process (after the compat step, before training)."""
    import numpy as np

    from ssl_mi_callback.integrations.fairseq import hook
    from ssl_mi_callback.selection import export, history

    original_evaluate = hook.FairseqMIHook.evaluate
    nan_at = _updates("CHAOS_NAN_AT")
    delete_after = _updates("CHAOS_DELETE_HELDOUT_AFTER")

    if PAUSE > 0:
        history.open = _slow_open  # a module global shadows the builtin inside history.py only
        export.os = _os_with_pauses()
        original_export = hook.export_atomically

        def announced_export(*args, **kwargs):
            marker("export-begin")
            result = original_export(*args, **kwargs)
            marker("export-end")
            return result

        hook.export_atomically = announced_export

    if os.environ.get("CHAOS_TRACE_WRITES"):
        def rank() -> str:
            import torch.distributed as dist

            return str(dist.get_rank()) if dist.is_available() and dist.is_initialized() else "0"

        def traced(kind, function):
            def wrapper(*args, **kwargs):
                marker(f"write {kind} rank={rank()}")
                return function(*args, **kwargs)
            return wrapper

        history.HistoryFile.append = traced("history-append", history.HistoryFile.append)
        history.HistoryFile.truncate_after = traced("history-rewrite", history.HistoryFile.truncate_after)
        hook.export_atomically = traced("export", hook.export_atomically)

    def evaluate(self, model, update, epoch):
        if PAUSE > 0:
            marker(f"eval {update} {weights_sha256(model.state_dict())}")
        utterance = self.callback.evaluator.subset.utterances[0]
        saved = None
        if update in nan_at:
            saved = utterance.waveform.copy()
            utterance.waveform[:] = np.nan
            marker(f"nan-injected {update} {utterance.uid}")
        try:
            return original_evaluate(self, model, update, epoch)
        finally:
            if saved is not None:
                utterance.waveform[:] = saved
            if update in delete_after:
                for held_out in self.callback.evaluator.subset.utterances:
                    if held_out.path and os.path.exists(held_out.path):
                        os.remove(held_out.path)
                marker(f"heldout-deleted {update}")

    hook.FairseqMIHook.evaluate = evaluate


def main() -> None:
    from ssl_mi_callback.integrations.fairseq import compat, launcher

    compat.apply()
    install()
    launcher.main()


if __name__ == "__main__":
    main()
