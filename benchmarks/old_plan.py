"""`mtcli train` with the batch plans of an older checkout's data path, to tell the draw of the batches apart
from everything else the data path changed.

Before 2026-12-02 (d35f33a) each epoch's batches came from `token_batches` in mtcli/data/batching.py, drawn
with Python's `random` from seed x 100003 + epoch; now they are drawn with numpy (`plan_epoch`). Same rule,
different draw. This script runs the current trainer with the old module's draw in place of the new one:
if its losses equal the old checkout's update for update, nothing but the draw differs (vocabulary, token
ids, padding, loss and model code are the same).

    python benchmarks/old_plan.py --old OLD train experiments/multi30k-transformer.yaml \
        --set train.max_steps=6 --set train.log_every=1 --set run_dir=runs/old-plan

OLD is a checkout of d35f33a. Single corpus, weight 1 (what the old code could train on).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtcli.data import dataset  # noqa: E402
from mtcli.data.batching import EpochPlan  # noqa: E402


def old_batching(old: Path):
    spec = importlib.util.spec_from_file_location("old_batching", old / "mtcli" / "data" / "batching.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_batching"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "--old":
        sys.exit(__doc__)
    old = old_batching(Path(sys.argv[2]))

    def plan(self: dataset.TrainSet, batch_tokens: int, seed: int, epoch: int) -> EpochPlan:
        if len(self.corpora) != 1 or self.weights != [1.0]:
            sys.exit("old_plan.py: one training corpus of weight 1 only")
        corpus = self.corpora[0]
        src, tgt = np.asarray(corpus.src_len, np.int64), np.asarray(corpus.tgt_len, np.int64)
        batches = old.token_batches((np.maximum(src, tgt) + 1).tolist(), batch_tokens, seed * 100003 + epoch,
                                    (src + 1).tolist())
        order = np.concatenate([np.asarray(b, np.uint32) for b in batches])
        starts = np.r_[0, np.cumsum([len(b) for b in batches])].astype(np.int64)
        return EpochPlan(order, starts, np.arange(len(batches)))

    dataset.TrainSet.plan = plan
    from mtcli.cli import app

    sys.argv = ["mtcli", *sys.argv[3:]]
    app()


if __name__ == "__main__":
    main()
