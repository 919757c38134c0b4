#!/bin/bash
# A Cloud TPU VM slice (e.g. v5p-32: 4 hosts x 4 chips): the same command on every worker. jax reads
# the slice's workers from the TPU metadata (parallel.initialize calls jax.distributed.initialize on a
# TPU VM), each host feeds its own rows of every batch, checkpoints are written by all hosts.
#
#   TPU=my-slice ZONE=us-east5-a bash experiments/launch/tpu_vm.sh --config=configs/X.py \
#       --workdir=/mnt/runs/X --config.parallel.strategy=mesh --config.parallel.fsdp=-1 --config.parallel.data=1
#
# Install first on every worker (once): git clone ... gptjax && pip install -e 'gptjax[tpu]'.
# The workdir and the data file must be on a filesystem every worker mounts at the same path
# (e.g. Filestore over NFS): gptjax reads and writes them with ordinary file calls, so gs:// paths do
# not work. `gcloud ... ssh --worker=all` forwards Ctrl-C; a preempted slice restarts with the same
# command, which resumes.
set -eu
: "${TPU:?set TPU to the slice name}" "${ZONE:?set ZONE}"
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="cd ~/gptjax && \
  python -m gptjax.train$args"
