"""``samclip-proxy --out DIR [--size test|quick|full] [--seeds S ...] [--workers N] [--three-teachers]
[--ovsam [--ovsam-size tiny|test]]``: the proxy study (samclip.proxy.study), or with ``--three-teachers`` the
study of a third, dense teacher (samclip.proxy.three_teachers), or with ``--ovsam`` Open-Vocabulary SAM's
Table 1 (samclip.proxy.ovsam_study), on the same world and teachers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from samclip.proxy.ovsam_study import OVSAM_STUDY_SIZES, run_ovsam_study
from samclip.proxy.study import STUDY_SIZES, combine_studies, run_study
from samclip.proxy.three_teachers import run_three_teacher_study


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="samclip-proxy", description=__doc__)
    parser.add_argument("--out", required=True, help="study directory (world, teachers, runs, results.json)")
    parser.add_argument("--size", choices=sorted(STUDY_SIZES), default="quick")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="student seeds (default: the size's, 3 for quick/full)",
    )
    parser.add_argument(
        "--combine", nargs="+", metavar="STUDY_DIR", default=None,
        help="write one report in --out from finished studies of other seeds (same world and teachers)",
    )  # fmt: skip
    parser.add_argument(
        "--three-teachers", action="store_true",
        help="the two- vs three-teacher study (writes three_teachers.{json,md,png} in --out)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel (one thread each)")
    parser.add_argument(
        "--ovsam", action="store_true",
        help="OV-SAM's Table 1 on DIR's world and teachers (writes ovsam/results.{json,md} in --out)",
    )  # fmt: skip
    parser.add_argument("--ovsam-size", choices=sorted(OVSAM_STUDY_SIZES), default="test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report = "results.md"
    try:
        if args.combine:
            combine_studies(args.out, args.combine)
        elif args.ovsam:
            run_ovsam_study(args.out, args.ovsam_size, args.seeds)
            report = "ovsam/results.md"
        elif args.three_teachers:
            run_three_teacher_study(args.out, args.size, args.seeds, args.workers)
            report = "three_teachers.md"
        else:
            run_study(args.out, args.size, args.seeds, args.workers)
    except (ValueError, FileNotFoundError) as exn:
        print(f"samclip-proxy: error: {exn}", file=sys.stderr)
        raise SystemExit(2) from exn
    print((Path(args.out) / report).read_text())


if __name__ == "__main__":
    main()
