"""run_unrank_hyper.py / recbole_unrank.tuning on tiny (LightGCN, 2 epochs, CPU):

* an exhaustive search over two values of one key runs exactly two trials on one original
  (trained once), and its best.yaml, fed back to run_unrank.py with the search's request,
  reproduces the best trial's forget measures;
* an infeasible trial (its row forced below the utility floor while it forgets best) is never
  chosen; with no feasible trial there is no best.yaml; --checkpoint trains nothing;
* a trial that raises is recorded as an error and the search goes on;
* a malformed params file (or objective) -> exit 2, one line, no run folder;
* the Ray Tune path (2 trials on a local Ray instance), skipped where Ray cannot start;
* the objective's arithmetic, without training.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank import pipeline, tuning

REPO_ROOT = Path(__file__).resolve().parent.parent
HYPER = REPO_ROOT / "run_unrank_hyper.py"
MODEL, DATASET = "LightGCN", "tiny"


def _cpu_yaml(folder: Path) -> Path:
    path = folder / "cpu.yaml"
    path.write_text(
        f"data_path: {REPO_ROOT / 'dataset'}\ngpu_id: ''\nseed: 2020\nshow_progress: False\nepochs: 2\n"
        f"unrank_output_dir: {folder / 'runs'}\n",
        encoding="utf-8",
    )
    return path


def _params(folder: Path, text: str, name: str = "space.hyper") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _main_hyper(argv: list[str]) -> None:
    import run_unrank_hyper

    run_unrank_hyper.main([str(a) for a in argv])


def _run_dir(capsys) -> Path:
    out = capsys.readouterr().out.strip().splitlines()
    path = Path(out[-1])
    assert path.is_dir(), f"last stdout line is not the run folder: {out[-1]!r}"
    return path


def _trials(run_dir: Path) -> list[dict]:
    with open(run_dir / "trials.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


# ------------------------------------------------------------------------------ ray, early
@pytest.fixture(scope="module")
def ray_job(tmp_path_factory, py_async):
    """The Ray Tune search in a fresh process, started when the module starts (it overlaps
    the in-process tests): exhaustive over hops [1, 2] -> 2 trials on a local Ray instance."""
    try:
        import pyarrow  # noqa: F401
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return None, f"ray / ray.tune / pyarrow cannot be imported: {exc}"
    work = tmp_path_factory.mktemp("ray")
    space = _params(work, "unrank_hops choice [1,2]\n")
    argv = [sys.executable, HYPER, "-m", MODEL, "-d", DATASET, "--config_files", _cpu_yaml(work),
            "--params_file", space, "--algo", "exhaustive", "--tool", "ray", "--unrank_tune_utility_floor=1e-6"]
    return (work, py_async.argv(argv, work)), None


@pytest.fixture(scope="module", autouse=True)
def _start_ray_early(request):
    """Start the Ray job first, when its test is selected."""
    if any(item.name.startswith("test_ray") for item in request.session.items):
        request.getfixturevalue("ray_job")
    yield


# ------------------------------------------------------------------------------ one search
@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """``run_unrank_hyper.py -m LightGCN -d tiny --params_file <hops [1,2]> --algo exhaustive``
    in this process, counting the original's trainings."""
    work = tmp_path_factory.mktemp("hyper")
    space = _params(work, "# two values of one key\nunrank_hops choice [1,2]\n")
    mp = pytest.MonkeyPatch()
    calls = []
    real_train = pipeline.train_model

    def counting(*args, **kwargs):
        calls.append(kwargs.get("tag"))
        return real_train(*args, **kwargs)

    mp.setattr(pipeline, "train_model", counting)
    mp.chdir(work)
    mp.setattr(sys, "argv", [sys.argv[0]])
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            # a floor every trial meets: this search is about trials and best.yaml; the floor has
            # its own test below
            _main_hyper(["-m", MODEL, "-d", DATASET, "--config_files", _cpu_yaml(work), "--params_file", space,
                         "--algo", "exhaustive", "--unrank_tune_utility_floor=1e-6"])
    finally:
        mp.undo()
    run_dir = Path(buf.getvalue().strip().splitlines()[-1])
    return {"work": work, "run_dir": run_dir, "train_calls": calls, "space": space}


