"""Operational state in SQLite (aiosqlite): what was imported, the artist's decisions, gate results.

The Markdown in the grimoire is the human record; this is what the software needs to resume after a
restart. The schema only moves forward through ``MIGRATIONS``: each entry runs once, in order, inside
a transaction, and ``PRAGMA user_version`` remembers how far a database has come.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiosqlite

MIGRATIONS: list[str] = [
    # 1: imported images and duplicate decisions, keyed by content so renames don't matter.
    """
    CREATE TABLE images (
        project TEXT NOT NULL,
        file TEXT NOT NULL,
        original_name TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        added_at TEXT NOT NULL,
        PRIMARY KEY (project, file)
    );
    CREATE UNIQUE INDEX images_by_content ON images (project, sha256);
    CREATE TABLE duplicate_decisions (
        project TEXT NOT NULL,
        sha_a TEXT NOT NULL,
        sha_b TEXT NOT NULL,
        keep TEXT NOT NULL CHECK (keep IN ('a', 'b', 'both')),
        decided_at TEXT NOT NULL,
        PRIMARY KEY (project, sha_a, sha_b)
    );
    """,
    # 2: gate results with the fingerprint of the inputs they judged.
    """
    CREATE TABLE gate_results (
        project TEXT NOT NULL,
        gate INTEGER NOT NULL CHECK (gate BETWEEN 1 AND 4),
        passed INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        details TEXT NOT NULL,
        decided_at TEXT NOT NULL,
        PRIMARY KEY (project, gate)
    );
    """,
    # 3: conversations (one per Discord thread or terminal), the choices they offered, and the bot's
    # relay bookkeeping, so a restart resumes mid-conversation and never posts an event twice.
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        project TEXT,
        phase TEXT NOT NULL,
        data TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE choices (
        session TEXT NOT NULL,
        ref TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (session, ref)
    );
    CREATE TABLE relayed_events (event_id TEXT PRIMARY KEY, relayed_at TEXT NOT NULL);
    CREATE TABLE stream_cursors (stream TEXT PRIMARY KEY, last_id TEXT NOT NULL);
    CREATE TABLE posted_messages (
        session TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (session, key)
    );
    """,
    # 4: Claude's side of each conversation (Messages API messages, so a restart keeps the thread of
    # talk) and one line per Claude call with its tokens and cost.
    """
    CREATE TABLE conversation (
        session TEXT NOT NULL,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        PRIMARY KEY (session, seq)
    );
    CREATE TABLE usage (
        session TEXT NOT NULL,
        project TEXT,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX usage_by_project ON usage (project);
    """,
    # 5: every caption a picture has had (proposed, approved, adjusted, skipped, written in the batch), so the
    # artist's approved wording can guide the next captions and any caption can be traced to its source.
    """
    CREATE TABLE caption_history (
        project TEXT NOT NULL,
        file TEXT NOT NULL,
        text TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('claude', 'analyzer', 'artist')),
        status TEXT NOT NULL CHECK (status IN ('proposed', 'approved', 'adjusted', 'skipped', 'batch')),
        at TEXT NOT NULL
    );
    CREATE INDEX caption_history_by_file ON caption_history (project, file);
    """,
    # 6: training runs: where each stands, so a restarted worker resumes it and a Cancel reaches it
    # from any process (the bot, the terminal) through the shared database.
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        project TEXT NOT NULL,
        backend TEXT NOT NULL,
        config TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'cancelled')),
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        jobs TEXT NOT NULL,
        worker TEXT NOT NULL,
        details TEXT NOT NULL,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX runs_by_project ON runs (project, started_at);
    """,
    # 7: rented cloud GPUs, from the moment one is created until it is destroyed: what the reaper reads to
    # make sure none is left running (and billing) after its run, its worker or its budget is gone.
    """
    CREATE TABLE cloud_instances (
        provider TEXT NOT NULL,
        id TEXT NOT NULL,
        project TEXT NOT NULL,
        run TEXT NOT NULL,
        gpu TEXT NOT NULL,
        usd_per_hour REAL NOT NULL,
        cap_usd REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('RUNNING', 'TERMINATED')),
        worker TEXT NOT NULL,
        session TEXT,
        steps TEXT NOT NULL,
        details TEXT NOT NULL,
        started_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        ended_at TEXT,
        PRIMARY KEY (provider, id)
    );
    """,
]

# Tables whose rows for one project are all that a copy of it needs elsewhere (``export_project``).
PROJECT_TABLES = ("images", "duplicate_decisions", "caption_history")

Keep = Literal["a", "b", "both"]
CaptionSource = Literal["claude", "analyzer", "artist"]
CaptionStatus = Literal["proposed", "approved", "adjusted", "skipped", "batch"]
RunStatus = Literal["running", "finished", "failed", "cancelled"]
InstanceStatus = Literal["RUNNING", "TERMINATED"]
_INSTANCE_KEYS = ("provider", "id", "project", "run", "gpu", "usd_per_hour", "cap_usd", "status", "worker", "session",
                  "steps", "details", "started_at", "updated_at", "ended_at")  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Store:
    def __init__(self, db: aiosqlite.Connection):
        self.db = db

    async def migrate(self) -> int:
        """Bring the schema up to date; returns the version reached."""
        (version,) = await (await self.db.execute("PRAGMA user_version")).fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        return len(MIGRATIONS)

    # Imported images -------------------------------------------------------------------------

    async def add_image(self, project: str, file: str, original_name: str, sha256: str, size: int) -> None:
        await self.db.execute(
            "INSERT INTO images (project, file, original_name, sha256, size_bytes, added_at) VALUES (?, ?, ?, ?, ?, ?)",
            (project, file, original_name, sha256, size, _now()),
        )
        await self.db.commit()

    async def forget_project(self, project: str) -> None:
        for table in ("images", "duplicate_decisions", "gate_results", "caption_history"):
            await self.db.execute(f"DELETE FROM {table} WHERE project = ?", (project,))
        await self.db.commit()

    async def forget_image(self, project: str, file: str) -> None:
        await self.db.execute("DELETE FROM images WHERE project = ? AND file = ?", (project, file))
        await self.db.commit()

    async def image_by_sha(self, project: str, sha256: str) -> str | None:
        row = await (
            await self.db.execute("SELECT file FROM images WHERE project = ? AND sha256 = ?", (project, sha256))
        ).fetchone()
        return row[0] if row else None

    async def original_names(self, project: str) -> dict[str, str]:
        rows = await (
            await self.db.execute("SELECT file, original_name FROM images WHERE project = ?", (project,))
        ).fetchall()
        return dict(rows)

    # Duplicate decisions -----------------------------------------------------------------------

    async def decide_duplicate(self, project: str, sha_a: str, sha_b: str, keep: Keep) -> None:
        if sha_a > sha_b:  # store each pair one way round
            sha_a, sha_b, keep = sha_b, sha_a, {"a": "b", "b": "a", "both": "both"}[keep]
        await self.db.execute(
            "INSERT OR REPLACE INTO duplicate_decisions VALUES (?, ?, ?, ?, ?)",
            (project, sha_a, sha_b, keep, _now()),
        )
        await self.db.commit()

    async def duplicate_decisions(self, project: str) -> int:
        """How many duplicate pairs the artist has decided about in this project."""
        row = await (
            await self.db.execute("SELECT COUNT(*) FROM duplicate_decisions WHERE project = ?", (project,))
        ).fetchone()
        return row[0]

    async def duplicate_decision(self, project: str, sha_a: str, sha_b: str) -> Keep | None:
        swapped = sha_a > sha_b
        key = (project, *sorted((sha_a, sha_b)))
        row = await (
            await self.db.execute(
                "SELECT keep FROM duplicate_decisions WHERE project = ? AND sha_a = ? AND sha_b = ?", key
            )
        ).fetchone()
        if not row:
            return None
        return {"a": "b", "b": "a", "both": "both"}[row[0]] if swapped else row[0]

    # Gate results ----------------------------------------------------------------------------

    async def record_gate(self, project: str, gate: int, passed: bool, fingerprint: str, details: dict) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO gate_results VALUES (?, ?, ?, ?, ?, ?)",
            (project, gate, int(passed), fingerprint, json.dumps(details), _now()),
        )
        await self.db.commit()

    async def gate(self, project: str, gate: int) -> dict | None:
        row = await (
            await self.db.execute(
                "SELECT passed, fingerprint, details, decided_at FROM gate_results WHERE project = ? AND gate = ?",
                (project, gate),
            )
        ).fetchone()
        if not row:
            return None
        return {"passed": bool(row[0]), "fingerprint": row[1], "details": json.loads(row[2]), "decided_at": row[3]}

    # Sessions and the choices they offered ------------------------------------------------------

    async def session(self, session_id: str) -> dict | None:
        row = await (
            await self.db.execute("SELECT owner, project, phase, data FROM sessions WHERE id = ?", (session_id,))
        ).fetchone()
        if not row:
            return None
        return {"id": session_id, "owner": row[0], "project": row[1], "phase": row[2], "data": json.loads(row[3])}

    async def save_session(self, session_id: str, owner: str, project: str | None, phase: str, data: dict) -> None:
        now = _now()
        await self.db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET project = "
            "excluded.project, phase = excluded.phase, data = excluded.data, updated_at = excluded.updated_at",
            (session_id, owner, project, phase, json.dumps(data), now, now),
        )
        await self.db.commit()

    async def sessions_of(self, owner: str) -> list[dict]:
        rows = await (
            await self.db.execute("SELECT id FROM sessions WHERE owner = ? ORDER BY updated_at DESC", (owner,))
        ).fetchall()
        return [await self.session(r[0]) for r in rows]

    async def offer_choice(self, session_id: str, ref: str, payload: dict) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO choices VALUES (?, ?, ?, ?)", (session_id, ref, json.dumps(payload), _now())
        )
        await self.db.commit()

    async def open_choice(self, session_id: str, ref: str) -> dict | None:
        """The payload of an offered choice that is still open (left in place)."""
        row = await (
            await self.db.execute("SELECT payload FROM choices WHERE session = ? AND ref = ?", (session_id, ref))
        ).fetchone()
        return json.loads(row[0]) if row else None

    async def take_choice(self, session_id: str, ref: str) -> dict | None:
        """The payload of an offered choice, removed so that a second press does nothing."""
        row = await (
            await self.db.execute("SELECT payload FROM choices WHERE session = ? AND ref = ?", (session_id, ref))
        ).fetchone()
        if not row:
            return None
        await self.db.execute("DELETE FROM choices WHERE session = ? AND ref = ?", (session_id, ref))
        await self.db.commit()
        return json.loads(row[0])

    async def open_choices(self, session_id: str, prefix: str = "") -> list[str]:
        rows = await (
            await self.db.execute(
                "SELECT ref FROM choices WHERE session = ? AND ref LIKE ? ORDER BY created_at, ref",
                (session_id, prefix + "%"),
            )
        ).fetchall()
        return [r[0] for r in rows]

    # The bot's relay of worker events -----------------------------------------------------------

    async def mark_relayed(self, event_id: str) -> bool:
        """Remember an event as posted; False when it already was (so it is not posted twice)."""
        cursor = await self.db.execute("INSERT OR IGNORE INTO relayed_events VALUES (?, ?)", (event_id, _now()))
        await self.db.commit()
        return cursor.rowcount == 1

    async def stream_cursor(self, stream: str) -> str:
        row = await (await self.db.execute("SELECT last_id FROM stream_cursors WHERE stream = ?", (stream,))).fetchone()
        return row[0] if row else "0-0"

    async def save_stream_cursor(self, stream: str, last_id: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO stream_cursors VALUES (?, ?)", (stream, last_id))
        await self.db.commit()

    async def posted_message(self, session_id: str, key: str) -> str | None:
        row = await (
            await self.db.execute(
                "SELECT message_id FROM posted_messages WHERE session = ? AND key = ?", (session_id, key)
            )
        ).fetchone()
        return row[0] if row else None

    async def save_posted_message(self, session_id: str, key: str, message_id: str) -> None:
        await self.db.execute("INSERT OR REPLACE INTO posted_messages VALUES (?, ?, ?)", (session_id, key, message_id))
        await self.db.commit()

    # Claude's conversation and what it cost -------------------------------------------------------

    async def add_messages(self, session_id: str, messages: list[tuple[str, object, int]]) -> None:
        """Append ``(role, content, tokens)`` messages after the session's last one."""
        (last,) = await (
            await self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM conversation WHERE session = ?", (session_id,))
        ).fetchone()
        await self.db.executemany(
            "INSERT INTO conversation VALUES (?, ?, ?, ?, ?)",
            [
                (session_id, last + i, role, json.dumps(content), tokens)
                for i, (role, content, tokens) in enumerate(messages, 1)
            ],
        )
        await self.db.commit()

    async def messages(self, session_id: str) -> list[dict]:
        """The session's messages, oldest first: seq, role, content, tokens."""
        rows = await (
            await self.db.execute(
                "SELECT seq, role, content, tokens FROM conversation WHERE session = ? ORDER BY seq", (session_id,)
            )
        ).fetchall()
        return [{"seq": r[0], "role": r[1], "content": json.loads(r[2]), "tokens": r[3]} for r in rows]

    async def forget_messages(self, session_id: str, through_seq: int) -> None:
        await self.db.execute("DELETE FROM conversation WHERE session = ? AND seq <= ?", (session_id, through_seq))
        await self.db.commit()

    async def record_usage(
        self, session_id: str, project: str | None, model: str, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        await self.db.execute(
            "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)",
            (session_id, project, model, input_tokens, output_tokens, cost_usd, _now()),
        )
        await self.db.commit()

    async def usage_total(self, project: str) -> dict:
        """Calls, tokens and cost for a project, counting the calls of its interview (made before the
        project had its name) through the session that created it."""
        row = await (
            await self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
                "COALESCE(SUM(cost_usd), 0) FROM usage WHERE project = ? OR (project IS NULL AND session IN "
                "(SELECT id FROM sessions WHERE project = ?))",
                (project, project),
            )
        ).fetchone()
        return {"calls": row[0], "input_tokens": row[1], "output_tokens": row[2], "cost_usd": row[3]}

    # Captions: what was proposed and what the artist decided ---------------------------------------
    # Rows keep their insertion order in SQLite's rowid: ``at`` has one-second resolution.

    async def record_caption(
        self, project: str, file: str, text: str, source: CaptionSource, status: CaptionStatus
    ) -> None:
        await self.db.execute(
            "INSERT INTO caption_history VALUES (?, ?, ?, ?, ?, ?)", (project, file, text, source, status, _now())
        )
        await self.db.commit()

    async def caption_history(self, project: str, file: str) -> list[dict]:
        """Every caption the picture has had, oldest first: text, source, status, at."""
        rows = await (
            await self.db.execute(
                "SELECT text, source, status, at FROM caption_history WHERE project = ? AND file = ? ORDER BY rowid",
                (project, file),
            )
        ).fetchall()
        return [{"text": r[0], "source": r[1], "status": r[2], "at": r[3]} for r in rows]

    async def approved_examples(self, project: str, limit: int = 5) -> list[str]:
        """The artist's latest approved or adjusted captions, newest first, one per picture: the wording
        the next captions should follow."""
        rows = await (
            await self.db.execute(
                "SELECT text FROM caption_history WHERE rowid IN (SELECT MAX(rowid) FROM caption_history "
                "WHERE project = ? AND status IN ('approved', 'adjusted') GROUP BY file) ORDER BY rowid DESC LIMIT ?",
                (project, limit),
            )
        ).fetchall()
        return [r[0] for r in rows]

    # Training runs -----------------------------------------------------------------------------

    async def start_run(
        self, run_id: str, project: str, backend: str, config: str, job: str | None, worker: str
    ) -> None:
        """A run begins (or a resumed one begins again): ``config`` is the fingerprint it trains, ``job``
        the queue job that runs it (remembered, so a late retry of that job knows its work is done),
        ``worker`` the process running it ("host:pid")."""
        now = _now()
        jobs = json.dumps([job] if job else [])
        await self.db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, 'running', 0, ?, ?, '{}', ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "status = 'running', cancel_requested = 0, worker = excluded.worker, updated_at = excluded.updated_at, "
            "jobs = CASE WHEN ? IS NULL THEN runs.jobs ELSE json_insert(runs.jobs, '$[#]', ?) END",
            (run_id, project, backend, config, jobs, worker, now, now, job, job),
        )
        await self.db.commit()

    async def touch_run(self, run_id: str) -> None:
        """The run's heartbeat: a run that stops beating was left behind by a worker that died."""
        await self.db.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (_now(), run_id))
        await self.db.commit()

    async def end_run(self, run_id: str, status: RunStatus, details: dict) -> None:
        await self.db.execute(
            "UPDATE runs SET status = ?, details = ?, updated_at = ? WHERE id = ?",
            (status, json.dumps(details), _now(), run_id),
        )
        await self.db.commit()

    async def latest_run(self, project: str) -> dict | None:
        row = await (
            await self.db.execute(
                "SELECT id, backend, config, status, cancel_requested, jobs, worker, details, started_at, updated_at "
                "FROM runs "
                "WHERE project = ? ORDER BY started_at DESC, rowid DESC LIMIT 1",
                (project,),
            )
        ).fetchone()
        if not row:
            return None
        keys = ("id", "backend", "config", "status", "cancel_requested", "jobs", "worker", "details", "started_at",
                "updated_at")  # fmt: skip
        run = dict(zip(keys, row, strict=True))
        run["details"], run["jobs"] = json.loads(run["details"]), json.loads(run["jobs"])
        run["cancel_requested"] = bool(run["cancel_requested"])
        return run

    async def request_cancel(self, project: str) -> str | None:
        """Ask the project's running training to stop; the run's id, or None when none is running."""
        run = await self.latest_run(project)
        if run is None or run["status"] != "running":
            return None
        await self.db.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run["id"],))
        await self.db.commit()
        return run["id"]

    async def cancel_requested(self, run_id: str) -> bool:
        row = await (await self.db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,))).fetchone()
        return bool(row and row[0])

    # Cloud instances ----------------------------------------------------------------------------

    async def add_instance(self, provider: str, instance_id: str, project: str, run: str, gpu: str,
                           usd_per_hour: float, cap_usd: float, worker: str, session: str | None) -> None:  # fmt: skip
        """A rented GPU exists (and bills) from now: recorded before anything else is done with it."""
        now = _now()
        await self.db.execute(
            "INSERT INTO cloud_instances VALUES (?, ?, ?, ?, ?, ?, ?, 'RUNNING', ?, ?, '[]', '{}', ?, ?, NULL)",
            (provider, instance_id, project, run, gpu, usd_per_hour, cap_usd, worker, session, now, now),
        )
        await self.db.commit()

    async def touch_instance(self, provider: str, instance_id: str, step: str | None = None, worker: str | None = None,
                             **details: object) -> None:  # fmt: skip
        """The driving worker's heartbeat; ``step`` is added to the steps done (so a reconnect or a resumed job
        skips it), ``worker`` replaces the driving worker (a retried job), ``details`` are merged into the
        instance's details (its SSH address, the log offset...)."""
        await self.db.execute(
            "UPDATE cloud_instances SET updated_at = ?, worker = COALESCE(?, worker), "
            "details = json_patch(details, ?), steps = CASE WHEN ? IS NULL OR EXISTS "
            "(SELECT 1 FROM json_each(steps) WHERE value = ?) THEN steps ELSE json_insert(steps, '$[#]', ?) END "
            "WHERE provider = ? AND id = ?",
            (_now(), worker, json.dumps(details), step, step, step, provider, instance_id),
        )
        await self.db.commit()

    async def end_instance(self, provider: str, instance_id: str, **details: object) -> None:
        now = _now()
        await self.db.execute(
            "UPDATE cloud_instances SET status = 'TERMINATED', ended_at = COALESCE(ended_at, ?), updated_at = ?, "
            "details = json_patch(details, ?) WHERE provider = ? AND id = ?",
            (now, now, json.dumps(details), provider, instance_id),
        )
        await self.db.commit()

    async def instances(self, status: InstanceStatus | None = None, run: str | None = None) -> list[dict]:
        """Recorded instances, oldest first; only those with ``status`` / of ``run`` when given."""
        rows = await (
            await self.db.execute(
                f"SELECT {', '.join(_INSTANCE_KEYS)} FROM cloud_instances WHERE (? IS NULL OR status = ?) "
                "AND (? IS NULL OR run = ?) ORDER BY started_at, rowid",
                (status, status, run, run),
            )
        ).fetchall()
        found = [dict(zip(_INSTANCE_KEYS, row, strict=True)) for row in rows]
        for instance in found:
            instance["steps"], instance["details"] = json.loads(instance["steps"]), json.loads(instance["details"])
        return found

    async def run_status(self, run_id: str) -> dict | None:
        """One run's status, worker and heartbeat (what the reaper needs to tell an abandoned instance)."""
        row = await (
            await self.db.execute("SELECT status, worker, updated_at FROM runs WHERE id = ?", (run_id,))
        ).fetchone()
        return dict(zip(("status", "worker", "updated_at"), row, strict=True)) if row else None

    # Copies ----------------------------------------------------------------------------------------

    async def export_project(self, project: str, path: Path) -> None:
        """A new database at ``path`` holding only ``project``'s pictures, duplicate decisions and captions:
        what a rented GPU needs to judge the dataset as here, and nothing of other projects or conversations."""
        path.unlink(missing_ok=True)
        async with open_store(path) as copy:
            for table in PROJECT_TABLES:
                rows = await (await self.db.execute(f"SELECT * FROM {table} WHERE project = ?", (project,))).fetchall()
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    await copy.db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            await copy.db.commit()
            await copy.db.execute("PRAGMA journal_mode = DELETE")  # one self-contained file to upload


@asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[Store]:
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = Store(db)
        await store.migrate()
        yield store
