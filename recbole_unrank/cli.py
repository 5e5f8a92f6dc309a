"""The command lines ``recbole-unrank`` (``run_unrank.py``) and ``recbole-unrank-hyper``
(``run_unrank_hyper.py``): RecBole-style arguments, logging, one-line errors.

Every RecBole setting and every ``unrank_*`` key is accepted as ``--key value`` or
``--key=value``. RecBole's ``Config`` reads ``sys.argv`` itself and knows only the second form,
so the arguments are normalised to it (:func:`parse_args`) and handed to the config explicitly.
Bad input (any :class:`~recbole_unrank.errors.UnrankError`, and argparse's own errors) is one
line on stderr and exit status 2, with nothing written. A comparison in which some method
failed still writes its results (the failed rows carry their error), lists the failures on
stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from recbole_unrank.errors import UnrankError, cli_names

__all__ = ["main_unrank", "main_hyper", "main_stream", "unrank_parser", "hyper_parser", "stream_parser",
           "parse_args", "setup_logging", "fail"]

UNRANK_PROG = "run_unrank"
HYPER_PROG = "run_unrank_hyper"
STREAM_PROG = "run_unrank_stream"

UNRANK_DESCRIPTION = """\
Unlearn with recbole-unrank, the way RecBole's run_recbole.py trains.

  recbole-unrank -m LightGCN --preset ml-100k --preset LightGCN --preset quickstart
  recbole-unrank -m LightGCN -d ml-100k --preset ml-100k --preset LightGCN
  recbole-unrank -m WMF -d ml-100k --unrank_method retrain --epochs 5
  recbole-unrank --checkpoint saved/LightGCN.pth --unrank_request_file forget.inter

Trains the original model (or loads --checkpoint), draws the forget request, runs the
unlearning method(s), evaluates with RecBole's evaluator, and writes a run folder whose path
is the last line printed. Exit status: 0 done; 2 bad input (one line on stderr, nothing
written); 1 some method of a comparison failed (its row carries the error; the others are
written as usual).
"""

HYPER_DESCRIPTION = """\
Tune recbole-unrank's unrank_* settings with RecBole's HyperTuning, the way RecBole's
run_hyper.py tunes a model.

  recbole-unrank-hyper -m LightGCN -d ml-100k --preset ml-100k --preset LightGCN \\
      --params_file config/hyper/lightgcn.hyper --algo bayes --max_evals 20
  recbole-unrank-hyper -m WMF --params_file config/hyper/wmf.hyper --algo random --max_evals 30 \\
      --checkpoint saved/WMF.pth --unrank_tune_objective weighted --unrank_tune_weight 2

The original model is trained (or loaded from --checkpoint) once and the forget request drawn
once; each trial unlearns a fresh copy of that original with one sample of the space, and is
scored on the validation split and the request only (see recbole_unrank/tuning/). The best
settings and the defaults are then run once more and evaluated on test. The run folder
(trials.csv / trials.md / best.yaml / best.json / trials.png) is the last line printed;
best.yaml feeds recbole-unrank --config_files.
"""

STREAM_DESCRIPTION = """\
Serve forget requests on a model with an append-only journal (recbole_unrank/journal.py).

  recbole-unrank-stream --checkpoint saved/WMF.pth --journal journal/ --requests inbox/
  tail -f requests.jsonl | recbole-unrank-stream --checkpoint saved/WMF.pth --journal journal/ --requests -