def test_exhaustive_two_trials_one_original(search):
    run_dir = search["run_dir"]
    assert run_dir.is_dir() and run_dir.parent == search["work"] / "runs"
    assert run_dir.name.startswith(f"{MODEL}-{DATASET}-hyper-")
    assert search["train_calls"] == ["original"], "the original must be trained once, not per trial"
    trials = _trials(run_dir)
    assert [t["trial"] for t in trials] == ["1", "2"]
    assert sorted(t["unrank_hops"] for t in trials) == ["1", "2"]
    assert all(t["status"] == "ok" for t in trials)
    for name in ("trials.csv", "trials.md", "best.yaml", "best.json", "trials.png", "request.inter",
                 "original.pth", "hyper.result", "run.log", f"{MODEL}-best.pth"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.tmp*"))
    md = (run_dir / "trials.md").read_text(encoding="utf-8")
    assert "**best**" in md and "| 1" in md and "| 2" in md


def test_best_is_the_lowest_feasible_loss(search):
    record = json.loads((search["run_dir"] / "best.json").read_text(encoding="utf-8"))
    trials = _trials(search["run_dir"])
    feasible = [t for t in trials if t["feasible"] == "True"]
    expected = min(feasible, key=lambda t: (float(t["loss"]), int(t["trial"])))
    assert record["best"]["trial"] == int(expected["trial"])
    assert record["best"]["params"] == {"unrank_hops": int(expected["unrank_hops"])}
    assert record["search"]["trials"] == 2 and record["search"]["algo"] == "exhaustive"
    assert [r["method"] for r in record["rows"]] == ["original", "default", "best"]
    for row in record["rows"]:  # the defaults and the best are reported on test
        assert {"ndcg@10", "recall@10"} <= set(row["test"]) and "forget_hit@10" in row["forget"]
        assert "ndcg@10" in row["valid"]
    # the rerun of the best settings gives the trial's own forget measures
    best_row = record["rows"][2]
    for key, value in record["best"]["forget"].items():
        assert best_row["forget"][key] == pytest.approx(value, abs=1e-9), key
    assert "test.ndcg@10" in record["test_comparison"]


def test_best_yaml_reproduces_the_best_trial(search, tmp_path, monkeypatch, capsys):
    """best.yaml + the search's request + the same seed, through run_unrank.py."""
    run_dir = search["run_dir"]
    best = yaml.safe_load((run_dir / "best.yaml").read_text(encoding="utf-8"))
    assert best["unrank_method"] == "l2unrank"
    assert all(k.startswith("unrank_") for k in best)
    record = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    assert best["unrank_hops"] == record["best"]["params"]["unrank_hops"]

    monkeypatch.chdir(tmp_path)
    import run_unrank

    cpu = _cpu_yaml(tmp_path)
    run_unrank.main(["-m", MODEL, "-d", DATASET, "--config_files", f"{cpu} {run_dir / 'best.yaml'}",
                     f"--unrank_request_file={run_dir / 'request.inter'}"])
    out = _run_dir(capsys)
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["request"]["pairs"] == json.loads((run_dir / "best.json").read_text())["request"]["pairs"]
    row = next(r for r in result["rows"] if r["method"] == "l2unrank")
    for key in ("forget_hit@10", "forget_hit@20", "mean_rank", "rdr", "urr"):
        assert row["forget"][key] == pytest.approx(record["best"]["forget"][key], abs=1e-9), key
    # and the test utility of the search's own rerun of the best settings
    assert row["test"]["ndcg@10"] == pytest.approx(record["rows"][2]["test"]["ndcg@10"], abs=1e-9)


def test_infeasible_trial_is_never_best(search, tmp_path, monkeypatch, capsys):
    """One trial forced below the utility floor while forgetting best (forget_hit@10 = 0):
    the other is chosen. A floor above every trial: no best, no best.yaml. Both runs reuse the
    first search's original (--checkpoint): no training at all."""
    first = {int(t["unrank_hops"]): t for t in _trials(search["run_dir"])}
    r0, r1 = float(first[2]["valid_ratio"]), float(first[1]["valid_ratio"])
    assert r1 > 0
    floor = 0.999 * r1  # hops=1 meets it (same original, same request, same numbers)
    real = pipeline.Run.run_method

    def rigged(self, name, overrides=None, save=True, evaluate_test=True, label=None):
        row = real(self, name, overrides=overrides, save=save, evaluate_test=evaluate_test, label=label)
        if (label or "").startswith("trial") and (overrides or {}).get("unrank_hops") == 2:
            # hops=2 forgets perfectly but keeps half the utility the floor asks for
            row["forget"]["forget_hit@10"] = 0.0
            row["valid"]["ndcg@10"] = row["valid"]["ndcg@10"] * 0.5 * floor / r0 if r0 > 0 else 0.0
        return row

    monkeypatch.setattr(pipeline.Run, "run_method", rigged)
    calls = []
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: calls.append(1))
    monkeypatch.chdir(tmp_path)
    cpu = _cpu_yaml(tmp_path)
    common = ["-m", MODEL, "-d", DATASET, "--config_files", cpu, "--params_file", search["space"],
              "--algo", "exhaustive", "--checkpoint", search["run_dir"] / "original.pth"]
    _main_hyper(common + [f"--unrank_tune_utility_floor={floor!r}"])
    run_dir = _run_dir(capsys)
    trials = {int(t["unrank_hops"]): t for t in _trials(run_dir)}
    assert trials[2]["feasible"] == "False" and trials[1]["feasible"] == "True"
    assert float(trials[2]["forget_hit@10"]) == 0.0 <= float(trials[1]["forget_hit@10"])
    assert float(trials[2]["loss"]) >= tuning.INFEASIBLE_LOSS > float(trials[1]["loss"])
    record = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    assert record["best"]["params"] == {"unrank_hops": 1}
    assert yaml.safe_load((run_dir / "best.yaml").read_text())["unrank_hops"] == 1
    assert not calls, "--checkpoint: the original is loaded, not trained"

    _main_hyper(common + ["--unrank_tune_utility_floor=100"])
    none_dir = _run_dir(capsys)
    assert all(t["feasible"] == "False" for t in _trials(none_dir))
    assert not (none_dir / "best.yaml").exists()
    record = json.loads((none_dir / "best.json").read_text(encoding="utf-8"))
    assert record["best"] is None and [r["method"] for r in record["rows"]] == ["original", "default"]


