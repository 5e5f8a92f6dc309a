"""The suite: grid planning, bad input, resume, failed cells, summary, serial == Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import DATA_PATH, REPO_ROOT, subprocess_env

from recbole_unrank import suite
from recbole_unrank.errors import UnrankError


def _spec_file(tmp_path, **over) -> str:
    spec = {
        "dataset": "tiny",
        "models": ["WMF"],
        "tasks": [{"task": "interaction", "vary": "unrank_inter_ratio", "ratios": [0.2]},
                  {"task": "user", "ratios": [0.1]}],
        "design_seeds": [101],
        "eval_seeds": [1001, 1002],
        "methods": ["retrain", "l2unrank", "finetune"],
        "settings": {"data_path": str(DATA_PATH), "gpu_id": "", "epochs": 3, "show_progress": False},
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
    }
    spec.update(over)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


def _strip_times(obj):
    """A record without wall times (the only thing allowed to differ between runs)."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if k not in ("time_s", "speedup", "stages", "traceback") and not k.endswith("_s")}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_plan_orders_retrain_first_and_sweeps(tmp_path):
    spec = suite.load_spec(_spec_file(tmp_path, hop_sweep={"methods": ["l2unrank_paper"], "hops": [0, 2],
                                                           "tasks": ["interaction"]}))
    requests = suite.plan(spec)
    assert len(requests) == 2 * 2  # two task ratios x two evaluation seeds
    for req, cells in requests:
        assert cells[0].method == "retrain" and req.split == "eval"
        labels = [c.label for c in cells]
        if req.task == "interaction":
            assert labels[-2:] == ["l2unrank_paper[hops=0]", "l2unrank_paper[hops=2]"]
            assert dict(cells[-1].overrides) == {"unrank_hops": 2}
        else:
            assert not any("[" in lab for lab in labels)
    assert {r.seed for r, _ in suite.plan(suite.load_spec(_spec_file(tmp_path, seeds="design")))} == {101}
    # the two-sided update reads its own hops setting: the sweep varies that one
    spec = suite.load_spec(_spec_file(tmp_path, hop_sweep={"methods": ["l2unrank_twosided"], "hops": [1]}))
    assert {c.overrides for _, cells in suite.plan(spec) for c in cells if "[" in c.label} == {
        (("unrank_twosided_hops", 1),)}
    # ... and 'set' gives every cell of the sweep more settings (named in its label)
    spec = suite.load_spec(_spec_file(tmp_path, hop_sweep={"methods": ["l2unrank_twosided"], "hops": [0, 1],
                                                           "set": {"unrank_twosided_sides": "both"}}))
    swept = {c.label: c.overrides for _, cells in suite.plan(spec) for c in cells if "[" in c.label}
    assert swept == {"l2unrank_twosided[hops=0,sides=both]": (("unrank_twosided_hops", 0),
                                                              ("unrank_twosided_sides", "both")),
                     "l2unrank_twosided[hops=1,sides=both]": (("unrank_twosided_hops", 1),
                                                              ("unrank_twosided_sides", "both"))}
    for bad in ({"unrank_hops": 2}, ["unrank_twosided_sides"]):
        with pytest.raises(UnrankError, match="hop_sweep: 'set'"):
            suite.load_spec(_spec_file(tmp_path, hop_sweep={"methods": ["l2unrank_twosided"], "hops": [1],
                                                            "set": bad}))


def test_a_task_can_run_its_own_methods(tmp_path):
    # the ablations on the headline task only: a task's own 'methods' replace the suite's there
    tasks = [{"task": "interaction", "ratios": [0.2]},
             {"task": "user", "ratios": [0.1], "methods": ["l2unrank", "retrain"]}]
    spec = suite.load_spec(_spec_file(tmp_path, tasks=tasks))
    by_task = {req.task: [c.method for c in cells] for req, cells in suite.plan(spec)}
    assert by_task == {"interaction": ["retrain", "l2unrank", "finetune"], "user": ["retrain", "l2unrank"]}


