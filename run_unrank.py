"""Unlearn with recbole-unrank, the way RecBole's run_recbole.py trains.

    python run_unrank.py -m LightGCN -d ml-100k --config_files "config/ml-100k.yaml config/LightGCN.yaml"
    python run_unrank.py -m WMF -d ml-100k --unrank_method=retrain --epochs=5
    python run_unrank.py -m LightGCN --checkpoint saved/LightGCN.pth --unrank_request_file forget.inter

Trains the original model (or loads ``--checkpoint``), draws the forget request, runs the
unlearning method(s), evaluates with RecBole's evaluator, and writes a run folder whose path
is the last line printed.
"""

import sys

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.cli import base_parser, fail, setup_logging, strip_own_args
from recbole_unrank.errors import UnrankError


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = base_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="start from this RecBole checkpoint (.pth) instead of training")
    parser.add_argument("--reference_models", default=None,
                        help="comma-separated RecBole models trained on the retained data for comparison, e.g. Pop,ItemKNN,BPR")
    args, rest = strip_own_args(parser, argv)
    if args.reference_models:
        rest.append(f"--unrank_reference_models=[{args.reference_models}]")
    sys.argv = [sys.argv[0]] + rest  # RecBole's Config reads --key=value from sys.argv
    setup_logging()
    from recbole_unrank.pipeline import build_config, run_unrank

    try:
        files = args.config_files.split() if args.config_files else None
        config = build_config(args.model, args.dataset, files)
        run = run_unrank(config, checkpoint=args.checkpoint)
    except UnrankError as exc:
        fail("run_unrank", str(exc))
    print(run.run_dir, flush=True)


if __name__ == "__main__":
    main()
