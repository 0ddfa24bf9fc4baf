"""The smallest main job that runs every stage: the fault-injection suite's config
(tests/test_faults.py). ResNet-20 on 16x16 synthetic images, a few steps per training
stage with a checkpoint every 2 steps and a train record every step (the suite's step
counter), H-OBS on 32 calibration images in 2 batches, a one-round XLA benchmark.

    python -m hobs_jax.main --config=tests/faults_config.py --workdir=/tmp/faults
"""

from hobs_jax.pipeline import base_config
from hobs_jax.pipeline.config import with_variant


def get_config(arg: str | None = None):
    c = base_config("resnet20")
    c.num_classes, c.in_channels = 10, 1
    c.data.source, c.data.image_size, c.data.synthetic_examples = "synthetic", 16, 128
    c.data.eval_batch_size = 32
    for t, steps in ((c.train, 4), (c.finetune, 4)):
        t.steps, t.epochs, t.batch_size, t.log_every = steps, 0.0, 16, 1
        t.checkpoint.every_steps, t.progress, t.tensorboard = 2, False, False
        t.warmup_fraction = 0.0
    c.calibrate.num_images, c.calibrate.batch_size = 32, 16
    c.prune.method, c.prune.target = "hobs", 0.5
    c.prune.hobs.calib_batch_size, c.prune.hobs.progress = 16, False
    c.prune.hobs.propagate, c.prune.evaluate_oneshot = 0, False  # fewer compiles: a cheaper run
    # XLA only, one round: the suite stops the stage, it does not time it (ONNX Runtime's
    # worker would add ~20 s to every run that reaches the benchmark stage).
    c.benchmark.runtimes, c.benchmark.rounds = "xla", 1
    c.benchmark.batch_sizes, c.benchmark.iters, c.benchmark.warmup = "1", 1, 1
    c.export.torch = False  # importing torch would double the export stage's time
    return with_variant(c, arg, lambda c: None)
