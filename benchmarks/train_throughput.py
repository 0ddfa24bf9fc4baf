"""Training throughput (images/s) of our jitted train step vs an equivalent PyTorch loop,
each framework in its own processes (:mod:`hobs_jax.experiments.studies.train_throughput`).

    python benchmarks/train_throughput.py                        # tiny CNN, 32x32x3, batch 64
    python benchmarks/train_throughput.py --model resnet20 --image 28 --batch 128
    python benchmarks/train_throughput.py --model mobilenet_v2_small --image 28 --batch 32 --fast-depthwise on,off
"""

from hobs_jax.experiments import studies
from hobs_jax.experiments.studies import train_throughput as study


def main(argv=None) -> None:
    p = studies.parser(__doc__)
    p.add_argument("--model", default="tiny_cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--width", type=int, default=32, help="tiny_cnn base width")
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per process")
    p.add_argument("--rounds", type=int, default=3, help="processes per framework, alternating")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0: every core")
    p.add_argument("--fast-depthwise", default="auto",
                   help="train.fast_depthwise of the JAX step (auto|on|off); a comma-separated list "
                        "(on,off) times each mode in every round")
    a = p.parse_args(argv)
    study.depthwise_modes(a.fast_depthwise)  # a bad mode fails here, before any timing
    studies.measure_and_publish(study, argv, a.model, a.batch, a.image, a.classes, a.width, a.steps, a.repeats,
                                a.rounds, a.warmup, a.threads, a.fast_depthwise, out=a.out)


if __name__ == "__main__":
    main()
