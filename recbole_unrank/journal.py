"""An append-only journal under a :class:`~recbole_unrank.stream.RequestStream` (issue 23).

A platform that acknowledges a forget request must still honour it after a crash. As a
database's write-ahead log, the journal folder holds:

* ``journal.jsonl``: one JSON line per request (a header line first): request id, sha256 of
  its content, pairs forgotten, pairs skipped and why, ``status`` (applied / refused / failed)
  with a one-line ``reason``, the time, the train rows and seed that replay needs, the model's
  digest after (:func:`model_digest`) and the record's own ``checksum``. Each line is flushed
  and ``os.fsync``-ed before the request is reported done. A torn last line (a crash in the
  middle of a write) fails its checksum and is dropped on recovery; a broken line before it
  means the journal was damaged, and it is refused.
* ``snapshot-NNNNNN.pth``: every ``snapshot_every`` requests and at the end, an unlearned
  RecBole checkpoint (:func:`~recbole_unrank.checkpoints.save_checkpoint`, so
  :func:`~recbole_unrank.api.load_unlearned` reads it) carrying every pair forgotten so
  far and the journal position it covers, written to a temporary name and renamed.
* ``journal.lock``: held with ``fcntl.flock`` while a process serves; a second one is refused.

Recovery (:func:`open_journaled_stream`): load the last snapshot, replay the records after it
(the same rows, the same seed per request) and check that each replayed model's digest equals
the journaled one, bit for bit. A live stream also reloads its model from each snapshot it
writes, so that a run that never crashed and one that resumed continue from the same bytes
(caches a method keeps on the model are rebuilt in both).
"""

from __future__ import annotations

import copy
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from recbole_unrank.adapters import get_adapter
from recbole_unrank.checkpoints import (
    forgotten_rows,
    load_checkpoint,
    read_checkpoint,
    request_record,
    save_checkpoint,
)
from recbole_unrank.errors import UnrankError
from recbole_unrank.hooks import pause_point
from recbole_unrank.provenance import adopt_checkpoint_config, check_provenance, data_fingerprint
from recbole_unrank.request import ForgetRequest, _read_token_file, request_from_pairs

__all__ = [
    "JOURNAL_FILE",
    "LOCK_FILE",
    "Journal",
    "RawRequest",
    "model_digest",
    "open_journaled_stream",
    "read_requests",
    "serve",
    "stream_job",
]

logger = logging.getLogger("recbole_unrank")

JOURNAL_FILE = "journal.jsonl"
LOCK_FILE = "journal.lock"
VERSION = 1
_SNAPSHOT = re.compile(r"^snapshot-(\d{6,})\.pth$")


