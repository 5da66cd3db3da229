#!/usr/bin/env bash
# SLURM batch script for multi-node SparseEHR training with DeepSpeed (one launcher per node, no ssh).
#
#   sbatch --nodes 2 launch/slurm_train.sh --preset paper --data /shared/DATA_DIR --out /shared/runs/paper \
#          --deepspeed zero2_ep_bf16.json --max-tokens 20000000000
#
# Every argument is passed to launch/train.py. --resume is always added: the first attempt finds no checkpoint
# and starts at step 0; a requeued attempt continues from RUN_DIR/latest. SLURM sends SIGTERM ahead of the
# time limit (--signal below) to every process of the step; the trainer checkpoints at the next step boundary
# and exits 0. The deepspeed launcher SIGKILLs ranks 30 s after it forwards a SIGTERM, so a save that takes
# longer is lost: the interval checkpoints (--ckpt-interval) bound what a preemption can cost.
#SBATCH --job-name=sparseehr
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=%x-%j.out
set -euo pipefail

# Fail with the reason, not with "unbound variable" or a Python traceback, before anything is written.
if [[ -z "${SLURM_JOB_NODELIST:-}" ]]; then
    echo "slurm_train.sh: SLURM_JOB_NODELIST is not set: submit this script with sbatch (see the header)" >&2
    exit 2
fi
if ! command -v deepspeed > /dev/null; then
    echo "slurm_train.sh: deepspeed is not on PATH: activate the environment sparseehr is installed in" >&2
    exit 2
fi
# Under sbatch the script is copied to a spool folder; SPARSEEHR_TRAIN points at the checkout's launch/train.py.
if ! TRAIN_PY=${SPARSEEHR_TRAIN:-$(python -c 'import sparseehr.launch.train as t; print(t.__file__)' 2> /dev/null)}; then
    echo "slurm_train.sh: 'python' cannot import sparseehr: activate its environment or set SPARSEEHR_TRAIN" >&2
    exit 2
fi

GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
HOSTFILE=$(mktemp "${TMPDIR:-/tmp}/sparseehr-hostfile.XXXXXX")
trap 'rm -f "$HOSTFILE"' EXIT
for host in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
    echo "$host slots=$GPUS_PER_NODE" >> "$HOSTFILE"
done
# One `deepspeed --no_ssh` per node; SLURM_NODEID is the node rank. The launcher reads world layout from the
# hostfile and rendezvous through MASTER_ADDR:MASTER_PORT.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c "
  deepspeed --hostfile '$HOSTFILE' --no_ssh --node_rank \$SLURM_NODEID \
            --master_addr '$MASTER_ADDR' --master_port '$MASTER_PORT' \
            '$TRAIN_PY' --resume $(printf '%q ' "$@")
" &
wait $!
