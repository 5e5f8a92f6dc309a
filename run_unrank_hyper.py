"""Tune recbole-unrank's unrank_* settings with RecBole's HyperTuning, the way RecBole's run_hyper.py tunes a model.

    python run_unrank_hyper.py -m LightGCN -d ml-100k --config_files "config/ml-100k.yaml config/LightGCN.yaml" \
        --params_file config/hyper/lightgcn.hyper --algo bayes --max_evals 20
    python run_unrank_hyper.py -m WMF -d ml-100k --params_file config/hyper/wmf.hyper --algo random --max_evals 30 \
        --checkpoint saved/WMF.pth --unrank_tune_objective=weighted --unrank_tune_weight=2
    python run_unrank_hyper.py -m LightGCN --params_file config/hyper/l2unrank.hyper --algo bayes --tool ray

The original model is trained (or loaded from --checkpoint) once and the forget request drawn
once; each trial unlearns a fresh copy of that original with one sample of the space, and is
scored on the validation split and the request only (unrank_tune_objective: constrained,
weighted or metric:<name>; see recbole_unrank/tuning.py). The best settings and the defaults
are then run once more and evaluated on test. The run folder (trials.csv / trials.md /
best.yaml / best.json / trials.png) is the last line printed; best.yaml feeds
run_unrank.py --config_files.
"""

import sys

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.cli import base_parser, fail, setup_logging, strip_own_args
from recbole_unrank.errors import UnrankError

PROG = "run_unrank_hyper"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = base_parser(__doc__.strip().splitlines()[0])
    parser.add_argument("--params_file", default=None,
                        help="RecBole params file of unrank_* settings, e.g. config/hyper/l2unrank.hyper")
    parser.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"],
                        help="hyperopt search: exhaustive (choice settings only; every combination), random, "
                             "bayes (TPE). Default: exhaustive, as RecBole's run_hyper.py")
    parser.add_argument("--max_evals", type=int, default=100, help="trials for random / bayes (default 100)")
    parser.add_argument("--early_stop", type=int, default=10,
                        help="random / bayes with hyperopt: stop after this many trials in a row without a better "
                             "loss (RecBole's HyperTuning early stop; default 10, as RecBole's)")
    parser.add_argument("--tool", default="hyperopt", type=str.lower, choices=["hyperopt", "ray"],
                        help="hyperopt: RecBole's HyperTuning (default); ray: Ray Tune on a local Ray instance")
    parser.add_argument("--checkpoint", default=None,
                        help="start from this RecBole checkpoint (.pth) instead of training the original")
    args, rest = strip_own_args(parser, argv)
    sys.argv = [sys.argv[0]] + rest  # RecBole's Config reads --key=value from sys.argv
    setup_logging()
    from recbole_unrank.pipeline import build_config
    from recbole_unrank.tuning import tune_unrank

    try:
        if not args.params_file:
            raise UnrankError("no params file: pass --params_file (e.g. config/hyper/l2unrank.hyper)")
        files = args.config_files.split() if args.config_files else None
        config = build_config(args.model, args.dataset, files)
        result = tune_unrank(config, args.params_file, algo=args.algo, max_evals=args.max_evals, tool=args.tool,
                             checkpoint=args.checkpoint, early_stop=args.early_stop, config_files=files)
    except UnrankError as exc:
        fail(PROG, str(exc))
    print(result.run_dir, flush=True)


if __name__ == "__main__":
    main()
