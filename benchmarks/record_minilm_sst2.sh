#!/usr/bin/env bash
# Records benchmarks/minilm_sst2_table.parquet: the design table the replay benchmark runs against.
# MiniLM (pretrained, bundled) on SST-2 from $GLUE_DIR: a fixed 1,000-example training subset and 500 dev
# examples, 3 epochs with an evaluation after each, lr 3e-3 (a short schedule; see experiment=quick_sst2),
# 0.5 % budget. Resumable: rerun the script and every completed job is skipped.
#   bash benchmarks/record_minilm_sst2.sh [N_S0_DESIGNS]     (default 60; ~55 s a job on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-60}"
root="${PDSPACE_TABLE_DIR:-multirun/table_minilm_sst2}"
common=(backbone=minilm task=sst2 task.max_train_samples=1000 task.max_eval_samples=500 trainer.max_epochs=3
        optimizer.lr=3e-3 logger=none callbacks=none save_checkpoint=false)
# the paper's S4 design and the four uniform single-method baselines, 3 training seeds each
pdspace-train -m "${common[@]}" grouping=spindle strategy=s4_model seed=0,1,2 hydra.sweep.dir="$root/s4"
pdspace-train -m "${common[@]}" grouping=uniform strategy=adapter,prefix,lora,bitfit seed=0,1,2 \
    hydra.sweep.dir="$root/baselines"
# full fine-tuning (every weight; lr 1e-4: 3e-3 is a PEFT rate and makes full fine-tuning diverge)
pdspace-train -m "${common[@]}" peft.full_finetune=true optimizer.lr=1e-4 seed=0,1,2 hydra.sweep.dir="$root/full"
# designs drawn from the unconstrained space S0 (one seed each)
pdspace-train -m "${common[@]}" space=S0 space.num_samples="$n" space.tasks=[sst2] hydra.sweep.dir="$root/s0"
pdspace-bench table "$root/s0" "$root/s4" "$root/baselines" --out benchmarks/minilm_sst2_table.parquet
