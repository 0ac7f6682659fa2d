#!/usr/bin/env bash
# Data-parallel training with PyTorch's own launcher: 2 CPU processes (gloo) here;
# on a GPU node use --device cuda and as many processes as GPUs (nccl).
set -euo pipefail
OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m gmkit train ddpm --data mnist --device cpu \
    --steps 50 --batch-size 64 --out runs/ddp --json