def test_a_task_draws_its_own_user_selections_and_skip_leaves_cells_out(tmp_path):
    tasks = [{"task": "interaction", "ratios": [0.2]},
             {"task": "user", "ratios": [0.1], "users": ["random", "core", "edge"]},
             {"task": "item", "ratios": [0.1]}]
    skip = {"WMF": {"finetune": "five epochs cost more than the cell is worth here"}}
    spec = suite.load_spec(_spec_file(tmp_path, tasks=tasks, skip=skip))
    plan = suite.plan(spec)
    assert sorted({(r.task, r.users) for r, _ in plan}) == [
        ("interaction", "random"), ("item", "random"), ("user", "core"), ("user", "edge"), ("user", "random")]
    assert all([c.method for c in cells] == ["retrain", "l2unrank"] for _, cells in plan)
    record = {"dataset": "tiny", "planned": 0, "eval_seeds": [1001], "design_seeds": [101], "cells": [],
              "skipped": spec.skip}
    text = suite.summary.summary_markdown(record, [], [])
    assert "## Not run" in text and "WMF `finetune`: five epochs cost more" in text


@pytest.mark.parametrize("over, message", [
    ({"models": ["NoSuchModel"]}, "NoSuchModel"),
    ({"tasks": [{"task": "user", "ratios": [0.1], "users": ["middle"]}]}, "task user: unknown user selection"),
    ({"tasks": [{"task": "item", "ratios": [0.1], "users": ["core"]}]}, "task item draws items"),
    ({"skip": {"NeuMF": {"if": "why"}}}, "not one of the suite's models"),
    ({"skip": {"WMF": {"retrain": "why"}}}, "retrain cannot be skipped"),
    ({"skip": {"WMF": {"finetune": ""}}}, "give the reason"),
    ({"skip": {"WMF": ["finetune"]}}, "'skip' must map a model"),
    ({"tasks": [{"task": "items", "ratios": [0.1]}]}, "unknown task"),
    ({"methods": ["retrain", "magic"]}, "unknown method 'magic'"),
    ({"modelz": ["WMF"]}, "did you mean 'models'"),
    ({"tasks": []}, "at least one task"),
    ({"tasks": [{"task": "item", "ratios": [1.5]}]}, "outside (0, 1]"),
    ({"tasks": [{"task": "item", "ratios": [0]}]}, "outside (0, 1]"),
    ({"eval_seeds": [101, 1002]}, "both design and evaluation seeds"),
    ({"eval_seeds": []}, "eval_seeds"),
    ({"users": ["middle"]}, "unknown user selection"),
    ({"tasks": [{"task": "user", "vary": "unrank_item_ratio", "ratios": [0.1]}]}, "varies one of"),
    ({"tasks": [{"task": "user", "ratios": [0.1], "methods": ["retrain", "magic"]}]}, "'magic' is not one"),
    ({"tasks": [{"task": "user", "ratios": [0.1], "methods": []}]}, "'methods' must list known methods"),
    ({"tasks": [{"task": "user", "ratio": [0.1]}]}, "unknown key 'ratio'"),
])
def test_bad_suite_is_refused_in_one_line(tmp_path, over, message):
    path = _spec_file(tmp_path, **over)
    with pytest.raises(UnrankError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        suite.load_spec(path)
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "cache")


@pytest.mark.parametrize("over, message", [
    ({"methods": ["retrain", "magic"]}, "unknown method"),
    ({"eval_seeds": [101, 1002]}, "both design and evaluation seeds"),
])
def test_bad_suite_on_the_command_line_exit_2_nothing_written(tmp_path, over, message):
    path = _spec_file(tmp_path, **over)
    before = set(os.listdir(tmp_path))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run_unrank_suite.py"), "--config_files", path],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message.split("'")[0] in lines[0]
    assert set(os.listdir(tmp_path)) == before  # no output folder, no cache


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite-serial")
    spec = suite.load_spec(_spec_file(tmp))
    record = suite.run_suite(spec, show_progress=False)
    return tmp, spec, record


