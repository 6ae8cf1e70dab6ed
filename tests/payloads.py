"""Objects whose unpickling runs code, the way a malicious checkpoint does (for the safe-loading tests)."""
import builtins
import os
from pathlib import Path


class SystemPayload:
    """Unpickling this runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload:
    """Unpickling this creates MARKER through ``exec``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))
