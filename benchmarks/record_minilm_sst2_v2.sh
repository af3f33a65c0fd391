#!/usr/bin/env bash
# Records benchmarks/minilm_sst2_table_v2.parquet, the design table v2 of the replay benchmark: every design
# with 3 training seeds, so that strategies can be told apart from seed noise.
# MiniLM (pretrained, bundled) on SST-2 from $GLUE_DIR: a fixed 1,000-example training subset (subset seed 0,
# whatever the training seed), the full dev set (872), 3 epochs with an evaluation after each, the quick
# regime's base lr 3e-3 with the per-strategy scales of conf/train.yaml (optimizer.lr_scale), 0.5 % budget;
# each run keeps its per-example dev predictions (predictions.npz).
# Two jobs at once, one thread each (joblib launcher). Resumable: rerun the script and every completed job is
# skipped. The table's `source` column holds paths relative to the recording dir.
#   bash benchmarks/record_minilm_sst2_v2.sh [N_S0_DESIGNS]     (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-30}"
root="${PDSPACE_TABLE_DIR:-multirun/table_v2_minilm_sst2}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
common=(experiment=quick_sst2 task.max_train_samples=1000 task.max_eval_samples=null trainer.max_epochs=3
        logger=none callbacks=none save_checkpoint=false hydra/launcher=joblib hydra.launcher.n_jobs=2)
# the paper's S4 design and the four uniform single-method baselines
pdspace-train -m "${common[@]}" grouping=spindle strategy=s4_model seed=0,1,2 hydra.sweep.dir="$root/s4"
pdspace-train -m "${common[@]}" grouping=uniform strategy=adapter,prefix,lora,bitfit seed=0,1,2 \
    hydra.sweep.dir="$root/baselines"
# designs drawn from the unconstrained space S0, each trained with the same 3 seeds
pdspace-train -m "${common[@]}" space=S0 space.num_samples="$n" space.tasks=[sst2] space.seeds=[0,1,2] \
    hydra.sweep.dir="$root/s0"
pdspace-bench table "$root/s0" "$root/s4" "$root/baselines" --relative-to "$root" \
    --out benchmarks/minilm_sst2_table_v2.parquet
