"""``samclip-proxy --out DIR [--size test|quick|full] [--seeds S ...]``: the proxy study (see samclip.proxy.study)."""

from __future__ import annotations

import argparse
import logging
import sys

from samclip.proxy.study import STUDY_SIZES, combine_studies, run_study


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.combine:
            combine_studies(args.out, args.combine)
        else:
            run_study(args.out, args.size, args.seeds)
    except (ValueError, FileNotFoundError) as exn:
        print(f"samclip-proxy: error: {exn}", file=sys.stderr)
        raise SystemExit(2) from exn
    print((__import__("pathlib").Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    main()