def test_failing_trial_is_recorded_and_the_search_goes_on(search, tmp_path, monkeypatch, capsys):
    """An exception inside the method for one combination: an error trial, never best."""
    from recbole_unrank.methods import L2UnRank

    real = L2UnRank.unlearn

    def flaky(self, task):
        if int(self.s["view_k"]) == 20:
            raise RuntimeError("boom")
        return real(self, task)

    monkeypatch.setattr(L2UnRank, "unlearn", flaky)
    monkeypatch.chdir(tmp_path)
    space = _params(tmp_path, "unrank_view_k choice [10,20]\n")
    _main_hyper(["-m", MODEL, "-d", DATASET, "--config_files", _cpu_yaml(tmp_path), "--params_file", space,
                 "--algo", "exhaustive", "--checkpoint", search["run_dir"] / "original.pth",
                 "--unrank_tune_utility_floor=1e-6"])
    run_dir = _run_dir(capsys)
    trials = {t["unrank_view_k"]: t for t in _trials(run_dir)}
    assert trials["20"]["status"] == "error" and "RuntimeError: boom" in trials["20"]["error"]
    assert trials["10"]["status"] == "ok"
    record = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    assert record["best"]["params"] == {"unrank_view_k": 10}


# ------------------------------------------------------------------------------ bad input
BAD_PARAMS = {
    "unknown distribution": "unrank_hops normal 0,1\n",
    "bad line": "unrank_hops\n",
    "not an unrank key": "learning_rate choice [0.01,0.001]\n",
    "unknown unrank key": "unrank_nonsense choice [1,2]\n",
    "bad choice list": "unrank_hops choice [0,1\n",
    "bad range": "unrank_damping loguniform -2,-7\n",
    "refused value": "unrank_damping choice [0.0,0.01]\n",
    "continuous with exhaustive": "unrank_damping uniform 0.001,0.1\n",
    "empty": "# nothing\n",
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_malformed_params_file_exit_2(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = _params(tmp_path, BAD_PARAMS[case])
    with pytest.raises(SystemExit) as exc:
        _main_hyper(["-m", MODEL, "-d", DATASET, "--config_files", _cpu_yaml(tmp_path), "--params_file", space,
                     "--algo", "exhaustive"])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("run_unrank_hyper: error: "), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--unrank_tune_objective=metric:nope"], "not a reported measure"),
    (["--unrank_tune_objective=best"], "unrank_tune_objective"),
    (["--unrank_tune_utility_floor=0"], "floor"),
    (["--unrank_tune_method=nomethod"], "unrank_tune_method"),
    (["--params_file", "missing.hyper"], "does not exist"),
    (["--unrank_request_seed=1002"], "is an evaluation seed"),
])
def test_bad_objective_or_file_exit_2(argv, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    space = _params(tmp_path, "unrank_hops choice [1,2]\n")
    base = ["-m", MODEL, "-d", DATASET, "--config_files", _cpu_yaml(tmp_path)]
    if "--params_file" not in argv:
        base += ["--params_file", space]
    with pytest.raises(SystemExit) as exc:
        _main_hyper(base + argv)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "runs").exists()


def test_shipped_params_files_parse():
    """config/hyper/*.hyper: RecBole's own parser and ours read them; the paper's ranges."""
    from recbole.trainer import HyperTuning

    for name in ("l2unrank", "wmf", "neumf", "lightgcn"):
        path = REPO_ROOT / "config" / "hyper" / f"{name}.hyper"
        specs = {s.name: s for s in tuning.read_params_file(str(path))}
        assert set(HyperTuning._build_space_from_file(str(path))) == set(specs)
        assert specs["unrank_hops"].values == [1, 2, 3, 4]  # 0 leaves the weights nothing to act on
        assert specs["unrank_step_floor"].values == [0.0, 1.0]
        lo, hi = specs["unrank_damping"].probe_values()
        assert lo < 1e-2 < hi
        assert {"unrank_update", "unrank_view_k", "unrank_utility_guard", "unrank_curvature"} <= set(specs)


