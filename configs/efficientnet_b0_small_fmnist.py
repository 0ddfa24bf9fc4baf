"""EfficientNet-B0, small-image form (stride-1 stem and stage 2, 1 input channel), on Fashion-MNIST.

The zoo's ``efficientnet_b0_small`` (hobs_jax/models/efficientnet.py, docs/models.md): torchvision's
EfficientNet-B0 widths, MBConv and squeeze-excitation blocks with the same stride-1 stem
and stage 2 as mobilenet_v2_small, 28x28x1
inputs ending at a 4x4 map, 98.3 MMACs and 4.02 M parameters. Train the dense baseline:

    python -m hobs_jax.main --config=configs/efficientnet_b0_small_fmnist.py \
        --workdir=runs/efficientnet_b0_small_fmnist --config.stages=train,evaluate,export

GPU schedule (the default; bf16 compute on a GPU): SGD Nesterov lr 0.1, weight decay 5e-4,
batch 128, 30 epochs of cosine after a 10% warm-up, ResNet-56's Fashion-MNIST recipe.
CPU schedule (``configs/efficientnet_b0_small_fmnist.py:cpu``): the same recipe over 1 epoch,
a cosine that ends within the time a CPU can give: about 1 h on the shared 2-core CPU (17 images/s at
batch 32 with ``train.fast_depthwise``, on by default on a CPU; about 4.5 images/s with XLA's
grouped depthwise convs, about 4 h). Throughput and
estimates: docs/models.md ("Training throughput on the CPU"). ``checkpoints/efficientnet_b0_small_fmnist``
is the ``:cpu`` schedule's export: 75.66% top-1, 99.46% top-5 (2026-12-06, 5,156 s of training
beside another job, 11.7 images/s; no loss spike, no rollback). One epoch is far too short for
this network (MobileNetV2 reaches 88.45% on the same schedule); the GPU schedule is the one to
use where a GPU is lent. ``:smoke`` runs every stage in seconds.

Recipe (checked by ``python -m hobs_jax.validate --config=configs/efficientnet_b0_small_fmnist.py``):

    train: optimizer=sgd epochs=30 batch_size=128 lr=0.1 warmup_fraction=0.1 early_stopping=off
    finetune: optimizer=sgd epochs=1 batch_size=128 lr=0.01 warmup_fraction=0 early_stopping=off kd=off
"""

from hobs_jax.pipeline.config import fmnist_config, fmnist_smoke, with_variant

VARIANTS = ("", "cpu", "smoke")
CPU_EPOCHS = 1.0


def get_config(arg: str | None = None):
    c = fmnist_config("efficientnet_b0_small", epochs=30.0)
    if arg == "cpu":
        # Checkpoints every 100 steps: the stability monitor rolls a loss spike back to the
        # latest one, and at the default 500 a 468-step epoch has only step 0 to go back to.
        c.train.epochs, c.train.checkpoint.every_steps, arg = CPU_EPOCHS, 100, None
    return with_variant(c, arg, fmnist_smoke)
