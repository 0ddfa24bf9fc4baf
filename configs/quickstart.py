"""The quickstart (``make demo``): prune the shipped Fashion-MNIST ResNet-20 to half its
MACs with H-OBS (2048 calibration images, global allocation on widths aligned to the
served runtime's quantum, BN re-estimation), fine-tune briefly, evaluate, benchmark dense
vs pruned, export.

Alignment (``prune.align='auto'``: multiples of 8 channels for XLA on this CPU) is what
makes the half-MACs network faster than dense: H-OBS's unaligned widths ran at 0.74-0.96x
of dense; aligned, 1.3-1.7x at the same one-shot accuracy within 0.1 point
(docs/results/aligned_allocation.md; ``--config.prune.align=off`` reproduces the old
allocation).

    python -m hobs_jax.main --config=configs/quickstart.py --workdir=workdir/quickstart

Starts from ``checkpoints/resnet20_fmnist`` (trained by configs/resnet20_fmnist.py; see
docs/results/fmnist_baselines.md), so nothing is trained from scratch. Expected result
and run time on the 2-core CPU: see README "Quick start" (figures from this command).

Recipe (checked by ``python -m hobs_jax.validate --config=configs/quickstart.py``):

    train: skipped
    finetune: optimizer=sgd steps=300 batch_size=128 lr=0.01 warmup_fraction=0 early_stopping=off kd=off
"""

from hobs_jax.pipeline import base_config
from hobs_jax.pipeline.config import with_variant


def get_config(arg: str | None = None):
    c = base_config("resnet20")
    c.num_classes, c.in_channels = 10, 1
    c.init.kind, c.init.path = "checkpoint", "checkpoints/resnet20_fmnist"
    c.stages = "train,calibrate,prune,finetune,evaluate,benchmark,export"
    c.calibrate.num_images, c.calibrate.batch_size = 2048, 256
    c.prune.method, c.prune.target, c.prune.align = "hobs", 0.5, "auto"
    f = c.finetune
    f.optimizer, f.lr, f.momentum, f.nesterov, f.weight_decay = "sgd", 0.01, 0.9, True, 5e-4
    f.steps, f.batch_size, f.warmup_fraction, f.eval_every = 300, 128, 0.0, 300
    f.checkpoint.every_steps = 100
    c.benchmark.batch_sizes, c.benchmark.iters = "1,64", 20
    return with_variant(c, arg, _smoke)


def _smoke(c):
    c.calibrate.num_images = 256
    f = c.finetune
    f.steps, f.eval_every, f.checkpoint.every_steps = 4, 4, 2
    c.benchmark.batch_sizes, c.benchmark.iters = "1,8", 3