def test_serial_suite_records_every_cell_and_summarises(serial_run):
    tmp, spec, record = serial_run
    assert record["planned"] == 4 * 3 and len(record["cells"]) == 12
    assert all(c["status"] == "ok" for c in record["cells"])
    for c in record["cells"]:
        row = c["row"]
        assert {"test", "forget", "request_users", "audit", "fairness"} <= set(row)
        assert row["audit"]["mia_auc"] is not None
        assert c["original"]["audit"]["mia_auc"] is not None
    text = open(os.path.join(spec.output_dir, "summary.md"), encoding="utf-8").read()
    assert "## WMF: interaction task, inter_ratio 0.2, random users" in text and "Pooled" in text
    rows = suite.summary_rows(record)
    l2 = next(r for r in rows if r["method"] == "l2unrank" and r["task"] == "interaction")
    assert l2["n"] == 2 and l2["forget.forget_hit@10.mean"] is not None
    assert os.path.isfile(os.path.join(spec.output_dir, "plots", "utility-vs-mia.png"))


def test_summary_counts_converged_solves(serial_run):
    # the solve column says how many requests' solves met their tolerance, k/n, from the rows
    _, _, record = serial_run
    import copy

    rec = copy.deepcopy(record)
    l2 = [c for c in rec["cells"] if c["method"] == "l2unrank" and c["request"]["task"] == "interaction"]
    assert len(l2) == 2 and all("solve" in c["row"] for c in l2)
    l2[0]["row"]["solve"] = {"converged": False, "rel_residual": 0.8}
    l2[1]["row"]["solve"] = {"converged": True, "rel_residual": 1e-6}
    rows = suite.summary_rows(rec)
    row = next(r for r in rows if r["method"] == "l2unrank" and r["task"] == "interaction")
    assert suite.cell_text(row, "solve.converged") == "1/2"
    assert row["solve.rel_residual.mean"] == pytest.approx((0.8 + 1e-6) / 2)
    assert row["solve.converged.p"] is None  # how a method ran is not tested against retrain
    retrain = next(r for r in rows if r["method"] == "retrain" and r["task"] == "interaction")
    assert suite.cell_text(retrain, "solve.converged") == "-"
    assert "| solved |" in suite.summary_markdown(rec, rows, suite.pooled_tests(rec))


def test_design_cells_are_summarised_apart_from_the_evaluation_ones(serial_run, tmp_path):
    # a run of design seeds only: its summary is written apart and says it is in-sample; the
    # evaluation summary says there is nothing to report yet (and no plot is drawn from nothing)
    _, _, record = serial_run
    import copy

    rec = copy.deepcopy(record)
    for c in rec["cells"]:
        c["request"]["split"] = "design"
    out = str(tmp_path / "design")
    suite.summarise(None, rec, out)
    design = open(os.path.join(out, "summary-design.md"), encoding="utf-8").read()
    assert "(design seeds)" in design and "in-sample" in design
    assert "## WMF: interaction task, inter_ratio 0.2, random users" in design
    evaluation = open(os.path.join(out, "summary.md"), encoding="utf-8").read()
    assert "No finished evaluation cell yet." in evaluation and "## WMF" not in evaluation
    assert not os.path.exists(os.path.join(out, "plots"))
    # an evaluation run writes no design summary
    out2 = str(tmp_path / "eval")
    suite.summarise(None, record, out2)
    assert not os.path.exists(os.path.join(out2, "summary-design.md"))
    assert suite.summary_rows(record, "design") == [] and suite.summary_rows(rec, "design")


def test_rerun_skips_finished_cells_and_redo_reruns_one_method(serial_run):
    tmp, spec, _ = serial_run
    cells_dir = os.path.join(spec.output_dir, "cells")
    stamp = {f: os.path.getmtime(os.path.join(cells_dir, f)) for f in os.listdir(cells_dir)}
    suite.run_suite(spec, show_progress=False)
    assert {f: os.path.getmtime(os.path.join(cells_dir, f)) for f in os.listdir(cells_dir)} == stamp
    requests = suite.plan(spec)
    assert suite.forget_cells(spec, requests, ["finetune"]) == 4
    suite.run_suite(spec, show_progress=False)
    changed = {f for f in os.listdir(cells_dir) if os.path.getmtime(os.path.join(cells_dir, f)) != stamp[f]}
    assert changed and all(f.endswith("finetune.json") for f in changed) and len(changed) == 4
    assert not any(f.endswith(".tmp") for f in os.listdir(cells_dir))