# ----------------------------------------------------------------------------- digests
def _feed(h, name: str, value) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout == torch.sparse_coo:
            t = t.coalesce()
            _feed(h, f"{name}.indices", t.indices())
            _feed(h, f"{name}.values", t.values())
            return
        if t.layout == torch.sparse_csr:
            for part in ("crow_indices", "col_indices", "values"):
                _feed(h, f"{name}.{part}", getattr(t, part)())
            return
        t = t.cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            _feed(h, f"{name}.{k}", value[k])
    else:
        h.update(f"{name}={value!r}\n".encode())


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's ``state_dict`` tensors (sorted by name: name, dtype, shape,
    raw bytes) and what a checkpoint keeps beside them (``other_parameter``, the retained
    graph of a graph model). Equal digests: the same model, bit for bit."""
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        _feed(h, name, state[name])
    _feed(h, "extras", get_adapter(model).checkpoint_extras() or {})
    return h.hexdigest()


def _checksum(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return first if isinstance(exc, UnrankError) else f"{type(exc).__name__}: {first}"


# ----------------------------------------------------------------------------- the journal
class Journal:
    """The journal folder of one stream: its records, its lock, its snapshots.

    Opening takes the lock (a second process: UnrankError) and reads the records; nothing is
    written until :meth:`start` (a new journal's header) or :meth:`append`."""

    def __init__(self, folder: str, snapshot_every: int = 100):
        if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise UnrankError(f"--snapshot_every={snapshot_every!r} must be a positive integer (requests "
                              "between snapshots), e.g. 100")
        self.folder = os.fspath(folder)
        self.snapshot_every = snapshot_every
        self.path = os.path.join(self.folder, JOURNAL_FILE)
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise UnrankError(f"--journal '{self.folder}' is a file: give a folder (it is created if missing)")
        os.makedirs(self.folder, exist_ok=True)
        self._lock = os.open(os.path.join(self.folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            self._lock = None
            raise UnrankError(f"journal '{self.folder}' is in use by another process (its {LOCK_FILE} is "
                              "locked): wait for it to end, or give another --journal folder") from None
        self.records, self._good_bytes, self.torn = _read_journal(self.path)
        self._inside = False  # set while the journal runs RequestStream.apply's own body

    # ---- reading ------------------------------------------------------------------------
    @property
    def header(self) -> dict | None:
        return self.records[0] if self.records else None

    @property
    def requests(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "request"]

    @property
    def position(self) -> int:
        """Requests journaled so far (the next one gets ``position + 1``)."""
        return len(self.records) - 1 if self.records else 0

    def seen(self) -> dict[str, dict]:
        """The last record of each request id."""
        return {r["id"]: r for r in self.requests}

    # ---- writing ------------------------------------------------------------------------
    def _write(self, record: dict) -> dict:
        record = {**record, "checksum": None}
        record["checksum"] = _checksum(record)
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        new = not os.path.exists(self.path)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if new:
            _fsync_dir(self.folder)
        self.records.append(record)
        return record

    def recover(self) -> None:
        """Drop a torn last line (a crash in the middle of its write), and leftovers of an
        interrupted snapshot write."""
        if self.torn:
            logger.warning("journal '%s': its last line was torn by a crash (no valid checksum): dropped",
                           self.path)
            with open(self.path, "r+b") as f:
                f.truncate(self._good_bytes)
                f.flush()
                os.fsync(f.fileno())
            self.torn = False
        for tmp in glob.glob(os.path.join(glob.escape(self.folder), "snapshot-*.pth.*")):
            os.remove(tmp)

    def start(self, identity: dict) -> dict:
        """Write a new journal's header (what the journal belongs to)."""
        return self._write({"kind": "header", "version": VERSION, **identity})

    def append(self, record: dict) -> dict:
        """One request's record, on disk (flushed and fsync-ed) when this returns."""
        return self._write({"kind": "request", "position": self.position + 1, **record})

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- requests -----------------------------------------------------------------------
    def seed_for(self, stream, position: int) -> int:
        """The seed of the request at ``position``: the stream's seed + position, so a replay
        (whose stream has applied nothing yet) uses the seed the first run used."""
        return int(stream.seed) + int(position)

    def apply(self, stream, rows: np.ndarray, seed: int | None = None, request_id: str | None = None,
              content: str | None = None, skipped: dict | None = None) -> dict:
        """Apply ``rows`` (rows of the original train split, all retained) to ``stream`` and
        journal it. A method that raises leaves the model, the retained rows and the records
        as before (restored from a copy taken here) and is journaled as ``failed``. A request
        refused by the stream's budget is journaled as ``refused``. Returns the record."""
        self._check_started()
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        position = self.position + 1
        seed = self.seed_for(stream, position) if seed is None else int(seed)
        if request_id is None:
            request_id = f"request-{position}"
        if content is None:
            content = hashlib.sha256(rows.tobytes()).hexdigest()
        backup = (copy.deepcopy(stream.model), stream.kept.copy(), len(stream.applied), len(stream.records),
                  stream.consolidated)
        t0 = time.perf_counter()
        status, reason, event = "applied", None, None
        self._inside = True
        try:
            out = stream.apply(rows, seed=seed)
            event = out.get("event")
            if event and event.get("refused"):
                status = "refused"
                reason = (f"the stream's budget broke (validation NDCG@10 {event['valid_before']:.3f} x the "
                          "original's): not forgotten; queue a retrain")
        except Exception as exc:  # noqa: BLE001  (a failed request leaves the model as it was)
            stream.model, stream.kept = backup[0], backup[1]
            del stream.applied[backup[2]:]
            del stream.records[backup[3]:]
            stream.consolidated = backup[4]
            stream._retained = None
            status, reason = "failed", _one_line(exc)
            logger.error("[stream] request %s failed: %s", request_id, reason)
        finally:
            self._inside = False
        elapsed = time.perf_counter() - t0
        pause_point(f"stream:apply:{position}")
        record = self.append({
            "id": str(request_id), "sha256": content, "status": status, "reason": reason,
            "pairs_forgotten": int(rows.size) if status == "applied" else 0,
            "skipped": dict(skipped or {}), "train_rows": [int(r) for r in rows], "seed": seed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "time_s": round(elapsed, 6),
            "event": _plain_event(event), "digest": model_digest(stream.model),
        })
        pause_point(f"stream:journaled:{position}")
        if position % self.snapshot_every == 0:
            self.snapshot(stream)
        return record

    def refuse(self, stream, request_id: str, content: str, reason: str, skipped: dict | None = None) -> dict:
        """Journal a request that was not applied (bad input): the model did not change."""
        self._check_started()
        position = self.position + 1
        record = self.append({
            "id": str(request_id), "sha256": content, "status": "refused", "reason": reason,
            "pairs_forgotten": 0, "skipped": dict(skipped or {}), "train_rows": [], "seed": None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "time_s": 0.0, "event": None,
            "digest": model_digest(stream.model),
        })
        pause_point(f"stream:journaled:{position}")
        if position % self.snapshot_every == 0:
            self.snapshot(stream)
        return record

    def _check_started(self) -> None:
        if self.header is None:
            raise UnrankError(f"journal '{self.folder}' has no header: open the stream with "
                              "recbole_unrank.journal.open_journaled_stream")

    # ---- snapshots ----------------------------------------------------------------------
    def snapshot_path(self, position: int) -> str:
        return os.path.join(self.folder, f"snapshot-{position:06d}.pth")

    def snapshots(self) -> list[tuple[int, str]]:
        """(position, path) of the snapshot files, newest first."""
        found = []
        for name in os.listdir(self.folder):
            m = _SNAPSHOT.match(name)
            if m:
                found.append((int(m.group(1)), os.path.join(self.folder, name)))
        return sorted(found, reverse=True)

    def snapshot(self, stream, position: int | None = None) -> str:
        """Write the stream's model as an unlearned checkpoint covering the journal up to
        ``position`` (default: now; a replay passes the record it has reached), to a temporary
        file then renamed, and reload the stream's model from it (see the module docstring).
        Returns its path."""
        position = self.position if position is None else int(position)
        path = self.snapshot_path(position)
        digest = self.records[position]["digest"] if position else self.header["base_digest"]
        data = stream.data
        n = len(data.train_ds.inter_feat)
        gone = np.setdiff1d(np.arange(n), stream.kept, assume_unique=True)
        u, i = data.train_ds.inter_feat[data.train_ds.uid_field].numpy(), \
            data.train_ds.inter_feat[data.train_ds.iid_field].numpy()
        extra = {"journal": {"position": position, "digest": digest, "journal_id": self.header["checksum"]}}
        if gone.size:
            extra["request"] = request_record(ForgetRequest(gone, u[gone], i[gone], "file"), data)
        partial = f"{path}.partial"
        save_checkpoint(stream.model, stream.config, partial, extra)
        pause_point(f"stream:snapshot:{position}")
        os.replace(partial, path)
        _fsync_dir(self.folder)
        ckpt = read_checkpoint(path)
        stream.model = load_checkpoint(stream.config, ckpt, data.train_ds, path)
        if model_digest(stream.model) != digest:
            raise UnrankError(f"snapshot '{path}' does not reload to the journaled model (digest differs): "
                              "the model does not round-trip through a checkpoint")
        logger.info("[stream] snapshot at request %d: %s", position, path)
        return path


def _plain_event(event):
    if not event:
        return None
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in event.items()}


def _read_journal(path: str) -> tuple[list[dict], int, bool]:
    """``(records, bytes of the valid lines, torn)``: every complete line must carry its
    checksum; only the last line may fail it (a torn write), and it is then left out."""
    if not os.path.exists(path):
        return [], 0, False
    with open(path, "rb") as f:
        data = f.read()
    pieces = data.split(b"\n")
    lines, tail = pieces[:-1], pieces[-1]
    records, good, torn = [], 0, bool(tail)
    for n, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw.decode("utf-8"))
            ok = isinstance(record, dict) and record.get("checksum") == _checksum(record)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            if n == len(lines) and not tail:  # the last line: a write cut short
                torn = True
                break
            raise UnrankError(f"journal '{path}' line {n} is broken (its checksum does not match): the "
                              "journal was damaged; restore it, or start a new --journal folder")
        records.append(record)
        good += len(raw) + 1
    if records and records[0].get("kind") != "header":
        raise UnrankError(f"journal '{path}' has no header line: it is not a recbole-unrank journal; "
                          "give another --journal folder")
    return records, good, torn


# ----------------------------------------------------------------------------- requests
@dataclass
class RawRequest:
    """One request as it arrived: its id, its bytes, and its form (``inter``: a request file
    with a ``user_id:token<TAB>item_id:token`` header; ``json``: one JSON object per line)."""

    id: str
    content: bytes
    form: str
    path: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def read_requests(source: str) -> Iterator[RawRequest]:
    """The requests of ``source``: a folder of request files (name order; hidden files left
    out), a file with one JSON request per line, or ``-`` (standard input, one per line)."""
    if source == "-":
        yield from _lines(sys.stdin.buffer, "stdin")
        return
    if os.path.isdir(source):
        for name in sorted(os.listdir(source)):
            path = os.path.join(source, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                yield RawRequest(name, f.read(), "inter", path)
        return
    if not os.path.isfile(source):
        raise UnrankError(f"--requests '{source}' does not exist: give a folder of request files, a file "
                          "with one request per line, or - for standard input")
    with open(source, "rb") as f:
        yield from _lines(f, os.path.basename(source))


def _lines(stream, name: str) -> Iterator[RawRequest]:
    for n, line in enumerate(stream, start=1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        rid = f"{name}:{n}"
        try:
            obj = json.loads(line.decode("utf-8"))
            if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) and str(obj["id"]).strip():
                rid = str(obj["id"])
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        yield RawRequest(rid, line, "json")


def _tokens(raw: RawRequest, uid: str, iid: str) -> tuple[list[str], list[str]]:
    """The request's (user tokens, item tokens); UnrankError says why it cannot be read."""
    if raw.form == "inter":
        return _read_token_file(raw.path, uid, iid)
    try:
        obj = json.loads(raw.content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UnrankError(f"request {raw.id} is not a JSON line (write {{\"id\": ..., \"{uid}\": [...], "
                          f"\"{iid}\": [...]}})") from None
    users, items = (obj.get(uid), obj.get(iid)) if isinstance(obj, dict) else (None, None)
    if not isinstance(users, list) or not isinstance(items, list) or len(users) != len(items):
        raise UnrankError(f"request {raw.id} needs two token lists of one length, \"{uid}\" and \"{iid}\"")
    return [str(t) for t in users], [str(t) for t in items]


def rows_of(stream, raw: RawRequest) -> tuple[np.ndarray, dict]:
    """The retained train rows (of the original train split) a request names, and the pairs
    skipped by reason (``unknown token``, ``forgotten already``, ``valid split``, ``test split``,
    ``not in the data``). UnrankError: nothing to forget, and why."""
    data = stream.data
    ds = data.dataset
    if not raw.content.strip():
        raise UnrankError(f"request {raw.id} is empty")
    u_tok, i_tok = _tokens(raw, ds.uid_field, ds.iid_field)
    if not u_tok:
        raise UnrankError(f"request {raw.id} holds no pairs")
    umap, imap = ds.field2token_id[ds.uid_field], ds.field2token_id[ds.iid_field]
    known = [(umap[a], imap[b]) for a, b in zip(u_tok, i_tok) if a in umap and b in imap]
    skipped = {"unknown token": len(u_tok) - len(known)} if len(known) < len(u_tok) else {}
    if not known:
        raise UnrankError(f"request {raw.id}: all {len(u_tok)} pairs have unknown tokens: use tokens of "
                          f"dataset '{ds.dataset_name}'")
    users, items = (np.asarray(x, dtype=np.int64) for x in zip(*known))
    train = data.train_ds
    gone = np.setdiff1d(np.arange(len(train.inter_feat)), stream.kept, assume_unique=True)
    feat = train.inter_feat
    forgotten = types.SimpleNamespace(uid_field=train.uid_field, iid_field=train.iid_field,
                                      inter_feat={train.uid_field: feat[train.uid_field][gone],
                                                  train.iid_field: feat[train.iid_field][gone]})
    others = {"forgotten already": forgotten, "valid split": data.valid_ds, "test split": data.test_ds}
    try:
        request = request_from_pairs(stream.retained_ds(), users, items, "file", others, where=f"request {raw.id}")
    except UnrankError as exc:
        extra = f"; {skipped['unknown token']} unknown token(s)" if skipped else ""
        raise UnrankError(f"{exc}{extra}") from None
    skipped.update(request.skipped_reasons)
    return stream.kept[request.index], skipped


def serve(stream, journal: Journal, raw: RawRequest) -> dict:
    """One request from a source: refused with its reason (nothing changes), or applied
    through :meth:`Journal.apply`. A request id journaled before is not applied again: its
    record is returned (``replayed: True``); the same id with other content is refused."""
    done = journal.seen().get(raw.id)
    if done is not None and done["sha256"] == raw.sha256:
        return {**done, "replayed": True}
    if done is not None:
        return journal.refuse(stream, raw.id, raw.sha256, f"request id {raw.id} was journaled before with "
                              "other content: give the new request a new id")
    try:
        rows, skipped = rows_of(stream, raw)
    except UnrankError as exc:
        return journal.refuse(stream, raw.id, raw.sha256, _one_line(exc))
    return journal.apply(stream, rows, request_id=raw.id, content=raw.sha256, skipped=skipped)


# ----------------------------------------------------------------------------- opening
def _identity(config, digest: str, method: str, settings: dict, stream_settings, valid_reference) -> dict:
    fp = data_fingerprint(config)
    return {"dataset": config["dataset"], "model": config["model"], "fingerprint": fp, "base_digest": digest,
            "method": method, "settings": settings, "stream_guard": stream_settings.guard,
            "stream_policy": stream_settings.policy, "valid_reference": valid_reference,
            "seed": int(config["seed"])}


def _check_identity(journal: Journal, config, digest: str, method: str, settings: dict, stream_settings,
                    checkpoint: str) -> None:
    """A journal belongs to one dataset, model, data file, split, starting model and settings."""
    h, where = journal.header, f"journal '{journal.folder}'"
    if h.get("version") != VERSION:
        raise UnrankError(f"{where} was written by journal version {h.get('version')}, this is {VERSION}: "
                          "give a new --journal folder")
    if h["dataset"] != config["dataset"]:
        raise UnrankError(f"{where} belongs to dataset '{h['dataset']}', not '{config['dataset']}': give the "
                          "checkpoint it was started from, or a new --journal folder")
    if h["model"] != config["model"]:
        raise UnrankError(f"{where} belongs to a {h['model']} model, --checkpoint holds a {config['model']}: "
                          "give the checkpoint it was started from, or a new --journal folder")
    now = data_fingerprint(config)
    if h["fingerprint"].get("inter_sha256") != now["inter_sha256"] or h["fingerprint"].get("split") != now["split"]:
        raise UnrankError(f"{where} was written on other data or split settings than --checkpoint's: give the "
                          "checkpoint it was started from, or a new --journal folder")
    known = {h["base_digest"]} | {r["digest"] for r in journal.requests}
    if digest not in known:
        raise UnrankError(f"{where} does not belong to --checkpoint '{checkpoint}' (its model is neither the "
                          "journal's starting model nor one of its snapshots): give the checkpoint it was "
                          "started from, or a new --journal folder")
    if h["method"] != method:
        raise UnrankError(f"--unrank_method={method} differs from the journal's {h['method']}: replay would "
                          "not give the journaled models; use the journal's settings or a new --journal folder")
    for key, value in settings.items():
        if h["settings"].get(key) != value:
            raise UnrankError(f"--{key}={value} differs from the journal's {h['settings'].get(key)!r}: replay "
                              "would not give the journaled models; use the journal's or a new --journal folder")
    if h["snapshot_every"] != journal.snapshot_every:
        raise UnrankError(f"--snapshot_every={journal.snapshot_every} differs from the journal's "
                          f"{h['snapshot_every']} (a live stream reloads its model at each snapshot, so replay "
                          "needs the same points): use the journal's, or a new --journal folder")
    for key, value in (("unrank_stream_guard", stream_settings.guard), ("unrank_stream_policy", stream_settings.policy)):
        if h[key.replace("unrank_", "")] != value:
            raise UnrankError(f"--{key}={value} differs from the journal's {h[key.replace('unrank_', '')]!r}: use "
                              "the journal's settings or a new --journal folder")


def _plain_settings(values: dict) -> dict:
    return json.loads(json.dumps(values, default=str))


def _last_snapshot(journal: Journal, config, data, path_hint: str):
    """The newest snapshot that the journal's records vouch for: ``(position, model, ckpt)``,
    or None."""
    digests = {0: journal.header["base_digest"], **{r["position"]: r["digest"] for r in journal.requests}}
    for position, path in journal.snapshots():
        want = digests.get(position)
        try:
            ckpt = read_checkpoint(path)
        except UnrankError as exc:
            logger.warning("snapshot '%s' is skipped: %s", path, exc)
            continue
        info = (ckpt.get("unrank") or {}).get("journal") or {}
        if (want is None or info.get("position") != position or info.get("digest") != want
                or info.get("journal_id") != journal.header["checksum"]):
            logger.warning("snapshot '%s' is not vouched for by the journal's records: skipped", path)
            continue
        return position, load_checkpoint(config, ckpt, data.train_ds, path), ckpt
    return None


def open_journaled_stream(config, ckpt: dict, checkpoint: str, journal: Journal):
    """The stream of ``journal`` on the checkpoint's model: a new journal gets its header; an
    existing one is checked to belong to the checkpoint (else UnrankError, nothing written),
    resumed from its last snapshot and replayed, each replayed digest checked. Returns the
    stream with the journal attached."""
    from recbole_unrank import pipeline
    from recbole_unrank.methods import METHODS
    from recbole_unrank.stream import RequestStream, StreamSettings

    adopt_checkpoint_config(config, ckpt, checkpoint)
    check_provenance(config, ckpt, checkpoint)
    name = config["unrank_method"]
    if name not in METHODS:
        raise UnrankError(f"--unrank_method={name} is not known: choose from {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    kwargs = pipeline.method_settings(config, cls)
    method = cls(**kwargs)
    pipeline._check_train_data_model(config, [name])
    settings = _plain_settings({key: config[key] for key in cls.settings.values()})
    stream_settings = StreamSettings.from_config(config)
    data = pipeline.load_data(config)
    prior = forgotten_rows(data, ckpt, checkpoint)
    model = load_checkpoint(config, ckpt, data.train_ds, checkpoint)
    digest = model_digest(model)
    if journal.header is not None:
        _check_identity(journal, config, digest, name, settings, stream_settings, checkpoint)
        journal.recover()
    n = len(data.train_ds.inter_feat)
    kept = np.arange(n) if prior is None else np.setdiff1d(np.arange(n), prior)

    def train_fresh(ds):
        train, valid, _ = pipeline.make_loaders(config, data, ds)
        return pipeline.train_model(config, train, valid, None, tag="retrain")

    header = journal.header
    start = 0
    if header is not None:
        base_kept = np.asarray(header["base_forgotten"], dtype=np.int64)
        kept = np.setdiff1d(np.arange(n), base_kept)
        found = _last_snapshot(journal, config, data, checkpoint)
        if found is not None:
            start, model, snap = found
            gone = forgotten_rows(data, snap, journal.snapshot_path(start))
            kept = np.arange(n) if gone is None else np.setdiff1d(np.arange(n), gone)
        elif digest != header["base_digest"]:  # a snapshot given, but none left in the folder
            raise UnrankError(f"journal '{journal.folder}' has no snapshot left for --checkpoint "
                              f"'{checkpoint}': give the checkpoint the journal was started from")
    stream = RequestStream(config, data, model, method, stream_settings, train_fresh=train_fresh,
                           make_train_loader=lambda ds: pipeline.make_train_loader(config, data, ds),
                           seed=int(config["seed"]), kept=kept,
                           valid_reference=None if header is None else header["valid_reference"])
    if header is None:
        identity = _identity(config, digest, name, settings, stream_settings, stream.valid_reference)
        identity["snapshot_every"] = journal.snapshot_every
        identity["base_forgotten"] = [] if prior is None else [int(r) for r in prior]
        journal.start(identity)
        logger.info("journal '%s' started", journal.folder)
    else:
        pending = pending_consolidation(journal.requests, start)
        if pending.size:  # what the live run had not consolidated yet at the snapshot (policy consolidate)
            stream.applied = [pending]
        _replay(stream, journal, start)
    stream.journal = journal
    if journal.position and journal.position % journal.snapshot_every == 0 and \
            not os.path.exists(journal.snapshot_path(journal.position)):
        journal.snapshot(stream)  # the process died before writing this one
    return stream


def pending_consolidation(requests: list[dict], start: int) -> np.ndarray:
    """The train rows of the requests applied up to position ``start`` that no consolidation
    has re-solved yet: those after the last request whose budget event ran ``consolidate`` or
    ``retrain`` (which covered every request before it and itself). A stream resumed from the
    snapshot at ``start`` takes them as its pending requests, so that its next consolidation
    re-solves the blocks the uninterrupted run's would (the ``consolidate`` policy's state)."""
    rows: list = []
    for r in requests:
        if r["position"] > start:
            break
        if r["status"] != "applied":
            continue
        if (r.get("event") or {}).get("policy") in ("consolidate", "retrain"):
            rows = []
        else:
            rows.append(r["train_rows"])
    return np.asarray([x for part in rows for x in part], dtype=np.int64)


def _replay(stream, journal: Journal, start: int) -> None:
    """Re-apply the records after position ``start`` (same rows, same seed) and check each
    model digest against the journaled one."""
    todo = [r for r in journal.requests if r["position"] > start]
    for r in todo:
        if r["status"] == "applied" or (r["status"] == "refused" and r.get("event")):
            stream.apply(np.asarray(r["train_rows"], dtype=np.int64), seed=r["seed"])
        now = model_digest(stream.model) if r["digest"] else ""
        if r["digest"] and now != r["digest"]:
            raise UnrankError(f"journal '{journal.folder}': replaying request {r['id']} (position "
                              f"{r['position']}) gives another model than the journaled one (digest "
                              f"{now[:12]}..., journaled {r['digest'][:12]}...): the code, the data or the "
                              "machine changed; resume with the code and machine that wrote it")
        if r["position"] % journal.snapshot_every == 0:  # as the live run did: write it, reload from it
            journal.snapshot(stream, r["position"])
    if todo:
        logger.info("journal '%s': resumed from position %d, replayed %d request(s)", journal.folder, start,
                    len(todo))


# ----------------------------------------------------------------------------- the command
def stream_job(model=None, dataset=None, config_file_list=None, preset=None, checkpoint=None, argv=None,
               default_model=None, default_dataset=None, journal=None, requests=None, snapshot_every=100,
               out=None) -> str:
    """``recbole-unrank-stream``: serve the requests of ``requests`` on ``checkpoint``'s model
    with the journal folder ``journal``; one line per request on ``out`` (stdout) once it is
    journaled: ``ack<TAB>id<TAB>status<TAB>pairs forgotten<TAB>reason``. Returns the path of
    the last snapshot."""
    from recbole_unrank.api import make_config

    out = sys.stdout if out is None else out
    if not checkpoint:
        raise UnrankError("--checkpoint is required: the RecBole checkpoint (original or a snapshot) to serve")
    if not journal:
        raise UnrankError("--journal is required: the folder of the journal and its snapshots")
    if not requests:
        raise UnrankError("--requests is required: a folder of request files, a file with one JSON request "
                          "per line, or - for standard input")
    if requests != "-" and not os.path.exists(requests):
        raise UnrankError(f"--requests '{requests}' does not exist: give a folder of request files, a file "
                          "with one request per line, or - for standard input")
    config, ckpt = make_config(model, dataset, config_file_list, None, checkpoint, preset, argv,
                               default_model, default_dataset)
    created = not os.path.exists(journal)
    with Journal(journal, snapshot_every) as jr:
        try:
            stream = open_journaled_stream(config, ckpt, checkpoint, jr)
        except BaseException:
            if created and jr.header is None:  # bad input: leave nothing behind
                os.remove(os.path.join(jr.folder, LOCK_FILE))
                os.rmdir(jr.folder)
            raise
        for raw in read_requests(requests):
            record = serve(stream, jr, raw)
            reason = " ".join(str(record.get("reason") or "").split())
            print(f"ack\t{record['id']}\t{record['status']}\t{record['pairs_forgotten']}\t{reason}",
                  file=out, flush=True)
        last = jr.snapshots()
        if not last or last[0][0] != jr.position:
            path = jr.snapshot(stream)
        else:
            path = last[0][1]
    return path
