"""Child script of tests/test_integration_huggingface.py::test_two_process_ddp_*: the tiny wav2vec 2.0 of that
file trained by transformers' Trainer on 2 CPU processes (torch.distributed.run, gloo), the MI callback
evaluating every 5 of 10 updates. Each rank writes the eval_mi_bits values it logged (rank<r>.json); the Trainer
saves the final model (final/).

    python -m torch.distributed.run --nproc_per_node 2 tests/huggingface_ddp_child.py CORPUS_DIR OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(corpus: Path, out: Path) -> None:
    import torch.distributed as dist

    from test_integration_huggingface import make_trainer, mi_callback

    torch.set_num_threads(1)
    trainer = make_trainer(corpus, out, [mi_callback(corpus)], max_steps=10, eval_steps=5, save_steps=5,
                           logging_steps=5, ddp_backend="gloo")
    trainer.train()
    trainer.save_model(str(out / "final"))
    logged = {entry["step"]: {k: v for k, v in entry.items() if k.startswith("eval_mi_")}
              for entry in trainer.state.log_history if "eval_mi_bits" in entry}
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    (out / f"rank{rank}.json").write_text(json.dumps({"world_size": world, "logged": logged,
                                                      "best_step": trainer.state.best_global_step}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]), Path(sys.argv[2]))
