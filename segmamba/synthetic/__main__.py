"""``python -m segmamba.synthetic --out DIR --cases N --seed S``: write BraTS-layout synthetic cases."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from segmamba.synthetic.cases import CaseConfig, write_brats_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (BraTS 2023 layout)")
    parser.add_argument("--cases", type=int, default=40, help="number of cases (seeds seed .. seed+cases-1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case")
    parser.add_argument("--tumour-probability", type=float, default=CaseConfig.tumour_probability)
    parser.add_argument("--skull-strip-probability", type=float, default=CaseConfig.skull_strip_probability)
    parser.add_argument("--head-scale", type=float, nargs=2, default=CaseConfig.head_scale,
                        help="range of the head size relative to an adult head")
    parser.add_argument("--lesion-radius", type=float, nargs=2, default=CaseConfig.lesion_radius_mm,
                        help="range of the lesion's outer radius (mm)")
    parser.add_argument("--anatomy", choices=("mni152", "phantom"), default=CaseConfig.anatomy,
                        help="MNI152 template head (nilearn's bundled maps) or the analytic ellipsoid phantom")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    args = parser.parse_args(argv)
    config = CaseConfig(anatomy=args.anatomy, tumour_probability=args.tumour_probability,
                        skull_strip_probability=args.skull_strip_probability,
                        head_scale=tuple(args.head_scale), lesion_radius_mm=tuple(args.lesion_radius))
    start = time.perf_counter()
    folders = write_brats_dataset(args.out, args.cases, args.seed, config, workers=args.workers)
    print(f"wrote {len(folders)} cases to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