--requests: a folder of request files (user_id:token<TAB>item_id:token, as --unrank_request_file),
processed in name order, the file name being the request id; or a file (or -, standard input)
with one JSON request per line: {"id": "r1", "user_id": ["196"], "item_id": ["242"]}. Each
request is applied, then journaled (flushed to disk), then acknowledged on stdout:
ack<TAB>id<TAB>applied|refused|failed<TAB>pairs forgotten<TAB>reason. A snapshot (an unlearned
RecBole checkpoint) is written every --snapshot_every requests and at the end; its path is the
last line printed. Rerun the same command after a crash: it resumes from the last snapshot,
replays the journal (checking each model digest) and skips requests already journaled. Exit
status: 0 done; 2 bad input or a journal that does not belong to the checkpoint (one line).
"""


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        fail(self.prog, f"{message} (see --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=100)


def _base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    usage = (f"{prog} [-m MODEL] [-d DATASET] [--config_files FILES] [--preset NAME] [--checkpoint PTH] "
             "[--key value | --key=value ...]")
    p = _OneLineParser(prog=prog, usage=usage, description=description, formatter_class=_Formatter,
                       allow_abbrev=False,
                       epilog="Any other RecBole setting is given the same way, e.g. --epochs 5 or "
                              "--learning_rate=0.002, as in RecBole's run_recbole.py.")
    p.add_argument("--model", "-m", default=None,
                   help="model name (WMF, NeuMF, LightGCN, BPR, ...); default: the checkpoint's model, "
                        "else the 'model:' of the config files, else LightGCN")
    p.add_argument("--dataset", "-d", default=None,
                   help="dataset name; default: the checkpoint's, else the 'dataset:' of the config files, "
                        "else ml-100k")
    p.add_argument("--config_files", default=None, help="space-separated YAML config files")
    p.add_argument("--preset", action="append", default=None, metavar="NAME",
                   help="a config file shipped with the package, by name (repeatable; before "
                        "--config_files): " + ", ".join(_preset_names()))
    p.add_argument("--checkpoint", default=None,
                   help="start from this RecBole checkpoint (.pth) instead of training the original")
    return p


def _preset_names() -> list[str]:
    from recbole_unrank.config import preset_names

    return preset_names()


def _add_unrank_keys(parser: argparse.ArgumentParser) -> None:
    """One option per ``unrank_*`` key, documented from ``properties/unrank.yaml``."""
    from recbole_unrank.config import _shown, unrank_keys

    group = parser.add_argument_group(
        "unrank_* settings (recbole_unrank/properties/unrank.yaml; --key value or --key=value, "
        "or in a config file)")
    for key, doc in unrank_keys().items():
        group.add_argument(f"--{key}", default=argparse.SUPPRESS, metavar=doc.kind.upper().replace(" ", "_"),
                           help=f"{doc.doc} (default: {_shown(doc.default)})".replace("%", "%%"))


def unrank_parser() -> argparse.ArgumentParser:
    p = _base_parser(UNRANK_PROG, UNRANK_DESCRIPTION)
    p.add_argument("--reference_models", default=None,
                   help="comma-separated RecBole models trained on the retained data for comparison, "
                        "e.g. Pop,ItemKNN,BPR")
    _add_unrank_keys(p)
    return p


def hyper_parser() -> argparse.ArgumentParser:
    p = _base_parser(HYPER_PROG, HYPER_DESCRIPTION)
    p.add_argument("--params_file", default=None,
                   help="RecBole params file of unrank_* settings, e.g. config/hyper/l2unrank.hyper")
    p.add_argument("--algo", default="exhaustive", choices=["exhaustive", "random", "bayes"],
                   help="hyperopt search: exhaustive (choice settings only; every combination), random, "
                        "bayes (TPE). Default: exhaustive, as RecBole's run_hyper.py")
    p.add_argument("--max_evals", type=int, default=100, help="trials for random / bayes (default 100)")
    p.add_argument("--early_stop", type=int, default=10,
                   help="random / bayes with hyperopt: stop after this many trials in a row without a better "
                        "loss (RecBole's HyperTuning early stop; default 10, as RecBole's)")
    p.add_argument("--tool", default="hyperopt", type=str.lower, choices=["hyperopt", "ray"],
                   help="hyperopt: RecBole's HyperTuning (default); ray: Ray Tune on a local Ray instance")
    _add_unrank_keys(p)
    return p


def stream_parser() -> argparse.ArgumentParser:
    p = _base_parser(STREAM_PROG, STREAM_DESCRIPTION)
    p.add_argument("--journal", default=None, metavar="DIR",
                   help="the journal folder (journal.jsonl, snapshots, lock); created if missing")
    p.add_argument("--requests", default=None, metavar="SRC",
                   help="a folder of request files (name order), a file with one JSON request per line, or -")
    p.add_argument("--snapshot_every", type=int, default=100, metavar="N",
                   help="write a snapshot every N requests (and at the end); default 100")
    _add_unrank_keys(p)
    return p


def _normalise(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--key value`` -> ``--key=value`` for every long option that takes a value (ours and
    RecBole's); short options and flags are left to argparse."""
    own = parser._option_string_actions  # noqa: SLF001 (argparse has no public lookup)
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            if token == "--":
                raise UnrankError("'--' is not an argument here: give settings as --key value")
            out.append(token)
            i += 1
            continue
        name, eq, _ = token.partition("=")
        action = own.get(name)
        takes_value = action is None or action.nargs != 0
        if eq or not takes_value:
            out.append(token)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{name}={argv[i + 1]}")
            i += 2
        elif action is None:
            raise UnrankError(f"{name} has no value: write {name} VALUE or {name}=VALUE")
        else:
            out.append(token)  # argparse reports the missing value
            i += 1
    return out


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the ``--key=value`` settings for RecBole's ``Config`` (``unrank_*``
    keys included)."""
    from recbole_unrank.config import unrank_keys

    tokens = _normalise(parser, argv)
    # RecBole's Config raises a bare SyntaxError (a traceback) on a key given twice with
    # different values: refuse it here, as bad input.
    repeatable = {name for name, action in parser._option_string_actions.items()  # noqa: SLF001
                  if isinstance(action, argparse._AppendAction)}  # noqa: SLF001 (--preset)
    seen: dict[str, str] = {}
    for token in tokens:
        if token.startswith("--") and "=" in token and token.split("=", 1)[0] not in repeatable:
            key, value = token[2:].split("=", 1)
            if seen.setdefault(key, value) != value:
                raise UnrankError(f"--{key} is given twice with different values ({seen[key]!r}, {value!r})")
    args, rest = parser.parse_known_args(tokens)
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        raise UnrankError(f"unrecognised argument(s) {' '.join(bad)}: settings are written --key value "
                          "or --key=value (see --help)")
    settings = list(rest)
    for key in unrank_keys():
        if hasattr(args, key):
            settings.append(f"--{key}={getattr(args, key)}")
            delattr(args, key)
    if getattr(args, "reference_models", None):
        settings.append(f"--unrank_reference_models=[{args.reference_models}]")
    for token in settings:
        key, value = token[2:].split("=", 1)
        if "=" in value:  # RecBole's Config splits on every '=' and would drop the setting
            raise UnrankError(f"--{key}: a value cannot contain '=' ({value!r}); put it in a config file")
    return args, settings


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "PIL", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library deprecation notices are not the user's business (and would break the one-line
    # contract of an error).
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(2)


def _presets(args) -> list[str] | None:
    if not args.preset:
        return None
    return [name for group in args.preset for name in group.replace(",", " ").split()]


def _run(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None, job, extra: tuple[str, ...] = ()):
    """Parse ``argv``, run ``job`` (an :mod:`recbole_unrank.api` function) with the common
    arguments plus the options named in ``extra``; bad input -> one line, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with cli_names():
        try:
            args, settings = parse_args(parser, argv)
            setup_logging()
            return job(model=args.model, dataset=args.dataset,
                       config_file_list=args.config_files.split() if args.config_files else None,
                       preset=_presets(args), checkpoint=args.checkpoint, argv=settings,
                       default_model="LightGCN", default_dataset="ml-100k",
                       **{k: getattr(args, k) for k in extra})
        except UnrankError as exc:
            fail(prog, str(exc))


