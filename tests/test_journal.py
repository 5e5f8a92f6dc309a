"""The request journal and ``recbole-unrank-stream`` (issue 23), on tiny.

Records carry checksums and model digests; a torn last line is dropped, a broken one before
it refuses the journal; a second process is refused by the lock; malformed requests are
journaled as refused (or partly skipped) and the stream goes on; a method that raises leaves
the model bit-identical; a journal of another checkpoint is refused with one line and nothing
written; and kill -9 at five points (inside a request, between the journal write and the
acknowledgement, inside a snapshot write) loses no acknowledged request, leaves none half
applied, and ends on the digest of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import DATA_PATH, REPO_ROOT, subprocess_env

from recbole_unrank import pipeline
from recbole_unrank.api import load_unlearned
from recbole_unrank.checkpoints import forgotten_rows, read_checkpoint
from recbole_unrank.cli import main_stream
from recbole_unrank.errors import UnrankError
from recbole_unrank.journal import (
    JOURNAL_FILE,
    Journal,
    _checksum,
    model_digest,
    open_journaled_stream,
)
from recbole_unrank.stream import recent_requests

TIME_COLS = {"inter": ["user_id", "item_id", "timestamp"]}
N_REQUESTS = 12


def _inter(pairs) -> str:
    return "user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in pairs)


@pytest.fixture(scope="module")
def base(tmp_path_factory, config_maker):
    """A WMF checkpoint on tiny, 12 single-user requests of 2 pairs (r01 ... r12), the data."""
    work = tmp_path_factory.mktemp("journal")
    config = config_maker(work, "WMF", epochs=2, learning_rate=0.01, load_col=TIME_COLS)
    data = pipeline.load_data(config)
    train, valid, _ = pipeline.make_loaders(config, data)
    ckpt = work / "wmf.pth"
    pipeline.train_model(config, train, valid, str(ckpt), tag="original")
    ds, tr = data.dataset, data.train_ds
    u, i = tr.inter_feat[tr.uid_field].numpy(), tr.inter_feat[tr.iid_field].numpy()
    inbox = work / "inbox"
    inbox.mkdir()
    reqs = recent_requests(tr, N_REQUESTS, 2, seed=5, time_field="timestamp")
    tokens = []
    for k, rows in enumerate(reqs, 1):
        pairs = list(zip(ds.id2token(ds.uid_field, u[rows]), ds.id2token(ds.iid_field, i[rows])))
        tokens.append(pairs)
        (inbox / f"r{k:02d}.inter").write_text(_inter(pairs))
    return {"work": work, "ckpt": ckpt, "inbox": inbox, "rows": reqs, "tokens": tokens, "data": data,
            "config": config}


def _argv(ckpt, journal, requests, every=4, *extra):
    return ["--checkpoint", str(ckpt), "--journal", str(journal), "--requests", str(requests),
            "--snapshot_every", str(every), "--unrank_stream_guard=0", f"--data_path={DATA_PATH}", *extra]


def _cli(argv) -> tuple[int, str, str]:
    """``recbole-unrank-stream argv`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main_stream(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def _records(folder) -> list[dict]:
    with open(os.path.join(folder, JOURNAL_FILE), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _acks(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.startswith("ack\t")]


@pytest.fixture(scope="module")
def mixed(base):
    """One run over good and malformed requests: (journal folder, stdout)."""
    work, p1, p2 = base["work"], base["tokens"][0], base["tokens"][1]
    data = base["data"]
    vds = data.valid_ds
    vu = data.dataset.id2token(vds.uid_field, vds.inter_feat[vds.uid_field].numpy()[:1])[0]
    vi = data.dataset.id2token(vds.iid_field, vds.inter_feat[vds.iid_field].numpy()[:1])[0]
    inbox = work / "mixed"
    inbox.mkdir()
    (inbox / "a1.inter").write_text(_inter(p1))
    (inbox / "a2-junk.inter").write_bytes(b"\x00\xff\xfe binary \x01")
    (inbox / "a3-empty.inter").write_text("")
    (inbox / "a4-unknown.inter").write_text(_inter([("nobody", "nothing")]))
    # one good pair, one unknown token, one pair of the valid split, one forgotten by a1
    (inbox / "a5-partly.inter").write_text(_inter([p2[0], ("nobody", p2[1][1]), (vu, vi), p1[0]]))
    (inbox / "a6.inter").write_text(_inter([p2[1]]))
    journal = work / "J-mixed"
    code, out, err = _cli(_argv(base["ckpt"], journal, inbox, 4))
    assert code == 0, err
    return journal, out


# ------------------------------------------------------------------------------ records
def test_records_carry_checksums_digests_and_reasons(base, mixed):
    journal, out = mixed
    recs = _records(journal)
    assert recs[0]["kind"] == "header" and recs[0]["model"] == "WMF" and recs[0]["dataset"] == "tiny"
    assert all(r["checksum"] == _checksum(r) for r in recs)
    req = recs[1:]
    assert [r["position"] for r in req] == list(range(1, 7))
    status = {r["id"]: r["status"] for r in req}
    assert status == {"a1.inter": "applied", "a2-junk.inter": "refused", "a3-empty.inter": "refused",
                      "a4-unknown.inter": "refused", "a5-partly.inter": "applied", "a6.inter": "applied"}
    by = {r["id"]: r for r in req}
    assert "UTF-8" in by["a2-junk.inter"]["reason"] and "empty" in by["a3-empty.inter"]["reason"]
    assert "unknown tokens" in by["a4-unknown.inter"]["reason"]
    assert by["a5-partly.inter"]["pairs_forgotten"] == 1
    assert by["a5-partly.inter"]["skipped"] == {"unknown token": 1, "valid split": 1, "forgotten already": 1}
    assert all("\n" not in (r["reason"] or "") for r in req)
    # the digest moves with every applied request and stays with every refused one
    digests = [recs[0]["base_digest"]] + [r["digest"] for r in req]
    for before, r, after in zip(digests, req, digests[1:]):
        assert (after != before) == (r["status"] == "applied"), r["id"]
    # every request acknowledged on stdout, after its record
    assert [a[1] for a in _acks(out)] == [r["id"] for r in req]
    # the last snapshot is an unlearned RecBole checkpoint holding the journaled model
    last = out.strip().splitlines()[-1]
    assert os.path.basename(last) == "snapshot-000006.pth"
    _, model, *_ = load_unlearned(last, gpu_id="")
    assert model_digest(model) == req[-1]["digest"]
    gone = forgotten_rows(base["data"], read_checkpoint(last), last)
    applied = np.concatenate([r["train_rows"] for r in req if r["status"] == "applied"])
    assert np.array_equal(np.sort(gone), np.sort(applied))
    assert os.path.exists(os.path.join(journal, "snapshot-000004.pth"))


def test_a_torn_last_line_is_dropped_and_a_broken_one_refused(mixed, tmp_path):
    journal = tmp_path / "J"
    shutil.copytree(mixed[0], journal)
    path = journal / JOURNAL_FILE
    good = path.read_bytes()
    lines = good.split(b"\n")
    path.write_bytes(good + lines[2][: len(lines[2]) // 2])  # a crash in the middle of a write
    with Journal(journal) as j:
        assert j.torn and j.position == 6
        j.recover()
    assert path.read_bytes() == good
    flipped = lines[-2].replace(b'"applied"', b'"refused"')  # complete, but its checksum fails
    path.write_bytes(b"\n".join(lines[:-2] + [flipped, b""]))
    with Journal(journal) as j:
        assert j.torn and j.position == 5
    damaged = lines[:]
    damaged[2] = damaged[2].replace(b'"position":2', b'"position":9')
    path.write_bytes(b"\n".join(damaged))
    with pytest.raises(UnrankError, match="line 3 is broken"):
        Journal(journal)


def test_the_lock_refuses_a_second_process(tmp_path):
    code = ("import sys\nfrom recbole_unrank.journal import Journal\nfrom recbole_unrank.errors import UnrankError\n"
            "try:\n    Journal(sys.argv[1])\nexcept UnrankError as e:\n    print(e)\n    sys.exit(3)\n")
    with Journal(tmp_path / "J"):
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path / "J")], env=subprocess_env(),
                              capture_output=True, text=True, timeout=120, cwd=str(tmp_path), check=False)
        with pytest.raises(UnrankError, match="in use by another process"):
            Journal(tmp_path / "J")  # a second open in this process too
    assert held.returncode == 3 and "in use by another process" in held.stdout
    with Journal(tmp_path / "J"):  # released on close
        pass


def test_a_failing_request_leaves_the_model_bit_identical_and_the_stream_goes_on(base, tmp_path):
    from recbole_unrank.api import make_config

    config, ckpt = make_config(checkpoint=str(base["ckpt"]), argv=["--unrank_stream_guard=0",
                                                                    f"--data_path={DATA_PATH}"])
    with Journal(tmp_path / "J", snapshot_every=100) as j:
        stream = open_journaled_stream(config, ckpt, str(base["ckpt"]), j)
        good = stream.method

        def breaks(task):  # changes the model in place, then raises
            for p in task.model.parameters():
                p.data.add_(1.0)
            raise RuntimeError("boom\nsecond line")

        before = model_digest(stream.model)
        kept = stream.kept.copy()
        stream.method = breaks
        rec = stream.apply(base["rows"][0])
        assert rec["status"] == "failed" and rec["reason"] == "RuntimeError: boom"
        assert model_digest(stream.model) == before == rec["digest"]
        assert np.array_equal(stream.kept, kept) and stream.applied == [] and stream.records == []
        stream.method = good
        rec = stream.apply(base["rows"][0])
        assert rec["status"] == "applied" and rec["position"] == 2 and rec["digest"] != before
    assert [r["status"] for r in _records(tmp_path / "J")[1:]] == ["failed", "applied"]


def test_a_journal_of_another_checkpoint_is_refused_and_nothing_written(base, mixed, tmp_path):
    import torch

    journal = tmp_path / "J"
    shutil.copytree(mixed[0], journal)
    before = {p.name: p.read_bytes() for p in journal.iterdir()}
    other = tmp_path / "other.pth"
    state = torch.load(base["ckpt"], weights_only=False)
    for t in state["state_dict"].values():
        t.add_(0.5)
    torch.save(state, other)
    inbox = base["inbox"]

    def refused(ckpt, every=4):
        code, out, err = _cli(_argv(ckpt, journal, inbox, every))
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (code, out, err)
        assert {p.name: p.read_bytes() for p in journal.iterdir()} == before
        return err

    assert "does not belong to --checkpoint" in refused(other)
    assert "--snapshot_every=5 differs" in refused(base["ckpt"], every=5)
    lines = (journal / JOURNAL_FILE).read_bytes().split(b"\n")
    header = json.loads(lines[0])
    header["model"] = "BPR"
    header["checksum"] = _checksum(header)
    (journal / JOURNAL_FILE).write_bytes(b"\n".join([json.dumps(header).encode()] + lines[1:]))
    before = {p.name: p.read_bytes() for p in journal.iterdir()}
    assert "belongs to a BPR model" in refused(base["ckpt"])
    lines[2] = lines[2].replace(b'"position":2', b'"position":9')
    (journal / JOURNAL_FILE).write_bytes(b"\n".join(lines))
    before = {p.name: p.read_bytes() for p in journal.iterdir()}
    assert "line 3 is broken" in refused(base["ckpt"])
    fresh = tmp_path / "new"
    code, _, err = _cli(_argv(base["ckpt"], fresh, inbox, 0))
    assert code == 2 and "--snapshot_every=0" in err and not fresh.exists()


# ------------------------------------------------------------------------------ kill -9
def _launch(argv, cwd, tag: str, pause: str | None = None):
    env = subprocess_env()
    if pause:
        env["RECBOLE_UNRANK_TEST_PAUSE"] = pause
    out, err = cwd / f"{tag}.out", cwd / f"{tag}.err"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "run_unrank_stream.py"), *argv], cwd=str(cwd),
                                env=env, stdout=fo, stderr=fe)
    return proc, out, err


def _kill_at(proc, err, stage: str, timeout: float = 240) -> None:
    """SIGKILL ``proc`` once it pauses at ``stage`` (the test hook says so on stderr)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if f"paused at {stage}" in err.read_text():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"the stream ended without reaching {stage}: {err.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{stage} not reached in {timeout}s")


def test_kill_9_at_five_points_loses_no_acknowledged_request(base, tmp_path):
    """Five kill points drawn with a fixed seed among: inside request k (the method ran, nothing
    journaled), between request k's journal write and its acknowledgement, inside the
    snapshot write at 4, 8 or 12. Each kill is followed by a restart of the same command."""
    ckpt, inbox = base["ckpt"], base["inbox"]
    whole, _, whole_err = _launch(_argv(ckpt, tmp_path / "J-whole", inbox), tmp_path, "whole")
    points = [(k, 0, "apply") for k in range(1, N_REQUESTS + 1)]
    points += [(k, 1, "journaled") for k in range(1, N_REQUESTS + 1)]
    points += [(k, 2, "snapshot") for k in (4, 8, 12)]
    chosen = sorted(random.Random(23).sample(points, 5))
    acked: list[str] = []
    journal = tmp_path / "J"
    for n, (k, _, stage) in enumerate(chosen):
        proc, out, err = _launch(_argv(ckpt, journal, inbox), tmp_path, f"run{n}", f"stream:{stage}:{k}")
        _kill_at(proc, err, f"stream:{stage}:{k}")
        acked += [a[1] for a in _acks(out.read_text())]
        recs = _records(journal)[1:]  # no half-written record survives a kill: each line checks
        assert [r["position"] for r in recs] == list(range(1, len(recs) + 1))
    proc, out, err = _launch(_argv(ckpt, journal, inbox), tmp_path, "final")
    assert proc.wait(timeout=300) == 0, err.read_text()[-2000:]
    acked += [a[1] for a in _acks(out.read_text())]
    assert whole.wait(timeout=300) == 0, whole_err.read_text()[-2000:]
    recs, ref = _records(journal)[1:], _records(tmp_path / "J-whole")[1:]
    ids = [f"r{k:02d}.inter" for k in range(1, N_REQUESTS + 1)]
    # each request journaled once, in order, applied; every acknowledged one among them
    assert [r["id"] for r in recs] == ids and all(r["status"] == "applied" for r in recs)
    assert set(acked) <= set(ids) and len(set(acked)) >= 1
    # the same models, bit for bit, request by request, and the same final snapshot
    assert [r["digest"] for r in recs] == [r["digest"] for r in ref]
    last = out.read_text().strip().splitlines()[-1]
    assert os.path.basename(last) == f"snapshot-{N_REQUESTS:06d}.pth"
    _, model, *_ = load_unlearned(last, gpu_id="")
    assert model_digest(model) == ref[-1]["digest"]
    # nothing half applied: the snapshot forgot exactly the journaled rows
    gone = forgotten_rows(base["data"], read_checkpoint(last), last)
    assert np.array_equal(np.sort(gone), np.sort(np.concatenate(base["rows"])))
