"""Durable job records in SQLite (standard library) under the server's output directory.

The database holds one row per job (the job object as JSON, plus the columns it is listed and
filtered by); the MP4s sit beside it in `videos/`, an i2v/flf2v job's uploaded images in
`inputs/` until the job finishes. A row says `completed` only after its MP4 was
written and renamed into place, so a completed row always has a whole file. On open, jobs that
were queued or running when the last server stopped are marked failed ("server restarted") and
any video file without a completed row (a write cut short) is removed, as is every input (no job
of the last process will run).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    record TEXT NOT NULL
)
"""
RESTARTED = {"code": "server_restarted", "message": "server restarted before the job finished"}


class JobStore:
    """Thread-safe: one connection guarded by a lock (the server's request threads and the
    Engine's worker write to it)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.videos = self.root / "videos"
        self.videos.mkdir(parents=True, exist_ok=True)
        self.inputs = self.root / "inputs"
        self.inputs.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a completed row survives a power cut with its file
        self._db.execute(SCHEMA)
        self.recovered = self._recover()

    def video_path(self, job_id: str) -> Path:
        return self.videos / f"{job_id}.mp4"

    def write_input(self, job_id: str, field: str, data: bytes) -> Path:
        """Store an uploaded file of a job (written, then renamed into place); its path."""
        path = self.inputs / f"{job_id}.{field}"
        partial = self.inputs / f".{job_id}.{field}.partial"
        partial.write_bytes(data)
        partial.replace(path)
        return path

    def delete_inputs(self, job_id: str) -> None:
        for path in self.inputs.glob(f"{job_id}.*"):
            path.unlink(missing_ok=True)

    def _recover(self) -> int:
        """Fail what the previous process left unfinished; drop files no completed row vouches for."""
        now = int(time.time())
        with self._lock:
            rows = self._db.execute("SELECT id, record FROM jobs WHERE status IN ('queued', 'in_progress')").fetchall()
            for job_id, text in rows:
                record = {**json.loads(text), "status": "failed", "error": RESTARTED, "completed_at": now}
                self._db.execute("UPDATE jobs SET status='failed', record=? WHERE id=?", (json.dumps(record), job_id))
            completed = {r[0] for r in self._db.execute("SELECT id FROM jobs WHERE status='completed'")}
        for path in self.videos.iterdir():
            if path.name.startswith(".") or path.stem not in completed:
                path.unlink(missing_ok=True)
        for path in self.inputs.iterdir():
            path.unlink(missing_ok=True)
        return len(rows)

    def put(self, record: dict) -> None:
        """Insert or replace a job's record (`id`, `status`, `created_at` required)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, status, created_at, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, record=excluded.record",
                (record["id"], record["status"], int(record["created_at"]), json.dumps(record)))

    def update(self, job_id: str, **changes) -> dict | None:
        """Merge `changes` into an existing record; None (and nothing written) if it was deleted."""
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            record = {**json.loads(row[0]), **changes}
            self._db.execute("UPDATE jobs SET status=?, record=? WHERE id=?",
                             (record["status"], json.dumps(record), job_id))
            return record

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def list(self, after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
        """A page of records by creation order and whether more follow. `after` is the last id of
        the previous page; an unknown one raises KeyError."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        compare, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        with self._lock:
            where, params = "", []
            if after is not None:
                row = self._db.execute("SELECT seq FROM jobs WHERE id=?", (after,)).fetchone()
                if row is None:
                    raise KeyError(after)
                where, params = f"WHERE seq {compare} ?", [row[0]]
            rows = self._db.execute(f"SELECT record FROM jobs {where} ORDER BY seq {direction} LIMIT ?",
                                    (*params, limit + 1)).fetchall()
        records = [json.loads(r[0]) for r in rows[:limit]]
        return records, len(rows) > limit

    def delete(self, job_id: str) -> bool:
        with self._lock:
            deleted = self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,)).rowcount > 0
        self.video_path(job_id).unlink(missing_ok=True)
        self.delete_inputs(job_id)
        return deleted

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
