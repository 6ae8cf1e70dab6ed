"""Errors of the corpus generator."""


class EngineUnavailable(RuntimeError):
    """A speech engine (espeak-ng, flite) is not installed; the message names what to install."""