def test_failed_cell_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    from recbole_unrank.methods import METHODS, UnlearningMethod

    class Broken(UnlearningMethod):
        name = "broken"

        def unlearn(self, task):
            raise RuntimeError("boom")

    monkeypatch.setitem(METHODS, "broken", Broken)
    spec = suite.load_spec(_spec_file(tmp_path, methods=["retrain", "broken", "l2unrank"],
                                      tasks=[{"task": "user", "ratios": [0.1]}], eval_seeds=[1001]))
    record = suite.run_suite(spec, show_progress=False)
    status = {c["method"]: c["status"] for c in record["cells"]}
    assert status == {"retrain": "ok", "broken": "failed", "l2unrank": "ok"}
    failed = next(c for c in record["cells"] if c["method"] == "broken")
    assert "boom" in failed["error"]
    assert "Failed cells" in open(os.path.join(spec.output_dir, "summary.md"), encoding="utf-8").read()


def test_ray_path_gives_the_serial_records(serial_run, tmp_path):
    pytest.importorskip("ray")
    _, spec, serial = serial_run
    ray_spec = suite.load_spec(_spec_file(tmp_path))
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env_path) if p)
    try:
        record = suite.run_suite(ray_spec, tool="ray", num_cpus=2, show_progress=False)
    finally:
        os.environ["PYTHONPATH"] = env_path
    key = lambda c: c["key"]  # noqa: E731
    a = [_strip_times(c) for c in sorted(serial["cells"], key=key)]
    b = [_strip_times(c) for c in sorted(record["cells"], key=key)]
    assert len(a) == len(b) == 12
    for x, y in zip(a, b):
        assert json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True), x["key"]


def test_model_cache_key_follows_what_defines_the_model(tmp_path):
    """The cache key changes with a setting, a config file's contents and the request, and
    not with where files go or with the ``unrank_*`` settings an original does not read."""
    conf = tmp_path / "extra.yaml"
    conf.write_text("learning_rate: 0.01\n", encoding="utf-8")
    spec = suite.load_spec(_spec_file(tmp_path, config_files=[str(conf)]))
    out = spec.output_dir

    def key(spec, req=None):
        return suite.model_cache_key(spec, "WMF", suite.model_config(spec, "WMF", 2020, req, out), req)

    base = key(spec)
    assert key(spec) == base and len(base) == 16
    moved = suite.load_spec(_spec_file(tmp_path, config_files=[str(conf)], cache_dir=str(tmp_path / "elsewhere"),
                                       output_dir=str(tmp_path / "out2")))
    assert key(moved) == base  # file locations do not define the model
    method_only = suite.load_spec(_spec_file(tmp_path, config_files=[str(conf)],
                                             settings={**spec.settings, "unrank_cg_steps": 7}))
    assert key(method_only) == base
    changed = suite.load_spec(_spec_file(tmp_path, config_files=[str(conf)],
                                         settings={**spec.settings, "embedding_size": 8}))
    assert key(changed) != base
    conf.write_text("learning_rate: 0.02\n", encoding="utf-8")
    assert key(spec) != base  # same file name, new contents
    conf.write_text("learning_rate: 0.01\n", encoding="utf-8")
    req_a, req_b = [r for r, _ in suite.plan(spec)][:2]
    # the original's key is the same from a request's config; a retrain's depends on its request
    assert suite.model_cache_key(spec, "WMF", suite.model_config(spec, "WMF", 2020, req_a, out)) == base
    assert len({base, key(spec, req_a), key(spec, req_b)}) == 3


