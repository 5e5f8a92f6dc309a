"""Shared command-line plumbing: RecBole-style arguments, logging, one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["base_parser", "strip_own_args", "setup_logging", "fail"]


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description,
        epilog="Any RecBole or unrank_* setting can be given as --key=value (e.g. --epochs=5, "
        "--unrank_method=retrain), as in RecBole's run_recbole.py.",
    )
    p.add_argument("--model", "-m", default="LightGCN", help="model name (WMF, NeuMF, LightGCN, BPR, ...)")
    p.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    p.add_argument("--config_files", default=None, help="space-separated YAML config files")
    return p


def strip_own_args(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse our options; return them and the ``--key=value`` rest that RecBole's Config reads
    from ``sys.argv`` (our own options would otherwise be reported as unused)."""
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognised arguments {bad}: RecBole settings are written --key=value")
    # RecBole's Config raises a bare SyntaxError (a traceback) on a key given twice with
    # different values: refuse it here, as bad input.
    seen: dict[str, str] = {}
    for arg in rest:
        key, value = arg[2:].split("=", 1)
        if seen.setdefault(key, value) != value:
            parser.error(f"--{key} is given twice with different values ({seen[key]!r}, {value!r})")
    return args, rest


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)
