#!/bin/bash
# One machine with several GPUs (e.g. 8 x H100), one process per GPU joined through the variables
# gptjax documents (parallel.initialize passes them to jax.distributed.initialize).
#
#   bash experiments/launch/gpu_box.sh --config=configs/X.py --workdir=runs/X \
#       --config.parallel.strategy=mesh --config.parallel.fsdp=-1 --config.parallel.data=1
#
# (The simplest alternative is ONE process driving every GPU of the box: run the same
# `python -m gptjax.train ...` command once, with no variables; train.devices=0 uses all GPUs.)
# SIGTERM/SIGINT to this script is passed to every process: they agree on the step, checkpoint and
# stop together; running the script again resumes.
set -u
N=${GPUS:-$(nvidia-smi -L | wc -l)}
PORT=${PORT:-12355}
pids=()
for i in $(seq 0 $((N - 1))); do
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=$N JAX_PROCESS_ID=$i JAX_LOCAL_DEVICE_IDS=$i \
    python -m gptjax.train "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status
