"""MobileNetV2, small-image form (stride-1 stem and stage 2, 1 input channel), on Fashion-MNIST.

The zoo's ``mobilenet_v2_small`` (hobs_jax/models/mobilenet.py, docs/models.md): torchvision's
MobileNetV2 widths and blocks with the CIFAR strides of the pruning literature, 28x28x1
inputs ending at a 4x4 map, 72.9 MMACs and 2.24 M parameters. Train the dense baseline:

    python -m hobs_jax.main --config=configs/mobilenet_v2_small_fmnist.py \
        --workdir=runs/mobilenet_v2_small_fmnist --config.stages=train,evaluate,export

GPU schedule (the default; bf16 compute on a GPU): SGD Nesterov lr 0.1, weight decay 5e-4,
batch 128, 30 epochs of cosine after a 10% warm-up, ResNet-56's Fashion-MNIST recipe.
CPU schedule (``configs/mobilenet_v2_small_fmnist.py:cpu``): the same recipe over 1 epoch,
a cosine that ends within the time a CPU can give: about 1 h on the shared 2-core CPU (20 images/s at
batch 32 with ``train.fast_depthwise``, on by default on a CPU; 4-7 images/s with XLA's grouped
depthwise convs, 2-5 h). Throughput and
estimates: docs/models.md ("Training throughput on the CPU"). ``checkpoints/mobilenet_v2_small_fmnist``
is the ``:cpu`` schedule's export: 88.45% top-1, 99.84% top-5 (2026-12-06, 3,127 s; a loss
spike at step 127 rolled it back to step 0 at half the lr, docs/models.md). ``:smoke`` runs
every stage in seconds.

Recipe (checked by ``python -m hobs_jax.validate --config=configs/mobilenet_v2_small_fmnist.py``):

    train: optimizer=sgd epochs=30 batch_size=128 lr=0.1 warmup_fraction=0.1 early_stopping=off
    finetune: optimizer=sgd epochs=1 batch_size=128 lr=0.01 warmup_fraction=0 early_stopping=off kd=off
"""

from hobs_jax.pipeline.config import fmnist_config, fmnist_smoke, with_variant

VARIANTS = ("", "cpu", "smoke")
CPU_EPOCHS = 1.0


def get_config(arg: str | None = None):
    c = fmnist_config("mobilenet_v2_small", epochs=30.0)
    if arg == "cpu":
        c.train.epochs, arg = CPU_EPOCHS, None
    return with_variant(c, arg, fmnist_smoke)
