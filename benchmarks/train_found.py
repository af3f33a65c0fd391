"""Train the design each search strategy found in the replay (its most frequent pick) over 3 seeds.

Reads `replay.json` (from `pdspace-bench replay ... --out DIR`), takes every strategy's most
frequently returned design at BUDGET epochs, and trains each distinct design with seeds 0, 1, 2 in the
table's regime (benchmarks/record_minilm_sst2.sh), labelled `method=found:<strategies>`, under
ROOT/found/<n>. Resumable: a relaunch skips completed jobs; two instances at once share the jobs (each job
dir is locked while it trains), e.g. with OMP_NUM_THREADS=1 each on a 2-core machine. Then report them beside the table's runs:

    python benchmarks/train_found.py REPLAY_DIR BUDGET [ROOT]
    pdspace-report ROOT/full ROOT/baselines ROOT/s4 ROOT/found
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from pdspace.design.space import Design
from pdspace.search.plans import Job

COMMON = ["backbone=minilm", "task.max_train_samples=1000", "task.max_eval_samples=500", "trainer.max_epochs=3",
          "optimizer.lr=3e-3", "logger=none", "callbacks=none", "save_checkpoint=false"]


def main() -> None:
    replay_dir, budget = Path(sys.argv[1]), sys.argv[2]
    root = Path(sys.argv[3] if len(sys.argv) > 3 else "multirun/table_minilm_sst2")
    found = json.loads((replay_dir / "replay.json").read_text())["found"]
    picks: dict[str, list[str]] = {}
    for strategy, per_budget in found.items():
        design, _ = Counter(per_budget[budget]).most_common(1)[0]
        picks.setdefault(design, []).append(strategy)
    for n, (design_id, strategies) in enumerate(picks.items()):
        job = Job(0, Design.parse(design_id), "sst2", 0, {})
        pinned = [o for o in job.overrides() if not o.startswith(("seed=", "hydra.sweep.subdir="))]
        label = "found:" + ",".join(strategies)
        print(f"{label}: {design_id}", flush=True)
        done = subprocess.run(["pdspace-train", "-m", *COMMON, *pinned, "seed=0,1,2", f"method='{label}'",
                               f"hydra.sweep.dir={root}/found/{n}"])
        if done.returncode:  # e.g. a job another instance of this script is running: pdspace-report counts runs
            print(f"{label}: pdspace-train exited {done.returncode}", file=sys.stderr)


if __name__ == "__main__":
    main()