def test_model_cache_reuses_same_settings_and_retrains_a_changed_recipe(serial_run, tmp_path):
    _, spec, _ = serial_run
    models = os.path.join(spec.cache_dir, "models")
    stamp = {f: os.path.getmtime(os.path.join(models, f)) for f in os.listdir(models)}
    small = {"tasks": [{"task": "user", "ratios": [0.1]}], "eval_seeds": [1001], "methods": ["retrain"],
             "cache_dir": spec.cache_dir}
    (tmp_path / "same").mkdir()
    same = suite.load_spec(_spec_file(tmp_path / "same", **small))
    suite.run_suite(same, show_progress=False)
    assert {f: os.path.getmtime(os.path.join(models, f)) for f in os.listdir(models)} == stamp  # reused
    (tmp_path / "changed").mkdir()
    changed = suite.load_spec(_spec_file(tmp_path / "changed", settings={**spec.settings, "epochs": 2}, **small))
    record = suite.run_suite(changed, show_progress=False)
    assert all(c["status"] == "ok" for c in record["cells"])
    new = set(os.listdir(models)) - set(stamp)
    originals = [f for f in new if f.endswith(".pth") and "retrain" not in f]
    retrains = [f for f in new if f.endswith(".pth") and "retrain" in f]
    assert len(originals) == 1 and len(retrains) == len(suite.plan(changed)) >= 1, sorted(new)
    assert {f: os.path.getmtime(os.path.join(models, f)) for f in stamp} == stamp  # old entries kept


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_processes_under(marker: str) -> None:
    """Stop the Ray processes whose command line names ``marker`` (this test's own temp
    folder), by their ids: ``ray stop`` would stop every Ray process of the machine."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(marker in part for part in (proc.info.get("cmdline") or [])):
            procs.append(proc)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_suite_runs_against_a_ray_cluster_address(serial_run, tmp_path):
    """``--tool ray --address``: a Ray head started here (loopback, 1 CPU, its own temp folder),
    the suite's command line joins it, and its records equal the serial run's."""
    import re
    import shutil
    import tempfile

    pytest.importorskip("ray")
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("no ray command next to this Python")
    temp = tempfile.mkdtemp(prefix="ru-ray-")  # short: Ray's socket paths must fit 107 bytes
    env = {**subprocess_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        head = subprocess.run(
            [ray_cli, "start", "--head", "--port=0", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             "--include-dashboard=false", f"--dashboard-port={_free_port()}", f"--temp-dir={temp}",
             "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        found = re.search(r"--address='([^']+)'", head.stdout + head.stderr)
        address = found.group(1) if found else open(os.path.join(temp, "ray_current_cluster")).read().strip()
        _, spec, serial = serial_run
        spec_path = _spec_file(tmp_path, tasks=[{"task": "user", "ratios": [0.1]}], eval_seeds=[1001],
                               methods=["retrain", "l2unrank"])
        res = subprocess.run(
            [sys.executable, str(REPO_ROOT / "run_unrank_suite.py"), "--config_files", spec_path,
             "--tool", "ray", "--address", address, "--no_progress"],
            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    finally:
        _stop_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
    record = json.loads((tmp_path / "out" / "suite.json").read_text(encoding="utf-8"))
    by_key = {c["key"]: c for c in serial["cells"]}
    assert record["cells"] and all(c["status"] == "ok" for c in record["cells"])
    for cell in record["cells"]:
        assert json.dumps(_strip_times(cell), sort_keys=True) == json.dumps(
            _strip_times(by_key[cell["key"]]), sort_keys=True), cell["key"]


def test_only_runs_the_named_methods_and_the_summary_counts_the_whole_grid(tmp_path):
    spec = suite.load_spec(_spec_file(tmp_path, eval_seeds=[1001], tasks=[{"task": "user", "ratios": [0.1]}]))
    record = suite.run_suite(spec, show_progress=False, only=["l2unrank"])
    assert sorted(c["method"] for c in record["cells"]) == ["l2unrank", "retrain"]
    assert record["planned"] == 3  # finetune waits for a later run
    record = suite.run_suite(spec, show_progress=False)
    assert sorted(c["method"] for c in record["cells"]) == ["finetune", "l2unrank", "retrain"]
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "run_unrank_suite.py"), "--config_files",
                           _spec_file(tmp_path), "--only", "magic"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--only: ['magic'] is not a method of this grid" in proc.stderr


def test_only_and_redo_split_at_commas_outside_a_labels_brackets():
    sys.path.insert(0, str(REPO_ROOT))
    import run_unrank_suite

    assert run_unrank_suite._names("retrain_reseeded, l2unrank_twosided[hops=1,sides=both],if") == [
        "retrain_reseeded", "l2unrank_twosided[hops=1,sides=both]", "if"]
