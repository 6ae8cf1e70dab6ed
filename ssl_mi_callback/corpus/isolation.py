"""Run a function in a forked child and return its result (for engines with global state)."""
from __future__ import annotations

import os
import pickle
from typing import Any, Callable


class ChildFailed(RuntimeError):
    """The forked child raised (message carries its error) or died."""


def run_in_fork(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a child forked from this process; the parent's state is untouched.

    Falls back to a direct call where ``os.fork`` does not exist (Windows).
    """
    if not hasattr(os, "fork"):
        return function(*args)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        status = 0
        try:
            os.close(read_end)
            try:
                payload = ("ok", function(*args))
            except BaseException as error:
                payload = ("error", f"{type(error).__name__}: {error}")
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(payload, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    if not data:
        raise ChildFailed(f"child process died (wait status {wait_status})")
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise ChildFailed(value)
    return value
