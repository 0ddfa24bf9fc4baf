"""H-OBS's compensation on the last block of MobileNetV2, EfficientNet-B0 and ViT (the
small zoo forms): relative output errors with and without compensation on held-out
Fashion-MNIST images (docs/hobs.md, Sec. 8).

    python benchmarks/hobs_blocks.py [--models mobilenet_v2_small,...] [--out FILE.json]
    python benchmarks/hobs_blocks.py --refit [--models ...] [--out FILE.json]

``--refit``: the whole method at quarter widths, without the sequential refit, refitting
every layer, and with the default that leaves sample-starved layers at their OBS
compensation (:func:`hobs_jax.analysis.compensation.refit_study`).

Random weights (no trained checkpoint exists yet), BatchNorm statistics re-estimated on
the 512 calibration images; half of each group's channels kept. The measurement:
:func:`hobs_jax.analysis.compensation.last_block_study`.
"""

import argparse
import json

from hobs_jax.analysis.compensation import LAST_BLOCKS, last_block_study, refit_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(LAST_BLOCKS))
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--out", default="")
    ap.add_argument("--refit", action="store_true", help="the sequential refit's three ways, whole method")
    a = ap.parse_args()
    rows = []
    for name in a.models.split(","):
        if a.refit:
            r = refit_study(name)
            rows.append(r)
            for way, e in r["ways"].items():
                print(f"{name} (widths / {r['divisor']}) {way}: logits relative error "
                      f"{e['logits_relative_error']:.3f}, MACs {e['macs_ratio']}, not refit {e['not_refit']} "
                      f"({e['seconds']} s)")
            continue
        r = last_block_study(name, calib=a.calib, test=a.test, keep=a.keep)
        rows.append(r)
        print(f"{name}: groups {r['groups']} removed {r['removed']} of {r['sizes']} ({r['seconds']} s)")
        for layer, e in r["consumers"].items():
            print(f"  consumer {layer}: {e['compensated']:.4f} compensated, {e['uncompensated']:.4f} without")
        b = r["block"]
        print(f"  block {b['output']}: {b['compensated']:.4f} compensated, {b['uncompensated']:.4f} without")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