def main_unrank(argv: list[str] | None = None) -> None:
    """``recbole-unrank`` / ``python run_unrank.py``."""
    from recbole_unrank import api

    run = _run(UNRANK_PROG, unrank_parser(), argv, api.run_job)
    failed = [r for r in run.record["rows"] if r.get("status") == "failed"]
    for row in failed:
        print(f"{UNRANK_PROG}: {row['method']} failed after {row['time_s']:.1f}s: {row['error']}",
              file=sys.stderr, flush=True)
    print(run.run_dir, flush=True)
    if failed:
        sys.exit(1)


def main_hyper(argv: list[str] | None = None) -> None:
    """``recbole-unrank-hyper`` / ``python run_unrank_hyper.py``."""
    from recbole_unrank import api

    result = _run(HYPER_PROG, hyper_parser(), argv, api.tune_job,
                  extra=("params_file", "algo", "max_evals", "tool", "early_stop"))
    print(result.run_dir, flush=True)


def main_stream(argv: list[str] | None = None) -> None:
    """``recbole-unrank-stream`` / ``python run_unrank_stream.py``."""
    from recbole_unrank import journal

    path = _run(STREAM_PROG, stream_parser(), argv, journal.stream_job,
                extra=("journal", "requests", "snapshot_every"))
    print(path, flush=True)
