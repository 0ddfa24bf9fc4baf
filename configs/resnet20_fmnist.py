"""ResNet-20 (CIFAR-style, 1 input channel) on Fashion-MNIST.

Train the dense baseline (the checkpoint the demo and the one-shot experiments start from):

    python -m hobs_jax.main --config=configs/resnet20_fmnist.py --workdir=runs/resnet20_fmnist \
        --config.stages=train,evaluate,export

Expected: >= 93.0% test top-1. Measured 2026-11-22 with --config.stages=train: 93.54%
(12 epochs) in 1.3 min (train stage 76 s, 10,714 img/s, bf16 compute) on one NVIDIA H100 80GB (jax 0.11.2);
on this repo's 2-core CPU the same run is ~40-100x slower (about 65-150 img/s). Recorded
in docs/results/fmnist_baselines.md; the model ships as checkpoints/resnet20_fmnist. The full pipeline (prune to half the MACs with H-OBS, fine-tune,
evaluate, benchmark, export) is the same command without --config.stages.
``configs/resnet20_fmnist.py:smoke`` runs every stage in seconds (synthetic-sized).

Recipe (checked by ``python -m hobs_jax.validate --config=configs/resnet20_fmnist.py``):

    train: optimizer=sgd epochs=12 batch_size=128 lr=0.1 warmup_fraction=0.1 early_stopping=off
    finetune: optimizer=sgd epochs=1 batch_size=128 lr=0.01 warmup_fraction=0 early_stopping=off kd=off
"""

from hobs_jax.pipeline.config import fmnist_config, fmnist_smoke, with_variant


def get_config(arg: str | None = None):
    return with_variant(fmnist_config("resnet20", epochs=12.0), arg, fmnist_smoke)
