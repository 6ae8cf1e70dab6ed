"""Integrations translate a host training loop's events into :mod:`ssl_mi_callback.callback` calls."""
