"""``python -m ssl_mi_callback.corpus --out DIR --minutes 10``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
