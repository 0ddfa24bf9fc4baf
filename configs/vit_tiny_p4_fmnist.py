"""A ViT-Tiny-like transformer on 4x4 patches (``vit_tiny_p4``) on Fashion-MNIST.

The zoo's ``vit_tiny_p4`` (hobs_jax/models/vit.py, docs/models.md): torchvision's ViT code at
28x28x1, patch 4 (49 tokens and the class token), 6 layers of width 192 with 6 heads of 32
and MLP 384; 94.4 MMACs and 1.80 M parameters. Train the dense baseline:

    python -m hobs_jax.main --config=configs/vit_tiny_p4_fmnist.py \
        --workdir=runs/vit_tiny_p4_fmnist --config.stages=train,evaluate,export

GPU schedule (the default; bf16 compute on a GPU): AdamW lr 1e-3, weight decay 0.05 on the
kernels, label smoothing 0.1, batch 128, 60 epochs of cosine after a 10% warm-up (a ViT
trained from scratch on a small dataset needs far more epochs than a CNN; DeiT's recipe
scaled down). CPU schedule (``configs/vit_tiny_p4_fmnist.py:cpu``): the same recipe over 4
epochs, about 1 h on the shared 2-core CPU (XLA:CPU trains it at 72-89 images/s).
Throughput and estimates: docs/models.md ("Training throughput on the CPU"). The shipped
``checkpoints/vit_tiny_p4_fmnist`` is the ``:cpu`` schedule's export (2026-12-06, the
2-core CPU): **81.89% top-1** on the 10,000 test images (top-5 99.55%); a short schedule
for a ViT trained from scratch, so it sits well below the ResNets' 93-95%.
``:smoke`` runs every stage in seconds.

Recipe (checked by ``python -m hobs_jax.validate --config=configs/vit_tiny_p4_fmnist.py``):

    train: optimizer=adamw epochs=60 batch_size=128 lr=0.001 weight_decay=0.05 label_smoothing=0.1 warmup_fraction=0.1 early_stopping=off
    finetune: optimizer=adamw epochs=1 batch_size=128 lr=0.0001 weight_decay=0.05 warmup_fraction=0 early_stopping=off kd=off
"""

from hobs_jax.pipeline.config import fmnist_config, fmnist_smoke, with_variant

VARIANTS = ("", "cpu", "smoke")
CPU_EPOCHS = 4.0


def get_config(arg: str | None = None):
    c = fmnist_config("vit_tiny_p4", epochs=60.0)
    for t in (c.train, c.finetune):
        t.optimizer, t.weight_decay, t.nesterov = "adamw", 0.05, False
    c.train.lr, c.train.label_smoothing = 1e-3, 0.1
    c.finetune.lr = 1e-4
    if arg == "cpu":
        c.train.epochs, arg = CPU_EPOCHS, None
    return with_variant(c, arg, fmnist_smoke)
