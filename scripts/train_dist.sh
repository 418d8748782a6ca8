#!/usr/bin/env bash
# Multi-GPU / multi-node (or multi-process CPU) training through torchrun + DDP:
#   scripts/train_dist.sh NPROC_PER_NODE CONFIG [key=value ...] [-- extra torchrun arguments]
# solver.ims_per_batch is the global batch; each process takes ims_per_batch / (NNODES * NPROC_PER_NODE).
#
# One node (default): torchrun --standalone (a free local port, nothing to configure).
# Several nodes: run the same command on every node with
#   NNODES=2 MASTER_ADDR=node0.cluster [MASTER_PORT=29500] [RDZV_ID=job42]
# which gives torchrun --nnodes --rdzv_backend c10d --rdzv_endpoint MASTER_ADDR:MASTER_PORT. c10d assigns
# the ranks when the nodes meet, so no node rank is needed; RDZV_BACKEND=static NODE_RANK=0|1|... uses
# torchrun's static rendezvous instead (fixed ranks, node 0 hosts it). Arguments after `--` go to
# torchrun unchanged and come after ours, so they win. See docs/distributed.md.
# TORCHRUN overrides the launcher (e.g. TORCHRUN="python -m torch.distributed.run" for a given interpreter);
# DRY_RUN=1 prints the command instead of running it.
# The backend follows the device: NCCL on CUDA, gloo on the CPU (retinanet/engine/distributed.py).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 NPROC_PER_NODE CONFIG [key=value ...] [-- torchrun args]" >&2
    exit 2
fi
NPROC=$1; CONFIG=$2; shift 2
case "$NPROC" in ''|*[!0-9]*|0*) echo "$0: NPROC_PER_NODE must be a positive integer, got '$NPROC'" >&2; exit 2;; esac

TRAIN_ARGS=(); EXTRA=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; EXTRA=("$@"); break; fi
    TRAIN_ARGS+=("$1"); shift
done

NNODES=${NNODES:-1}
if [ "$NNODES" = 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
    LAUNCH=(--standalone --nproc_per_node="$NPROC")
else
    if [ -z "${MASTER_ADDR:-}" ]; then
        echo "$0: NNODES=$NNODES needs MASTER_ADDR (the host of the rendezvous, reachable from every node)" >&2
        exit 2
    fi
    # The rendezvous id must be the same on all nodes and differ between jobs sharing a MASTER_ADDR.
    BACKEND=${RDZV_BACKEND:-c10d}
    LAUNCH=(--nnodes="$NNODES" --nproc_per_node="$NPROC" --rdzv_backend="$BACKEND"
            --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv_id="${RDZV_ID:-${SLURM_JOB_ID:-retinanet}}")
    if [ "$BACKEND" = static ]; then LAUNCH+=(--node_rank="${NODE_RANK:?RDZV_BACKEND=static needs NODE_RANK}"); fi
fi
# TORCHRUN may hold several words ("python -m torch.distributed.run"): split it on purpose.
read -r -a LAUNCHER <<< "${TORCHRUN:-torchrun}"
CMD=("${LAUNCHER[@]}" "${LAUNCH[@]}" ${EXTRA[@]+"${EXTRA[@]}"} -m retinanet.cli train --config "$CONFIG"
     ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"})
if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
