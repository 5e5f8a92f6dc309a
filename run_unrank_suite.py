"""Run a grid of unlearning runs from a suite YAML and summarise it over held-out request seeds.

    python run_unrank_suite.py --config_files config/suite/ml100k.yaml
    python run_unrank_suite.py --config_files config/suite/ml100k.yaml --tool ray --num_cpus 2
    python run_unrank_suite.py --config_files config/suite/ml100k.yaml --tool ray --address auto
    python run_unrank_suite.py --config_files config/suite/ml100k.yaml --summarise_only

The grid (models x tasks x ratios x user selections x request seeds x methods) and its output
folder come from the YAML (see recbole_unrank/suite/). Each finished cell is recorded at once,
atomically: rerunning the same command skips finished cells. The output folder is the last line.
"""

import argparse
import os
import re
import sys

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.cli import fail, setup_logging
from recbole_unrank.errors import UnrankError

PROG = "run_unrank_suite"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        fail(PROG, f"{message} (see --help)")


def _names(text: str) -> list[str]:
    """Comma-separated methods or cell labels; a comma inside a label's brackets
    (``l2unrank_twosided[hops=1,sides=both]``) does not split it."""
    return [m.strip() for m in re.split(r",(?![^\[]*\])", text) if m.strip()]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(prog=PROG, description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config_files", required=True, help="the suite YAML, e.g. config/suite/ml100k.yaml")
    parser.add_argument("--tool", default="serial", choices=["serial", "ray"],
                        help="serial (default) or ray: each request a Ray task")
    parser.add_argument("--num_cpus", type=int, default=None, help="CPUs of the local Ray instance (--tool ray)")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (--tool ray), e.g. auto")
    parser.add_argument("--output_dir", default=None, help="override the YAML's output_dir")
    parser.add_argument("--seeds", default=None, choices=["eval", "design", "all"],
                        help="which request seeds to run (default: the YAML's, else eval)")
    parser.add_argument("--redo", default=None,
                        help="comma-separated methods whose finished cells are run again (e.g. after a change "
                             "to them); retrain here reruns only its evaluation, its model stays cached")
    parser.add_argument("--only", default=None,
                        help="comma-separated methods to run now (retrain always runs); the other cells wait for "
                             "a later run, and the summary still counts the whole grid")
    parser.add_argument("--summarise_only", action="store_true", help="rewrite summary and plots from the cells")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    sys.argv = [sys.argv[0]]  # RecBole's Config reads --key=value from sys.argv
    setup_logging()
    from recbole_unrank import suite

    try:
        overrides = {k: v for k, v in (("output_dir", args.output_dir), ("seeds", args.seeds)) if v}
        spec = suite.load_spec(args.config_files, overrides)
        if args.num_cpus is not None and args.num_cpus < 1:
            raise UnrankError(f"--num_cpus {args.num_cpus} must be at least 1")
        if args.tool != "ray" and (args.num_cpus or args.address):
            raise UnrankError("--num_cpus / --address need --tool ray")
        requests = suite.plan(spec)
        only = _names(args.only) if args.only else None
        if only is not None:
            labels = {c.label for _, cs in requests for c in cs} | {c.method for _, cs in requests for c in cs}
            if not only or any(m not in labels for m in only):
                bad = [m for m in only if m not in labels]
                raise UnrankError(f"--only: {bad or 'nothing'} is not a method of this grid: choose from "
                                  f"{sorted({c.method for _, cs in requests for c in cs})}")
        if args.redo:
            suite.forget_cells(spec, requests, _names(args.redo))
        if args.summarise_only:
            path = os.path.join(spec.output_dir, "cells")
            if not os.path.isdir(path):
                raise UnrankError(f"no {path} yet: run the suite first")
            record = suite.write_suite_json(spec, requests, spec.output_dir)
            suite.summarise(spec, record, spec.output_dir)
        else:
            suite.run_suite(spec, tool=args.tool, num_cpus=args.num_cpus, address=args.address,
                            show_progress=not args.no_progress, only=only)
    except UnrankError as exc:
        fail(PROG, str(exc))
    print(spec.output_dir, flush=True)


if __name__ == "__main__":
    main()
