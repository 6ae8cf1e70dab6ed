"""ssl_mi_callback: pick the best self-supervised speech checkpoint by mutual information."""

__version__ = "0.1.0"
