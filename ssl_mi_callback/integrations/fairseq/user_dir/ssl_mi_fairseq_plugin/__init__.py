"""fairseq ``common.user_dir`` module: registers the *_mi tasks (print its path: ``ssl-mi fairseq-user-dir``)."""
from ssl_mi_callback.integrations.fairseq import tasks  # noqa: F401