# ------------------------------------------------------------------------------ ray
@pytest.mark.slow  # starting a local Ray instance takes about two minutes on 2 cores
def test_ray_tune_two_trials(ray_job):
    job, why = ray_job
    if job is None:
        pytest.skip(why)
    work, pending = job
    res = pending.result(timeout=400)
    if res.returncode == 2 and "--tool ray:" in res.stderr:
        pytest.skip(res.stderr.strip().splitlines()[-1])
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    trials = _trials(run_dir)
    assert len(trials) == 2 and sorted(t["unrank_hops"] for t in trials) == ["1", "2"]
    assert all(t["status"] == "ok" for t in trials)
    record = json.loads((run_dir / "best.json").read_text(encoding="utf-8"))
    assert record["search"]["tool"] == "ray" and record["best"] is not None
    assert (run_dir / "best.yaml").is_file() and (run_dir / "trials.png").is_file()


# ------------------------------------------------------------------------------ objective
class _Cfg(dict):
    def __getitem__(self, key):
        return self.get(key)


def _cfg(**kw):
    base = {"unrank_topk": [10, 20], "unrank_metrics": ["forget_hit", "mean_rank", "urr"],
            "metrics": ["Recall", "NDCG"], "topk": [10, 20]}
    base.update(kw)
    return _Cfg(base)


def _rec(hit, ndcg, **forget):
    return {"status": "ok", "valid": {"ndcg@10": ndcg}, "forget": {"forget_hit@10": hit, **forget}, "time_s": 1.0}


def test_constrained_objective_orders_feasible_before_infeasible():
    obj = tuning.Objective.from_config(_cfg(unrank_tune_utility_floor=0.97))
    good, tie_better, bad = _rec(0.1, 0.305), _rec(0.1, 0.31), _rec(0.0, 0.25)
    for r in (good, tie_better, bad):
        obj.score(r, original_ndcg=0.31)
    assert good["feasible"] and tie_better["feasible"] and not bad["feasible"]
    assert tie_better["loss"] < good["loss"] < bad["loss"]
    assert bad["loss"] >= tuning.INFEASIBLE_LOSS
    assert math.isclose(good["loss"], 0.1 - tuning.TIE_WEIGHT * 0.305 / 0.31)
    err = {"status": "error"}
    obj.score(err, 0.31)
    assert err["loss"] == tuning.ERROR_LOSS and not err["feasible"]


def test_weighted_and_metric_objectives():
    w = tuning.Objective.from_config(_cfg(unrank_tune_objective="weighted", unrank_tune_weight=2.0))
    r = _rec(0.25, 0.3)
    w.score(r, 0.3)
    assert r["loss"] == pytest.approx(2 * 0.25 - 1.0) and r["feasible"]
    m = tuning.Objective.from_config(_cfg(unrank_tune_objective="metric:mean_rank"))
    assert m.bigger and m.section == "forget"
    r = _rec(0.0, 0.3, mean_rank=40.0)
    m.score(r, 0.3)
    assert r["loss"] == -40.0
    v = tuning.Objective.from_config(_cfg(unrank_tune_objective="metric:valid.ndcg@10"))
    assert v.bigger and v.section == "valid" and v.metric == "ndcg@10"
    h = tuning.Objective.from_config(_cfg(unrank_tune_objective="metric:forget_hit@20"))
    assert not h.bigger
    t = tuning.Objective.from_config(_cfg(unrank_tune_objective="metric:mean_rank:min"))
    assert not t.bigger


# ------------------------------------------------------------------------------ python API
def test_python_api_returns_best_json(search, tmp_path, monkeypatch):
    """``recbole_unrank.run_unrank_hyper``: the same search from Python (the first search's
    original, no training), best.json's record returned with the run folder."""
    import recbole_unrank as ru

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x", "--unrank_tune_utility_floor=100"])  # the API does not read sys.argv
    result = ru.run_unrank_hyper(model=MODEL, dataset=DATASET, config_file_list=[str(_cpu_yaml(tmp_path))],
                                 config_dict={"unrank_tune_utility_floor": 1e-6}, params_file=str(search["space"]),
                                 checkpoint=str(search["run_dir"] / "original.pth"))
    folder = Path(result.pop("run_dir"))
    assert result == json.loads((folder / "best.json").read_text(encoding="utf-8"))
    assert result["search"]["trials"] == 2 and result["best"] is not None
    assert (folder / "best.yaml").is_file()
