"""run_unrank.py end to end on tiny (WMF, retrain, 1 epoch), the run folder contract
(DESIGN.md section 7), bad input (exit 2, one line on stderr, nothing written), and that the
retrained model never sees a forgotten pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import recbole_unrank  # noqa: F401  (compat patches before RecBole)
from recbole_unrank import pipeline
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
