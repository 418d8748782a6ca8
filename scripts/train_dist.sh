#!/usr/bin/env bash
# Multi-GPU (or multi-process CPU) training through torchrun + DDP:
#   scripts/train_dist.sh NUM_GPUS CONFIG [key=value ...]
# solver.ims_per_batch is the global batch; each process takes ims_per_batch / NUM_GPUS images.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 NUM_GPUS CONFIG [key=value ...]" >&2; exit 2; fi
NGPU=$1; CONFIG=$2; shift 2
exec torchrun --standalone --nproc_per_node="$NGPU" -m retinanet.cli train --config "$CONFIG" "$@"
