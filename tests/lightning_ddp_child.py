"""Child script of tests/test_integration_lightning.py::test_two_process_ddp_*: the tiny HuBERT of that file
trained by Lightning with strategy="ddp" on 2 CPU processes (gloo), the MI callback evaluating at every
validation. Lightning's subprocess launcher starts this script again for rank 1. Each rank writes what it
logged (rank<r>.json); rank 0 saves the final weights (final.ckpt).

    python tests/lightning_ddp_child.py CORPUS_DIR OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(corpus: Path, out: Path) -> None:
    import lightning.pytorch as pl

    from test_integration_lightning import heldout_paths, make_mi_callback, make_module
    from ssl_mi_callback.data import load_heldout

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    mi = make_mi_callback(load_heldout(heldout_paths(corpus)))
    trainer = pl.Trainer(
        max_steps=10, accelerator="cpu", devices=2, strategy="ddp", callbacks=[mi], logger=False,
        val_check_interval=5, check_val_every_n_epoch=None, limit_val_batches=1, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=out,
    )
    trainer.fit(make_module(corpus))
    trainer.save_checkpoint(out / "final.ckpt")  # written by rank 0 only
    logged = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("mi_")}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "world_size": trainer.world_size, "logged": logged, "best_step": (mi.best or {}).get("step"),
    }))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]), Path(sys.argv[2]))
