"""`pgps schedule`: inspect the curriculum before committing days of GPU time to it."""

from __future__ import annotations

import argparse
import json

from pgps.schedule import MODES, build_schedule, format_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patch-size", type=int, nargs="+", required=True, metavar="N", help="planned patch size, 2 or 3 axes (Z Y X)"
    )
    parser.add_argument(
        "--poolings", type=int, nargs="+", required=True, metavar="P", help="stride-2 poolings per axis"
    )
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=2, help="planned batch size (default 2)")
    parser.add_argument("--mode", choices=MODES, default="pgps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rpss draws")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def main(args: argparse.Namespace) -> int:
    schedule = build_schedule(args.patch_size, args.poolings, args.epochs, args.batch_size, args.mode, args.seed)
    if args.json:
        print(json.dumps(schedule.to_dict()))
    else:
        print(format_table(schedule))
    return 0
