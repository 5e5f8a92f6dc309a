"""Errors name an input the way the caller gave it: ``--max_evals 0`` and
``--unrank_tune_objective=best`` on the command line (``recbole-unrank-hyper``), ``max_evals=0``
and ``config_dict['unrank_tune_objective']='best'`` from Python
(:func:`recbole_unrank.run_unrank_hyper`), ``'unrank_tune_objective: best' in config_file_list``
from a config file. Every case fails before anything is trained or written."""

from __future__ import annotations

from pathlib import Path

import pytest

import recbole_unrank as ru
from recbole_unrank import cli

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.hyper").write_text("unrank_hops choice [1,2]\n", encoding="utf-8")
    (tmp_path / "cpu.yaml").write_text(f"data_path: {REPO_ROOT / 'dataset'}\ngpu_id: ''\n"
                                       f"unrank_output_dir: {tmp_path / 'runs'}\n", encoding="utf-8")
    return tmp_path


# (what is wrong, python keyword arguments, command-line tokens, python message, command-line message)
CASES = [
    ("max_evals", dict(max_evals=0), ["--max_evals", "0"],
     "max_evals=0 must be at least 1", "--max_evals 0 must be at least 1"),
    ("objective", dict(config_dict={"unrank_tune_objective": "best"}), ["--unrank_tune_objective=best"],
     "config_dict['unrank_tune_objective']='best': use constrained, weighted or metric:<name>",
     "--unrank_tune_objective=best: use constrained, weighted or metric:<name>"),
    ("evaluation seed", dict(config_dict={"unrank_request_seed": 1002}), ["--unrank_request_seed=1002"],
     "tune on a design seed, e.g. config_dict['unrank_request_seed']=101,",
     "tune on a design seed, e.g. --unrank_request_seed=101,"),
    ("no params file", dict(params_file=None), ["--params_file", ""],
     "no params file: pass params_file=", "no params file: pass --params_file"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_python_caller_sees_python_names(case, work):
    _, kwargs, _, python_msg, cli_msg = case
    base = {"model": "LightGCN", "dataset": "tiny", "config_file_list": [str(work / "cpu.yaml")],
            "params_file": str(work / "space.hyper")}
    with pytest.raises(ru.UnrankError) as info:
        ru.run_unrank_hyper(**{**base, **kwargs})
    assert python_msg in str(info.value), str(info.value)
    assert cli_msg not in str(info.value)
    assert not (work / "runs").exists()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_command_line_user_sees_options(case, work, capsys):
    _, _, tokens, python_msg, cli_msg = case
    argv = ["-m", "LightGCN", "-d", "tiny", "--config_files", str(work / "cpu.yaml")]
    if "--params_file" not in tokens:
        argv += ["--params_file", str(work / "space.hyper")]
    with pytest.raises(SystemExit) as exc:
        cli.main_hyper(argv + tokens)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and cli_msg in err[0], err
    assert python_msg not in err[0]
    assert not (work / "runs").exists()


def test_a_setting_from_a_config_file_is_named_in_that_file(work):
    (work / "tune.yaml").write_text("unrank_tune_objective: best\n", encoding="utf-8")
    with pytest.raises(ru.UnrankError) as info:
        ru.run_unrank_hyper(model="LightGCN", dataset="tiny", params_file=str(work / "space.hyper"),
                            config_file_list=[str(work / "cpu.yaml"), str(work / "tune.yaml")])
    assert "'unrank_tune_objective: best' in config_file_list: use constrained" in str(info.value)
