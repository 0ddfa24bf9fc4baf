"""resnet50 on ImageNet-1k (tensorflow-datasets imagenet2012 under TFDS_DATA_DIR), 224x224.

Dense training (or start from torchvision weights), H-OBS to half the MACs, fine-tuning with
distillation from the dense network, evaluation, latency benchmark and export:

    python -m hobs_jax.main --config=configs/resnet50.py --workdir=runs/resnet50_imagenet

From torchvision's pretrained weights instead of training (a .pth file you downloaded):

    python -m hobs_jax.main --config=configs/resnet50.py --workdir=runs/resnet50_imagenet \
        --config.init.kind=torch --config.init.path=/path/to/resnet50.pth

On a TPU pod or a SLURM GPU cluster: launch/tpu_pod.sh, launch/slurm_gpu.sbatch (README).
Expected result: not measured in this repository (no ImageNet on the machines it is developed
on); the project plan's ResNet-50 target is 75.96% top-1 at 3.10x speedup. The smoke variant
(`--config=configs/resnet50.py:smoke`: synthetic 224x224 images, 2 steps per training stage)
checks every stage end to end on a CPU.

Recipe (checked by ``python -m hobs_jax.validate --config=configs/resnet50.py``):

    train: optimizer=sgd epochs=90 batch_size=1024 lr=0.4 warmup_fraction=0.1 early_stopping=off
    finetune: optimizer=sgd epochs=30 batch_size=1024 lr=0.04 warmup_fraction=0 early_stopping=off kd=on
"""

from hobs_jax.pipeline.config import imagenet_config, imagenet_smoke, with_variant


def get_config(arg: str | None = None):
    c = imagenet_config("resnet50", epochs=90, batch_size=1024, lr_per_256=0.1, weight_decay=1e-4,
                        optimizer="sgd")
    return with_variant(c, arg, imagenet_smoke)
