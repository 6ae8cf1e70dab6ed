"""``ssl-mi-fairseq-hydra-train``: a drop-in for ``fairseq-hydra-train`` (same arguments).

It applies the run-time compatibility step (:mod:`.compat`) before fairseq and hydra are imported,
registers the MI tasks (so ``task=audio_pretraining_mi`` composes), hands the run's full config to
the MI hook (which needs the checkpoint directory and selection settings that a fairseq task never
sees), and then runs fairseq's own ``hydra_train`` entry point unchanged. A misconfiguration stops
the run before training with one line on stderr and exit status 2.
"""
from __future__ import annotations

import sys

from . import compat


def train_main(cfg, **kwargs) -> None:
    """fairseq_cli.train.main, with the MI hook told the run's full config (picklable for spawn)."""
    from fairseq_cli import train as fairseq_train

    from ...data import HeldOutDataError
    from . import run_context

    try:
        run_context.start_run(cfg)
        fairseq_train.main(cfg, **kwargs)
    except (run_context.MIConfigError, HeldOutDataError) as error:
        print(f"ssl-mi-fairseq-hydra-train: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    finally:
        run_context.finish_run()


def main() -> None:
    compat.apply()
    from fairseq_cli import hydra_train

    from . import tasks  # noqa: F401  (registers the *_mi tasks before hydra composes the config)

    hydra_train.pre_main = train_main
    hydra_train.cli_main()


if __name__ == "__main__":
    main()
