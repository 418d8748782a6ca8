#!/usr/bin/env bash
# Train and evaluate the CPU-sized MobileNetV2 RetinaNet on a real COCO-format folder.
#   scripts/train_real.sh raccoon|bccd [key=value ...]
# Needs ../shared (data and the MobileNetV2 ImageNet weights) beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=${1:-raccoon}; shift || true
exec retinanet train --config "configs/examples/${NAME}_mobilenet.yaml" "$@"
