#!/usr/bin/env bash
# Multi-node training on SLURM: one torchrun per node (scripts/train_dist.sh), GPUs_PER_NODE processes each.
#   sbatch --nodes=2 scripts/slurm_train.sh CONFIG [key=value ...] [--resume]
# Run it from the repository root (sbatch copies this file elsewhere; SLURM_SUBMIT_DIR brings us back).
# train.output_dir must be on a filesystem every node sees: rank 0 (on whichever node c10d puts it)
# writes the checkpoints, and with --resume every rank reads OUTPUT/checkpoints/last.pth.
# See docs/distributed.md. Adjust the #SBATCH lines to your cluster (partition, account, time).
#SBATCH --job-name=retinanet
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail
if [ $# -lt 1 ]; then echo "usage: sbatch $0 CONFIG [key=value ...] [--resume]" >&2; exit 2; fi
cd "${SLURM_SUBMIT_DIR:-.}"

# The first node of the allocation hosts the c10d rendezvous; the job id keeps concurrent jobs apart.
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500} NNODES=$SLURM_NNODES RDZV_ID=$SLURM_JOB_ID
# SLURM_GPUS_ON_NODE is set when GPUs were requested; the default matches --gpus-per-node above.
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # per process; torchrun would otherwise set 1 with a warning

# One task per node; each runs torchrun, which starts the per-GPU processes.
srun --kill-on-bad-exit=1 bash scripts/train_dist.sh "$GPUS_PER_NODE" "$@"
