"""H-OBS's compensation on the last block of MobileNetV2, EfficientNet-B0 and ViT, and its
sequential refit after global pooling (docs/hobs.md, Sec. 8;
:mod:`hobs_jax.experiments.studies.hobs_blocks` and ``.hobs_blocks_refit``).

    python benchmarks/hobs_blocks.py [--models mobilenet_v2_small,...]   # docs/results/hobs_blocks.*
    python benchmarks/hobs_blocks.py --refit [--models ...]              # docs/results/hobs_blocks_refit.*

Random weights (no trained checkpoint of these forms exists), BatchNorm statistics
re-estimated on Fashion-MNIST calibration images. Tens of CPU-minutes per model at full
width (the last-block study) on a 2-core CPU.
"""

from hobs_jax.analysis.compensation import LAST_BLOCKS
from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import hobs_blocks, hobs_blocks_refit


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--models", default=None, help="zoo names, comma-separated (default: every last block; "
                   "--refit: efficientnet_b0_small,mobilenet_v2_small)")
    p.add_argument("--calib", type=int, default=512, help="calibration images (last-block study)")
    p.add_argument("--test", type=int, default=1000, help="test images (last-block study)")
    p.add_argument("--keep", type=float, default=0.5, help="share of each group kept (last-block study)")
    p.add_argument("--refit", action="store_true", help="the sequential refit's three ways, whole method")
    a = p.parse_args(argv)
    if a.refit:
        models = (a.models or "efficientnet_b0_small,mobilenet_v2_small").split(",")
        studies.measure_and_publish(hobs_blocks_refit, argv, models, out=a.out)
    else:
        models = (a.models or ",".join(LAST_BLOCKS)).split(",")
        studies.measure_and_publish(hobs_blocks, argv, models, a.calib, a.test, a.keep, out=a.out)


if __name__ == "__main__":
    main()
