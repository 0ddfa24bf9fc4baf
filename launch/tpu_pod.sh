#!/usr/bin/env bash
# Run hobs_jax.main on every worker of a Cloud TPU VM slice (v4-32, v5e-64, ...).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       --config=configs/resnet50.py --workdir=gs://my-bucket/runs/r50
#
# The same command starts on all workers (--worker=all); hobs_jax.train.distributed.initialize()
# calls jax.distributed.initialize() with no arguments, and JAX finds the coordinator and
# each worker's rank from the TPU metadata. Prerequisites on every worker: this repository
# at $REPO_DIR with its .venv (set SETUP=1 to `git pull` and `make venv` there first),
# TFDS_DATA_DIR pointing at prepared data (e.g. gs://bucket/tfds), and a workdir all
# workers can reach (a GCS path for orbax).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
REPO_DIR=${REPO_DIR:-'~/hobs_jax'}
TFDS_DATA_DIR=${TFDS_DATA_DIR:-}

args=$(printf '%q ' "$@")
setup=""
if [[ "${SETUP:-0}" == 1 ]]; then
  setup="git pull --ff-only && make venv && "
fi
cmd="cd $REPO_DIR && ${setup}TFDS_DATA_DIR=$TFDS_DATA_DIR .venv/bin/python -m hobs_jax.main $args"

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$cmd"
