"""The synthetic generator (issue 24): vectorised draws, the atomic file, and the refusal of a
size the machine cannot hold (one line, estimate and limit, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

from recbole_unrank.errors import UnrankError
from recbole_unrank.synthetic import (
    BYTES_PER_INTERACTION,
    _sorted_unique,
    available_bytes,
    check_fits,
    estimate_bytes,
    generate_interactions,
    write_atomic,
)


def test_sorted_unique_is_numpys_unique():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50, 400)
    assert np.array_equal(_sorted_unique(keys), np.unique(keys))
    assert _sorted_unique(np.empty(0, dtype=np.int64)).size == 0


def test_generator_distinct_pairs_minimum_per_user_and_seeded():
    u, i, ts = generate_interactions(300, 200, 6000, seed=7)
    assert u.dtype == np.int64 and i.dtype == np.int64 and ts.dtype == np.float64
    assert np.unique(u * 200 + i).size == u.size  # distinct (user, item) pairs
    assert np.bincount(u, minlength=300).min() >= 5  # min_user_inter
    assert 0 <= i.min() and i.max() < 200 and u.max() < 300
    assert 0.9 * 6000 < u.size <= 6000 * 1.05
    assert ((ts >= 8e8) & (ts < 8e8 + 1e6)).all()
    # power-law users: the busiest user has far more than the median one
    deg = np.bincount(u)
    assert deg.max() > 5 * np.median(deg)
    u2, i2, ts2 = generate_interactions(300, 200, 6000, seed=7)
    assert np.array_equal(u, u2) and np.array_equal(i, i2) and np.array_equal(ts, ts2)
    u3, i3, _ = generate_interactions(300, 200, 6000, seed=8)
    assert not (u3.size == u.size and np.array_equal(u3, u) and np.array_equal(i3, i))


def test_write_atomic_lines_match_the_per_line_format(tmp_path):
    """The fast writer (ints after ``np.rint``) writes what ``f"u{u}\\ti{i}\\t{t:.0f}"`` wrote,
    halves included (both round half to even)."""
    users = np.array([0, 3, 12, 7])
    items = np.array([5, 0, 9, 1])
    ts = np.array([800000000.5, 800000001.5, 800000002.4999, 800000003.5001])
    path = write_atomic(str(tmp_path), "mini", users, items, ts)
    lines = (tmp_path / "mini" / "mini.inter").read_text(encoding="utf-8").splitlines()
    assert path == str(tmp_path / "mini" / "mini.inter")
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert lines[1:] == [f"u{a}\ti{b}\t{t:.0f}" for a, b, t in zip(users, items, ts)]
    assert lines[1].endswith("800000000") and lines[2].endswith("800000002")


def test_check_fits_refuses_over_the_limit_with_estimate_and_limit():
    need = estimate_bytes(1000, 500, 1_000_000)
    assert need >= BYTES_PER_INTERACTION * 1_000_000
    ok = check_fits(1000, 500, 1_000_000, limit_bytes=need)
    assert ok["memory_bytes"] == need
    with pytest.raises(UnrankError) as exc:
        check_fits(1000, 500, 1_000_000, option="--inter", limit_bytes=need - 1)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("--inter=1000000:")
    assert f"{need / 2**30:.2f} GiB" in msg and f"{(need - 1) / 2**30:.2f} GiB is available" in msg
    assert "at most 999999 interactions" in msg  # the largest size that fits the limit
    assert 0 < available_bytes()


def test_make_synthetic_refuses_a_size_the_machine_cannot_hold(tmp_path):
    """A trillion interactions: one line on stderr naming ``--inter``, its estimate and the
    machine's limit; nothing drawn, nothing written."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "dataset" / "make_synthetic.py"), "--name", "huge",
         "--users", "10000000", "--items", "10000000", "--inter", "1000000000000", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "--inter=1000000000000" in err and "GiB of memory" in err and "is available" in err
    assert not out.exists() or not any(out.rglob("*"))


def test_make_synthetic_writes_a_small_set(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "dataset" / "make_synthetic.py"), "--name", "s",
         "--users", "200", "--items", "100", "--inter", "3000", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "s" / "s.inter").read_text(encoding="utf-8").splitlines()
    u, i, _ = generate_interactions(200, 100, 3000, seed=2020)
    assert len(rows) == 1 + u.size and rows[1] == f"u{u[0]}\ti{i[0]}\t" + rows[1].split("\t")[2]
