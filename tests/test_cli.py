"""run_unrank.py end to end on tiny (WMF, retrain, 1 epoch), the run folder contract
(DESIGN.md section 7), bad input (exit 2, one line on stderr, nothing written), and that the
retrained model never sees a forgotten pair."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_python

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank import pipeline
from recbole_unrank.errors import UnrankError
from recbole_unrank.request import split_train
from recbole_unrank.synthetic import generate_interactions, write_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "run_unrank.py"
TEST_KEYS = {"recall@10", "ndcg@10", "recall@20", "ndcg@20"}
FORGET_KEYS = {"forget_hit@10", "forget_hit@20", "mean_rank"}
COMPARE_KEYS = {"rdr", "urr", "rank_decline_ratio"}


def _write_cpu_yaml(folder: Path) -> Path:
    path = folder / "cpu.yaml"
    path.write_text(
        f"data_path: {REPO_ROOT / 'dataset'}\ngpu_id: ''\nseed: 2020\nshow_progress: False\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, py_async):
    """``python run_unrank.py -m WMF -d tiny --unrank_method=retrain --epochs=1`` in a fresh
    process, started when the module starts (it overlaps the in-process tests)."""
    work = tmp_path_factory.mktemp("e2e")
    argv = [sys.executable, SCRIPT, "-m", "WMF", "-d", "tiny", "--config_files", _write_cpu_yaml(work),
            "--unrank_method=retrain", "--epochs=1", f"--unrank_output_dir={work / 'runs'}"]
    return work, py_async.argv(argv, work)


@pytest.fixture(scope="module", autouse=True)
def _start_e2e_early(e2e):
    yield


@pytest.fixture(scope="module")
def run_dir(e2e) -> Path:
    work, pending = e2e
    res = pending.result()
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    path = Path(last)
    assert path.is_dir(), f"last stdout line is not the run folder: {last!r}"
    assert path.parent == work / "runs"
    return path


# ------------------------------------------------------------------------------ end to end
def test_run_folder_contents(run_dir):
    for name in ("results.json", "results.md", "request.inter", "original.pth", "WMF-retrain.pth"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.tmp"))


def test_results_json_contract(run_dir):
    record = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert record["model"] == "WMF" and record["dataset"] == "tiny" and record["seed"] == 2020
    req = record["request"]
    assert set(req) >= {"source", "pairs", "users", "items", "skipped"}
    assert req["source"] == "interaction" and req["pairs"] > 0 and req["skipped"] == 0
    rows = record["rows"]
    assert [r["method"] for r in rows] == ["original", "retrain"]
    for row in rows:
        assert isinstance(row["time_s"], float) and row["time_s"] >= 0
        assert TEST_KEYS <= set(row["test"]), row["test"].keys()
        assert FORGET_KEYS <= set(row["forget"]), row["forget"].keys()
        for section in ("test", "forget"):
            for key, value in row[section].items():
                assert key == key.lower()
                assert isinstance(value, (int, float)) and np.isfinite(value), (key, value)
        assert "ranks" not in row
    original, retrain = rows
    assert not COMPARE_KEYS & set(original["forget"])
    assert COMPARE_KEYS <= set(retrain["forget"])
    ckpt = Path(retrain["checkpoint"])
    assert ckpt.is_file() and ckpt.parent == run_dir


def test_results_md_and_request_file(run_dir):
    md = (run_dir / "results.md").read_text(encoding="utf-8")
    assert "| original |" in md and "| retrain |" in md
    record = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    lines = (run_dir / "request.inter").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "user_id:token\titem_id:token"
    assert len(lines) - 1 == record["request"]["pairs"]


def test_rerun_with_request_file_gives_same_request(run_dir, tmp_path, in_tmp, capsys, monkeypatch):
    import run_unrank

    seen = []  # (tag, pairs of the train loader's dataset) for every model trained

    real_train_model = pipeline.train_model

    def recording_train_model(config, train_loader, valid_loader, path=None, tag="model"):
        out = real_train_model(config, train_loader, valid_loader, path, tag)
        ds = train_loader._dataset
        seen.append((tag, set(zip(ds.inter_feat[ds.uid_field].tolist(), ds.inter_feat[ds.iid_field].tolist()))))
        return out

    monkeypatch.setattr(pipeline, "train_model", recording_train_model)
    request_file = run_dir / "request.inter"
    run_unrank.main(["-m", "WMF", "-d", "tiny", "--config_files", str(_write_cpu_yaml(tmp_path)),
                     "--unrank_method=retrain", "--epochs=1", f"--unrank_request_file={request_file}",
                     f"--unrank_output_dir={tmp_path / 'runs'}"])
    out = capsys.readouterr().out.strip().splitlines()
    second = Path(out[-1])
    assert second.is_dir() and second.parent == tmp_path / "runs"

    first_rec = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    second_rec = json.loads((second / "results.json").read_text(encoding="utf-8"))
    assert second_rec["request"]["source"] == "file"
    for key in ("pairs", "users", "items", "skipped"):
        assert second_rec["request"][key] == first_rec["request"][key], key
    first_lines = (run_dir / "request.inter").read_text(encoding="utf-8").splitlines()
    second_lines = (second / "request.inter").read_text(encoding="utf-8").splitlines()
    assert first_lines[0] == second_lines[0]
    assert sorted(first_lines[1:]) == sorted(second_lines[1:])
    # Same seed, same request: the same results (DESIGN.md section 6).
    for a, b in zip(first_rec["rows"], second_rec["rows"]):
        assert a["method"] == b["method"]
        for section in ("test", "forget"):
            assert b[section] == pytest.approx(a[section], abs=2e-4), (a["method"], section)

    # The retrained model was trained on the retained data only.
    tags = [t for t, _ in seen]
    assert tags == ["original", "retrain"], tags
    original_pairs, retrain_pairs = seen[0][1], seen[1][1]
    dataset = _tiny_dataset_tokens(tmp_path)
    forgotten = {(dataset["u"][u], dataset["i"][i]) for u, i in (ln.split("\t") for ln in first_lines[1:])}
    assert len(forgotten) == first_rec["request"]["pairs"]
    assert forgotten <= original_pairs
    assert not forgotten & retrain_pairs
    assert retrain_pairs == original_pairs - forgotten


def _tiny_dataset_tokens(workdir: Path) -> dict:
    """token -> internal id maps of tiny (as RecBole builds them with the test config)."""
    config = pipeline.build_config("WMF", "tiny", config_dict={
        "data_path": str(REPO_ROOT / "dataset"), "gpu_id": "", "checkpoint_dir": str(workdir / "saved")})
    data = pipeline.load_data(config)
    ds = data.dataset
    return {"u": ds.field2token_id[ds.uid_field], "i": ds.field2token_id[ds.iid_field]}


# ------------------------------------------------------------------------------ retained data
def test_retrain_loader_never_holds_a_forgotten_pair(tiny_config):
    config = tiny_config("WMF", train_batch_size=128)
    data = pipeline.load_data(config)
    request = pipeline.make_request(config, data)
    retain_ds, _ = split_train(data.train_ds, request)
    train, _, _ = pipeline.make_loaders(config, data, retain_ds)
    ds = train._dataset
    assert ds is retain_ds
    uid, iid = ds.uid_field, ds.iid_field
    forgotten = set(zip(request.users.tolist(), request.items.tolist()))
    assert forgotten
    in_dataset = set(zip(ds.inter_feat[uid].tolist(), ds.inter_feat[iid].tolist()))
    assert not forgotten & in_dataset
    batches = set()
    n = 0
    for batch in train:  # what the trainer actually feeds the model
        pairs = list(zip(batch[uid].tolist(), batch[iid].tolist()))
        n += len(pairs)
        batches.update(pairs)
    assert not forgotten & batches
    assert n == len(data.train_ds) - len(request)
    # The full train set (the original model's) does hold them.
    full = set(zip(data.train_ds.inter_feat[uid].tolist(), data.train_ds.inter_feat[iid].tolist()))
    assert forgotten <= full


# ------------------------------------------------------------------------------ bad input
def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _other_dataset(folder: Path) -> Path:
    """A tiny-like dataset ``other`` with fewer items than tiny (a checkpoint of tiny won't fit)."""
    u, i, t = generate_interactions(120, 60, 1500, seed=1)
    write_atomic(str(folder), "other", u, i, t)
    return folder


@pytest.fixture
def bad_env(tmp_path, in_tmp):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    corrupt = inputs / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    return {"yaml": _write_cpu_yaml(inputs), "inputs": inputs, "corrupt": corrupt, "out": tmp_path / "runs"}


BAD_CASES = {
    "unknown model": (["-m", "NoSuchModel"], "NoSuchModel"),
    "missing dataset": (["-d", "nosuchdata"], "nosuchdata"),
    "missing checkpoint": (["--checkpoint", "{inputs}/missing.pth"], "does not exist"),
    "corrupt checkpoint": (["--checkpoint", "{corrupt}"], "corrupt"),
    "user ratio 0": (["--unrank_user_ratio=0"], "unrank_user_ratio"),
    "inter ratio 1.5": (["--unrank_inter_ratio=1.5"], "unrank_inter_ratio"),
    "unknown method": (["--unrank_method=nosuchmethod"], "nosuchmethod"),
    "empty request file": (["--unrank_request_file={inputs}/empty.inter"], "no pairs"),
    "unknown request tokens": (["--unrank_request_file={inputs}/unknown.inter"], "ghost_user"),
    # issue 20: a step grid that is not increasing and positive, a pinned setting given, a
    # setting no method of the run reads, a validation split without a monitor part
    "step grid [0, 10, 5]": (["--unrank_method=l2unrank", "--unrank_step_grid=[0,10,5]"], "unrank_step_grid"),
    "step grid count 1": (["--unrank_method=l2unrank", "--unrank_step_grid=[0.1,10,1]"], "unrank_step_grid"),
    "pinned setting given": (["--unrank_method=l2unrank_paper", "--unrank_cg_steps=40"], "unrank_cg_steps"),
    "unread setting": (["--unrank_shards=3"], "unrank_shards"),
    "calibration key, uncalibrated": (["--unrank_method=l2unrank_nocalib", "--unrank_step_floor=2"],
                                      "unrank_step_floor"),
    "empty monitor part": (["--unrank_monitor_share=1e-9"], "monitor part would be empty"),
    "monitor share 1": (["--unrank_monitor_share=1.0"], "unrank_monitor_share"),
}


def _main_fails(args, bad_env, capsys):
    import run_unrank

    base = ["-m", "WMF", "-d", "tiny", "--config_files", str(bad_env["yaml"]), "--epochs=1",
            f"--unrank_output_dir={bad_env['out']}"]
    if not any(a.startswith("--unrank_method=") for a in args):
        base.append("--unrank_method=retrain")
    before = _snapshot(bad_env["inputs"].parent)
    with pytest.raises(SystemExit) as info:
        run_unrank.main(base + args)
    captured = capsys.readouterr()
    assert info.value.code == 2
    err_lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(err_lines) == 1, captured.err
    assert err_lines[0].startswith("run_unrank: error: ")
    assert captured.out.strip() == ""
    return err_lines[0], before


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_exit_2_one_line_nothing_written(case, bad_env, capsys):
    args, needle = BAD_CASES[case]
    inputs = bad_env["inputs"]
    (inputs / "empty.inter").write_text("user_id:token\titem_id:token\n", encoding="utf-8")
    (inputs / "unknown.inter").write_text("user_id:token\titem_id:token\nghost_user\ti1\n", encoding="utf-8")
    args = [a.format(inputs=inputs, corrupt=bad_env["corrupt"]) for a in args]
    line, before = _main_fails(args, bad_env, capsys)
    assert needle in line
    assert not bad_env["out"].exists()
    assert _snapshot(inputs.parent) == before


def test_setting_given_twice_is_bad_input(bad_env, capsys):
    # RecBole's Config would raise a bare SyntaxError (a traceback); the CLI refuses it first.
    import run_unrank

    with pytest.raises(SystemExit) as info:
        run_unrank.main(["-m", "WMF", "-d", "tiny", "--config_files", str(bad_env["yaml"]),
                         "--epochs=1", "--epochs=2", f"--unrank_output_dir={bad_env['out']}"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--epochs is given twice" in err[-1]
    assert not bad_env["out"].exists()


def _other_dataset_args(run_dir, bad_env):
    data = _other_dataset(bad_env["inputs"] / "data")
    return ["-d", "other", f"--data_path={data}", "--checkpoint", str(run_dir / "original.pth")]


def test_checkpoint_of_another_dataset_exit_2(run_dir, bad_env, capsys):
    ckpt = run_dir / "original.pth"
    ckpt_bytes = ckpt.read_bytes()
    line, _ = _main_fails(_other_dataset_args(run_dir, bad_env), bad_env, capsys)
    assert "was trained on dataset 'tiny', not 'other'" in line  # its fingerprint names its data
    assert ckpt.read_bytes() == ckpt_bytes  # the input checkpoint is never modified


def test_checkpoint_of_another_dataset_writes_nothing(run_dir, bad_env, capsys):
    _main_fails(_other_dataset_args(run_dir, bad_env), bad_env, capsys)
    assert not bad_env["out"].exists()


def test_bad_input_in_a_fresh_process(tmp_path, py_async):
    """The real stderr of the script (logging, warnings and all): one line, exit 2."""
    argv = [sys.executable, SCRIPT, "-m", "NoSuchModel", "-d", "tiny", "--config_files",
            _write_cpu_yaml(tmp_path), f"--unrank_output_dir={tmp_path / 'runs'}"]
    res = py_async.argv(argv, tmp_path).result()
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("run_unrank: error: ") and "NoSuchModel" in err[0], res.stderr
    assert res.stdout.strip() == ""
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------ one line, exit 2
# Every case runs the command line (recbole_unrank.cli.main_unrank / main_hyper, what the
# console scripts and run_unrank.py call) in a child process of its own, with its own working
# directory, stdout and stderr. The children are forked from one interpreter that imported the
# package once (a fresh interpreter per case costs ~6 s of import each);
# test_bad_input_in_a_fresh_process covers what a fresh interpreter adds.
HARNESS = r"""
import json, os, sys
import recbole_unrank
from recbole_unrank import cli, pipeline  # noqa: F401  (heavy imports once, before the forks)
cases = json.load(open(sys.argv[1], encoding="utf-8"))
codes = {}
for name, case in cases.items():
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.chdir(case["cwd"])
            for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(f, fd); os.close(f)
            main = cli.main_hyper if case["hyper"] else cli.main_unrank
            sys.argv = [case["prog"]] + case["argv"]
            try:
                main(case["argv"]); code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback; traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    codes[name] = os.waitstatus_to_exitcode(status)
print(json.dumps(codes))
"""

ONE_LINE_CASES = {
    # name: (extra arguments, text the one line must hold)
    "request not UTF-8": (["--unrank_request_file", "inputs/latin1.inter"], "is not UTF-8"),
    "request is a folder": (["--unrank_request_file", "inputs"], "is a folder"),
    "request missing": (["--unrank_request_file", "inputs/missing.inter"], "does not exist"),
    "request all skipped": (["--unrank_request_file", "inputs/skipped.inter"],
                            "all 3 pairs were skipped (1 in the valid split, 1 in the test split, 1 not in the data)"),
    "seed=abc": (["--seed=abc"], "--seed=abc is not a number"),
    "seed abc": (["--seed", "abc"], "--seed=abc is not a number"),
    "damping=abc": (["--unrank_damping=abc"], "--unrank_damping=abc is not a number"),
    "hops=abc": (["--unrank_hops=abc"], "--unrank_hops=abc is not a number"),
    "hops 1.5": (["--unrank_hops", "1.5"], "--unrank_hops=1.5 is not a whole number"),
    "switch not bool": (["--unrank_use_scope", "maybe"], "is not True or False"),
    "output dir is a file": (["--unrank_output_dir", "inputs/afile.txt"], "is a file, not a folder"),
    "output dir under a file": (["--unrank_output_dir", "inputs/afile.txt/runs"], "is a file, not a folder"),
    "argparse: option without value": (["-m"], "expected one argument"),
    "argparse: stray word": (["stray"], "unrecognised argument(s) stray"),
    "setting without value": (["--learning_rate"], "--learning_rate has no value"),
    "misspelt unrank key": (["--unrank_hopz=2"], "unknown setting --unrank_hopz: did you mean unrank_hops?"),
    "misspelt unrank key, space form": (["--unrank_dampin", "0.1"], "did you mean unrank_damping?"),
    "value holding '='": (["--unrank_request_file", "a=b.inter"], "cannot contain '='"),
    "given twice": (["--seed", "1", "--seed=2"], "--seed is given twice"),
    "unknown preset": (["--preset", "nosuch"], "unknown preset 'nosuch'"),
    "unknown model": (["-m", "NoSuchModel"], "NoSuchModel"),
    "hyper: --max_evals abc": (["--params_file", "l2unrank", "--max_evals", "abc"], "invalid int value: 'abc'"),
}
if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any file: no PermissionError to provoke
    ONE_LINE_CASES["request unreadable"] = (["--unrank_request_file", "inputs/locked.inter"], "permission denied")


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*")}


def _split_tokens(workdir: Path) -> dict:
    """A (user, item) token pair of tiny's valid split, one of its test split, and one that is no
    interaction at all (both tokens known), under the split of the default seed."""
    config = pipeline.build_config("WMF", "tiny", config_dict={
        "data_path": str(REPO_ROOT / "dataset"), "gpu_id": "", "checkpoint_dir": str(workdir / "saved")}, argv=[])
    data = pipeline.load_data(config)
    ds = data.dataset
    uf, itf = ds.uid_field, ds.iid_field

    def first(split):
        u, i = split.inter_feat[uf][0].item(), split.inter_feat[itf][0].item()
        return ds.id2token(uf, u), ds.id2token(itf, i)

    pairs = set(zip(ds.inter_feat[uf].tolist(), ds.inter_feat[itf].tolist()))
    u0 = data.train_ds.inter_feat[uf][0].item()
    absent = next(i for i in range(1, ds.item_num) if (u0, i) not in pairs)
    return {"valid": first(data.valid_ds), "test": first(data.test_ds),
            "absent": (ds.id2token(uf, u0), ds.id2token(itf, absent)), "config": config, "data": data}


@pytest.fixture(scope="module")
def one_line_results(tmp_path_factory):
    import hashlib

    from recbole_unrank.models import get_model

    root = tmp_path_factory.mktemp("one_line")
    tokens = _split_tokens(root)
    config, data = tokens["config"], tokens["data"]
    ckpt_path = root / "model.pth"
    model = get_model("WMF")(config, data.train_ds)
    pipeline.save_checkpoint(model, config, str(ckpt_path))
    header = "user_id:token\titem_id:token\n"
    skipped = header + "".join(f"{u}\t{i}\n" for u, i in (tokens["valid"], tokens["test"], tokens["absent"]))
    cases, dirs = {}, {}
    for k, (name, (extra, _)) in enumerate(ONE_LINE_CASES.items()):
        cwd = root / f"case{k}"
        inputs = cwd / "inputs"
        inputs.mkdir(parents=True)
        (inputs / "model.pth").write_bytes(ckpt_path.read_bytes())
        (inputs / "latin1.inter").write_bytes(header.encode() + "caf\xe9\t1\n".encode("latin-1"))
        (inputs / "skipped.inter").write_text(skipped, encoding="utf-8")
        (inputs / "afile.txt").write_text("not a folder\n", encoding="utf-8")
        locked = inputs / "locked.inter"
        locked.write_text(skipped, encoding="utf-8")
        locked.chmod(0)
        hyper = name.startswith("hyper:")
        argv = ["--checkpoint", "inputs/model.pth", "-d", "tiny", "--data_path", str(REPO_ROOT / "dataset"),
                "--gpu_id", "", "--epochs", "1", "--show_progress", "False"]
        if "--unrank_output_dir" not in extra:
            argv += ["--unrank_output_dir", "runs"]
        if not hyper:
            argv += ["--unrank_method", "retrain"]
        cases[name] = {"cwd": str(cwd), "argv": argv + extra, "hyper": hyper,
                       "prog": "run_unrank_hyper" if hyper else "run_unrank",
                       "stdout": str(root / f"case{k}.out"), "stderr": str(root / f"case{k}.err")}
        dirs[name] = (cwd, _tree(cwd), hashlib.sha256((inputs / "model.pth").read_bytes()).hexdigest())
    spec = root / "cases.json"
    spec.write_text(json.dumps(cases), encoding="utf-8")
    res = run_python(HARNESS, root, timeout=600, args=[str(spec)])
    assert res.returncode == 0, res.stderr[-3000:]
    codes = json.loads(res.stdout.strip().splitlines()[-1])
    out = {}
    for name, case in cases.items():
        cwd, before, digest = dirs[name]
        for p in cwd.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        out[name] = {"code": codes[name], "stdout": Path(case["stdout"]).read_text(encoding="utf-8"),
                     "stderr": Path(case["stderr"]).read_text(encoding="utf-8"), "prog": case["prog"],
                     "before": before, "after": _tree(cwd),
                     "digest": (digest, hashlib.sha256((cwd / "inputs" / "model.pth").read_bytes()).hexdigest())}
    return out


@pytest.mark.parametrize("case", list(ONE_LINE_CASES))
def test_bad_input_one_line_in_a_subprocess(case, one_line_results):
    """Exit 2, exactly one line on stderr (naming the problem), nothing on stdout, no new file
    anywhere under the working directory, the input checkpoint unchanged."""
    res = one_line_results[case]
    err = [ln for ln in res["stderr"].splitlines() if ln.strip()]
    assert res["code"] == 2, res["stderr"][-2000:]
    assert len(err) == 1, res["stderr"][-2000:]
    assert err[0].startswith(f"{res['prog']}: error: ")
    assert ONE_LINE_CASES[case][1] in err[0], err[0]
    assert res["stdout"].strip() == ""
    assert res["after"] == res["before"]
    assert res["digest"][0] == res["digest"][1]


# ------------------------------------------------------------------------------ interrupted runs
KILL_STAGES = ["original", "write:results.json", "finish"]


def _wait_for_line(proc, text: str, timeout: float) -> str:
    """Read ``proc``'s stderr until a line holding ``text`` (or EOF / timeout)."""
    import threading

    seen: list[str] = []
    done = threading.Event()

    def reader():
        for line in proc.stderr:
            seen.append(line)
            if text in line:
                done.set()
                return
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    return "".join(seen)


def test_killed_run_leaves_a_marked_folder_and_the_next_run_cleans_it(tmp_path, config_maker):
    """kill -9 at several stages: what is left is a run folder marked INCOMPLETE (never one that
    looks complete); the next run removes the temporary files it left."""
    import signal
    import subprocess

    from conftest import subprocess_env

    procs = {}
    for stage in KILL_STAGES:
        cwd = tmp_path / stage.replace(":", "_")
        cwd.mkdir()
        env = {**subprocess_env(), "RECBOLE_UNRANK_TEST_PAUSE": stage}
        argv = [sys.executable, str(SCRIPT), "-m", "WMF", "-d", "tiny", "--config_files", str(_write_cpu_yaml(cwd)),
                "--unrank_method", "retrain", "--epochs", "1", "--unrank_output_dir", "runs"]
        procs[stage] = (cwd, subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
    for stage, (cwd, proc) in procs.items():
        err = _wait_for_line(proc, f"paused at {stage}", 300)
        assert f"paused at {stage}" in err, err[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        assert sorted(p.name for p in cwd.iterdir()) == ["cpu.yaml", "runs"]  # nothing else in the cwd
        folders = list((cwd / "runs").iterdir())
        assert len(folders) == 1
        folder = folders[0]
        marker = folder / pipeline.INCOMPLETE
        assert marker.is_file(), stage
        assert f"pid: {proc.pid}" in marker.read_text(encoding="utf-8")
        if stage == "write:results.json":
            assert list(folder.glob("results.json.*tmp")) and not (folder / "results.json").exists()
        if stage == "finish":  # everything written, only the marker says it did not end
            assert (folder / "results.json").is_file() and (folder / "config.yaml").is_file()
        # The next run in the same output folder removes the dead run's temporary files and
        # leaves it marked; its own folder is marked until it finishes.
        config = config_maker(cwd, "WMF", unrank_output_dir=str(cwd / "runs"))
        new = Path(pipeline.new_run_dir(config))
        assert not [p for p in folder.rglob("*") if ".tmp" in p.name], stage
        assert marker.is_file()
        assert (new / pipeline.INCOMPLETE).is_file()
        pipeline.finish_run_dir(str(new))
        assert not (new / pipeline.INCOMPLETE).exists()


def test_finished_run_has_no_marker(run_dir):
    assert not (run_dir / pipeline.INCOMPLETE).exists()


# ------------------------------------------------------------------------------ habits
def test_both_argument_forms_give_the_same_settings():
    from recbole_unrank.cli import parse_args, unrank_parser

    spaced = ["-m", "WMF", "--dataset", "tiny", "--epochs", "5", "--unrank_hops", "2", "--learning_rate", "-1e-3",
              "--unrank_methods", "[l2unrank,retrain]", "--config_files", "a.yaml b.yaml", "--preset", "ml-100k",
              "--preset", "WMF"]
    joined = ["-m", "WMF", "--dataset=tiny", "--epochs=5", "--unrank_hops=2", "--learning_rate=-1e-3",
              "--unrank_methods=[l2unrank,retrain]", "--config_files=a.yaml b.yaml", "--preset=ml-100k", "--preset=WMF"]
    a_args, a_set = parse_args(unrank_parser(), spaced)
    b_args, b_set = parse_args(unrank_parser(), joined)
    assert vars(a_args) == vars(b_args)
    assert sorted(a_set) == sorted(b_set) == sorted(["--epochs=5", "--learning_rate=-1e-3", "--unrank_hops=2",
                                                     "--unrank_methods=[l2unrank,retrain]"])
    assert a_args.model == "WMF" and a_args.dataset == "tiny" and a_args.config_files == "a.yaml b.yaml"
    assert a_args.preset == ["ml-100k", "WMF"]  # repeatable, not "given twice"


def test_help_lists_every_unrank_key_with_its_documentation(capsys):
    from recbole_unrank.cli import main_unrank
    from recbole_unrank.config import unrank_keys

    with pytest.raises(SystemExit) as info:
        main_unrank(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    keys = unrank_keys()
    assert len(keys) > 40 and "unrank_hops" in keys and "unrank_tune_weight" in keys
    for key, doc in keys.items():
        assert f"--{key}" in out, key
        assert " ".join(doc.doc.split())[:40] in out, key
    # the documentation is the YAML's own comment, with its type
    assert keys["unrank_damping"].kind == "float" and "lambda" in keys["unrank_damping"].doc
    assert keys["unrank_hops"].types == {"int", "None"}


def test_readme_example_space_form_without_model(run_dir, tmp_path, in_tmp, capsys):
    """``run_unrank.py --checkpoint X --unrank_request_file forget.inter`` (the README's form):
    the model comes from the checkpoint, both settings are given as ``--key value``."""
    import run_unrank

    (tmp_path / "forget.inter").write_bytes((run_dir / "request.inter").read_bytes())
    run_unrank.main(["--checkpoint", str(run_dir / "original.pth"), "-d", "tiny", "--config_files",
                     str(_write_cpu_yaml(tmp_path)), "--unrank_method", "retrain", "--epochs", "1",
                     "--unrank_request_file", "forget.inter", "--unrank_output_dir", str(tmp_path / "runs")])
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    first = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert record["model"] == "WMF"
    assert record["request"]["source"] == "file" and record["request"]["pairs"] == first["request"]["pairs"]
    assert record["rows"][0]["forget"] == pytest.approx(first["rows"][0]["forget"], abs=1e-6)


def test_run_folder_keeps_settings_log_and_tensorboard(run_dir, e2e):
    work, _ = e2e
    assert (run_dir / "results.csv").is_file()  # also for a run of one method
    rows = (run_dir / "results.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("method,") and [r.split(",")[0] for r in rows[1:]] == ["original", "retrain"]
    log = (run_dir / "run.log").read_text(encoding="utf-8")
    assert "General Hyper Parameters" in log and "The number of users" in log and "\x1b[" not in log
    assert list((run_dir / "log_tensorboard").rglob("events.out.tfevents*"))
    assert not (work / "log_tensorboard").exists() and not (work / "saved").exists()
    settings = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert settings["model"] == "WMF" and settings["epochs"] == 1 and settings["unrank_method"] == "retrain"
    assert settings["data_path"] == str(REPO_ROOT / "dataset")


def test_config_yaml_reads_back_as_the_same_settings(run_dir, tmp_path):
    from recbole_unrank.report import effective_settings

    settings = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    again = pipeline.build_config("WMF", "tiny", [str(run_dir / "config.yaml")], argv=[])
    assert effective_settings(again) == settings


def test_presets_by_name_from_any_directory(tmp_path, monkeypatch):
    from recbole_unrank.config import preset_names, preset_path

    monkeypatch.chdir(tmp_path)
    assert {"l2unrank-paper", "ml-100k", "WMF", "NeuMF", "LightGCN", "quickstart"} <= set(preset_names())
    path = Path(preset_path("l2unrank-paper"))
    assert path.is_file() and path.read_text(encoding="utf-8") == (REPO_ROOT / "config" / "l2unrank-paper.yaml").read_text(
        encoding="utf-8")
    config = pipeline.build_config("LightGCN", "tiny", [preset_path("LightGCN"), preset_path("l2unrank-paper")],
                                   {"data_path": str(REPO_ROOT / "dataset"), "gpu_id": ""}, argv=[])
    assert config["unrank_method"] == "l2unrank_paper" and config["learning_rate"] == 0.002


def test_console_scripts_and_presets_are_packaged():
    import tomllib
    from fnmatch import fnmatch

    from recbole_unrank import cli

    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = meta["project"]["scripts"]
    assert scripts == {"recbole-unrank": "recbole_unrank.cli:main_unrank",
                       "recbole-unrank-hyper": "recbole_unrank.cli:main_hyper",
                       "recbole-unrank-stream": "recbole_unrank.cli:main_stream"}
    assert callable(cli.main_unrank) and callable(cli.main_hyper) and callable(cli.main_stream)
    globs = meta["tool"]["setuptools"]["package-data"]["recbole_unrank"]
    package = REPO_ROOT / "recbole_unrank"
    shipped = [p.relative_to(package).as_posix() for p in (package / "presets").rglob("*") if p.is_file()]
    assert any(s.endswith("l2unrank-paper.yaml") for s in shipped) and any(s.endswith(".hyper") for s in shipped)
    for rel in shipped:
        assert any(fnmatch(rel, g) for g in globs), rel


def test_a_literal_the_type_names_is_taken():
    """``(float or auto)``: ``auto`` and a number pass the type check, another word does not."""
    from recbole_unrank.config import check_settings

    base = {"data_path": str(REPO_ROOT / "dataset"), "gpu_id": ""}
    for value in ("auto", 0.1):
        config = pipeline.build_config("NeuMF", "tiny", None, {**base, "unrank_twosided_damping": value}, argv=[])
        check_settings(config)
    with pytest.raises(UnrankError, match="unrank_twosided_damping.*is not a number"):
        check_settings(pipeline.build_config("NeuMF", "tiny", None, {**base, "unrank_twosided_damping": "big"},
                                             argv=[]))


def test_python_api_names_python_arguments(tmp_path, monkeypatch):
    import recbole_unrank as ru

    monkeypatch.chdir(tmp_path)
    assert "run_unrank" in ru.__all__ and "UnrankError" in ru.__all__
    base = {"data_path": str(REPO_ROOT / "dataset"), "gpu_id": "", "unrank_output_dir": str(tmp_path / "runs")}
    cases = [
        (dict(dataset="tiny", config_dict=base), "no model given: pass model="),
        (dict(model="WMF", dataset="tiny", config_dict={**base, "unrank_damping": "abc"}),
         "config_dict['unrank_damping']='abc' is not a number"),
        (dict(model="WMF", dataset="tiny", config_dict={**base, "unrank_twosided_damping": "abc"}),
         "config_dict['unrank_twosided_damping']='abc' is not a number"),
        (dict(model="WMF", dataset="tiny", config_dict={**base, "unrank_hopz": 1}),
         "config_dict['unrank_hopz']: did you mean unrank_hops?"),
        (dict(model="WMF", dataset="tiny", config_dict=base, config_file_list="a.yaml"), "config_file_list="),
        (dict(model="WMF", dataset="tiny", config_dict=base, config_file_list=["missing.yaml"]),
         "check config_file_list"),
        (dict(model="WMF", dataset="tiny", config_dict=base, preset="nosuch"), "unknown preset 'nosuch' (preset)"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(ru.UnrankError) as info:
            ru.run_unrank(**kwargs)
        assert needle in str(info.value), (kwargs, str(info.value))
    assert not (tmp_path / "runs").exists()


def test_python_api_returns_results_json_as_a_dict(tmp_path, monkeypatch):
    import recbole_unrank as ru

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x", "--epochs=7"])  # the API does not read sys.argv
    result = ru.run_unrank(model="WMF", dataset="tiny", config_dict={
        "data_path": str(REPO_ROOT / "dataset"), "gpu_id": "", "epochs": 1, "show_progress": False,
        "unrank_method": "retrain", "unrank_output_dir": str(tmp_path / "runs")})
    folder = Path(result.pop("run_dir"))
    assert json.loads(json.dumps(result)) == json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert [r["method"] for r in result["rows"]] == ["original", "retrain"]
    assert result["original"]["epochs"] == 1


def test_a_failing_method_is_a_failed_row_and_exit_1(tmp_path, in_tmp, capsys, monkeypatch):
    import run_unrank
    from recbole_unrank.methods import METHODS

    class Broken(METHODS["finetune"]):
        def unlearn(self, task):
            raise RuntimeError("broken on purpose")

    monkeypatch.setitem(METHODS, "finetune", Broken)
    with pytest.raises(SystemExit) as info:
        run_unrank.main(["-m", "WMF", "-d", "tiny", "--config_files", str(_write_cpu_yaml(tmp_path)), "--epochs", "1",
                         "--unrank_methods", "[finetune,retrain]", "--unrank_output_dir", str(tmp_path / "runs")])
    assert info.value.code == 1
    captured = capsys.readouterr()
    folder = Path(captured.out.strip().splitlines()[-1])
    assert "finetune failed after" in captured.err and "RuntimeError: broken on purpose" in captured.err
    record = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["original", "finetune", "retrain"]
    failed = rows["finetune"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: broken on purpose"
    assert isinstance(failed["time_s"], float) and "test" not in failed
    assert "test" in rows["retrain"] and "status" not in rows["retrain"]
    assert "RuntimeError: broken on purpose" in (folder / "results.md").read_text(encoding="utf-8")
    assert "RuntimeError: broken on purpose" in (folder / "results.csv").read_text(encoding="utf-8")
    assert "Traceback" in (folder / "run.log").read_text(encoding="utf-8")
    assert not (folder / pipeline.INCOMPLETE).exists()


def test_request_reasons_for_skipped_pairs(tmp_path):
    """Pairs of a request file outside the train split are counted by where they are."""
    from recbole_unrank.request import read_request_file

    tokens = _split_tokens(tmp_path)
    data = tokens["data"]
    ds = data.dataset
    train_u = ds.id2token(ds.uid_field, data.train_ds.inter_feat[ds.uid_field][0].item())
    train_i = ds.id2token(ds.iid_field, data.train_ds.inter_feat[ds.iid_field][0].item())
    path = tmp_path / "mixed.inter"
    pairs = [(train_u, train_i), tokens["valid"], tokens["test"], tokens["absent"], tokens["absent"]]
    path.write_text("user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in pairs), encoding="utf-8")
    req = read_request_file(str(path), ds, data.train_ds, data.valid_ds, data.test_ds)
    assert len(req) >= 1 and req.skipped == 3
    assert req.summary()["skipped_reasons"] == {"valid split": 1, "test split": 1, "not in the data": 1}


def test_unreadable_request_file_is_one_line(tmp_path, monkeypatch):
    import builtins

    from recbole_unrank.errors import UnrankError
    from recbole_unrank.request import check_request_file

    path = tmp_path / "locked.inter"
    path.write_text("user_id:token\titem_id:token\n1\t2\n", encoding="utf-8")
    real_open = builtins.open

    def locked_open(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", locked_open)
    with pytest.raises(UnrankError, match="cannot be read \\(permission denied\\)"):
        check_request_file(str(path), "user_id", "item_id")


def test_params_file_by_name(tmp_path, monkeypatch):
    from recbole_unrank.api import _params_path

    monkeypatch.chdir(tmp_path)
    shipped = Path(_params_path("l2unrank"))
    assert shipped.is_file() and shipped.parent.name == "hyper"
    assert shipped.read_text(encoding="utf-8") == (REPO_ROOT / "config" / "hyper" / "l2unrank.hyper").read_text(
        encoding="utf-8")
    (tmp_path / "mine.hyper").write_text("unrank_hops choice [0,1]\n", encoding="utf-8")
    assert _params_path("mine.hyper") == "mine.hyper"  # a path that exists is used as it is
    assert _params_path("nosuch") == "nosuch"  # tuning's own check names the missing file


def test_model_and_dataset_come_from_the_settings_when_not_given(tmp_path, monkeypatch):
    from recbole_unrank.api import make_config

    monkeypatch.chdir(tmp_path)
    base = {"data_path": str(REPO_ROOT / "dataset"), "gpu_id": ""}
    config, ckpt = make_config(dataset="tiny", preset=["WMF"], config_dict=base, argv=[])
    assert config["model"] == "WMF" and ckpt is None  # config/WMF.yaml says model: WMF
    config, _ = make_config(preset=["WMF"], config_dict={**base, "dataset": "tiny"}, argv=["--model=NeuMF"])
    assert config["model"] == "NeuMF" and config["dataset"] == "tiny"  # the command line wins
    config, _ = make_config(config_dict={**base, "dataset": "tiny"}, argv=[], default_model="BPR")
    assert config["model"] == "BPR"
