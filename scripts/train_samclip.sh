#!/usr/bin/env bash
# The SAM-CLIP recipe (head_probe -> multitask -> res_adapt) under torchrun, one node or many.
#
#   Single node, 8 GPUs:
#     scripts/train_samclip.sh run_dir=/ckpt/samclip_vit_b data.clip.urls=... data.sam.urls=... \
#       teacher.sam.checkpoint=/ckpt/sam_vit_b_01ec64.pth
#   Multi-node (the paper: 4 x 8 A100), on every node:
#     NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0 host> scripts/train_samclip.sh run_dir=/shared/... ...
#   SLURM (one task per node): srun --nodes=4 --ntasks-per-node=1 scripts/train_samclip.sh run_dir=... ...
#   CPU smoke check of the launcher: NPROC_PER_NODE=2 scripts/train_samclip.sh experiment=smoke run_dir=runs/smoke_ddp
#
# All arguments are Hydra overrides for samclip.train. run_dir must be on storage every node sees, and must
# not depend on the clock: every rank resolves it independently. Re-running the same command resumes.
set -euo pipefail

EXPERIMENT_DEFAULT="experiment=samclip_vit_b"
for arg in "$@"; do
  case "$arg" in experiment=*) EXPERIMENT_DEFAULT="" ;; esac
done

# SLURM's variables fill in what the usual torchrun variables leave unset.
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  NNODES="${NNODES:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}}"
  NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
  if [[ -z "${MASTER_ADDR:-}" ]]; then
    MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
  fi
fi
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi

echo "train_samclip: ${NNODES} node(s) x ${NPROC_PER_NODE} process(es), node rank ${NODE_RANK}, master ${MASTER_ADDR}:${MASTER_PORT}" >&2

if [[ "${NNODES}" -eq 1 ]]; then
  RDZV=(--standalone)
else
  RDZV=(--nnodes="${NNODES}" --node_rank="${NODE_RANK}" --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}")
fi

# OMP threads per process: torchrun's default of 1 starves CPU runs; GPUs do not care.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec torchrun "${RDZV[@]}" --nproc_per_node="${NPROC_PER_NODE}" -m samclip.train ${EXPERIMENT_DEFAULT} "$@"
