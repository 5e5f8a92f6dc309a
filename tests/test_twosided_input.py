"""l2unrank_twosided's bad input (issue 22, "Bad input"): a setting or a scope that would move no
block is refused with one line; at the CLI that is exit 2 with nothing written.

* settings (when the method is built, before any data is read): a sweep cap that is not a whole
  number >= 1, a tolerance outside (0, 1) or not a number, hops that are not a whole number >= 0,
  a tolerance given where one sweep is taken whatever it says;
* the drawn request (``UnlearningMethod.check_fit``, called by the main job and the tuner after
  the request is drawn and before the run folder exists): a hop that adds no block, a model
  without both kinds of blocks (LightGCN), and a request with no pair in the train split.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank.errors import UnrankError
from recbole_unrank.methods import METHODS

REPO_ROOT = Path(__file__).resolve().parent.parent
OK = {"hops": 0, "sweeps": 8, "tol": 1e-3, "damping": 1e-2}

BAD_SETTINGS = [
    ({"sweeps": 0}, "unrank_twosided_sweeps"),
    ({"sweeps": -3}, "unrank_twosided_sweeps"),
    ({"sweeps": 1.5}, "unrank_twosided_sweeps"),
    ({"sweeps": True}, "unrank_twosided_sweeps"),
    ({"sweeps": "many"}, "unrank_twosided_sweeps"),
    ({"tol": 0.0}, "unrank_twosided_tol"),
    ({"tol": 1.0}, "unrank_twosided_tol"),
    ({"tol": -0.5}, "unrank_twosided_tol"),
    ({"tol": float("nan")}, "unrank_twosided_tol"),
    ({"tol": "small"}, "unrank_twosided_tol"),
    ({"hops": -1}, "unrank_twosided_hops"),
    ({"hops": 0.5}, "unrank_twosided_hops"),
    ({"damping": 0.0}, "unrank_damping"),
    ({"own_damping": 0.0}, "unrank_twosided_damping=0.0 must be > 0"),
    ({"own_damping": "big"}, "unrank_twosided_damping"),
    ({"sweeps": 1, "tol": 0.2}, "unrank_twosided_tol=0.2 has no effect"),
]


@pytest.mark.parametrize("bad,needle", BAD_SETTINGS, ids=[str(b) for b, _ in BAD_SETTINGS])
def test_bad_settings_one_line(bad, needle):
    with pytest.raises(UnrankError, match=needle) as exc:
        METHODS["l2unrank_twosided"](**{**OK, **bad})
    assert "\n" not in str(exc.value)


def test_good_settings_are_taken():
    """The counterpart: whole floats and the edges inside the ranges are accepted as numbers."""
    m = METHODS["l2unrank_twosided"](**{**OK, "sweeps": 3.0, "tol": 0.999, "hops": 2, "form": "tilt", "sides": "both"})
    assert m.s["sweeps"] == 3 and isinstance(m.s["sweeps"], int) and m.s["hops"] == 2 and m.s["tol"] == 0.999
    # one sweep with the default tolerance (not given) is fine
    assert METHODS["l2unrank_twosided"](sweeps=1).s["sweeps"] == 1
    # its own damping wins over the project-wide one where given; auto: NeuMF's own, else the project-wide one
    assert METHODS["l2unrank_twosided"](damping=0.5, own_damping=0.2).damping_for("WMF") == (0.2, "unrank_twosided_damping")
    auto = METHODS["l2unrank_twosided"](damping=0.5)
    assert auto.damping_for("WMF") == (0.5, "unrank_damping") and auto.damping_for("NeuMF")[0] == 0.5
    assert METHODS["l2unrank_twosided"]().damping_for("NeuMF")[0] == 0.1  # unrank_damping not given
    assert METHODS["l2unrank_twosided"]().damping_for("WMF")[0] == 0.01


def _cpu_yaml(folder: Path) -> Path:
    path = folder / "cpu.yaml"
    path.write_text(f"data_path: {REPO_ROOT / 'dataset'}\ngpu_id: ''\nseed: 2020\nshow_progress: False\n",
                    encoding="utf-8")
    return path


def _pair_not_in_data() -> tuple[str, str]:
    """A (user, item) token pair of tiny that is in no split: each token exists, the pair does not."""
    lines = (REPO_ROOT / "dataset" / "tiny" / "tiny.inter").read_text(encoding="utf-8").splitlines()[1:]
    pairs = [ln.split("\t")[:2] for ln in lines if ln.strip()]
    seen = {(u, i) for u, i in pairs}
    items = sorted({i for _, i in pairs})
    user = pairs[0][0]
    return user, next(i for i in items if (user, i) not in seen)


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


CLI_CASES = {
    # hops beyond the retained graph's reach: tiny's graph is connected, so a few hops cover it
    "idle hop": (["-m", "WMF", "--unrank_twosided_hops=50", "--unrank_twosided_sides=both"],
                 "unrank_twosided_hops=50 acts like"),
    # sides=users (the default) moves only users, and a neighbour user loses no row: hops would not act
    "hop with sides=users": (["-m", "WMF", "--unrank_twosided_hops=1"], "unrank_twosided_hops=1 has no effect"),
    # WMF's user block is quadratic with the items fixed: one sweep is exact
    "sweeps with sides=users on WMF": (["-m", "WMF", "--unrank_twosided_sweeps=3"], "unrank_twosided_sweeps=3 has no effect"),
    "LightGCN": (["-m", "LightGCN"], "does not support LightGCN"),
    "no request pair in the data": (["-m", "WMF", "--unrank_request_file={request}"], "none is in the train split"),
    "zero sweeps": (["-m", "WMF", "--unrank_twosided_sweeps=0"], "unrank_twosided_sweeps"),
    "tolerance 1": (["-m", "NeuMF", "--unrank_twosided_tol=1.0"], "unrank_twosided_tol"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_exit_2_one_line_nothing_written(case, tmp_path, in_tmp, capsys):
    import run_unrank

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    user, item = _pair_not_in_data()
    request = inputs / "request.inter"
    request.write_text(f"user_id:token\titem_id:token\n{user}\t{item}\n", encoding="utf-8")
    args, needle = CLI_CASES[case]
    out = tmp_path / "runs"
    argv = ["-d", "tiny", "--config_files", str(_cpu_yaml(inputs)), "--epochs=1", f"--unrank_output_dir={out}",
            "--unrank_method=l2unrank_twosided"] + [a.format(request=request) for a in args]
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as info:
        run_unrank.main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("run_unrank: error: ") and needle in lines[0], lines[0]
    assert not out.exists()
    assert _tree(tmp_path) == before


def test_cli_counterpart_runs(tmp_path, in_tmp, capsys):
    """The same command with hops the graph can take runs and writes its folder (so the refusal
    above is about the hop, not the command)."""
    import run_unrank

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "runs"
    run_unrank.main(["-d", "tiny", "-m", "WMF", "--config_files", str(_cpu_yaml(inputs)), "--epochs=1",
                     f"--unrank_output_dir={out}", "--unrank_method=l2unrank_twosided", "--unrank_twosided_hops=1",
                     "--unrank_twosided_sides=both"])
    assert out.exists() and any(out.iterdir())
