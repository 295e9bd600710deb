"""Rented GPUs in ``grimoire/studio.md``'s "Cloud instances" section: one line each, kept up to date.

The store is what the software reads (the reaper, a resumed job); this is what the artist reads to see
what they rented, when, at what price, whether it still runs, and what it cost. Only these lines change;
the rest of studio.md stays as the artist left it.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.cloud.cost import spent
from core.evaluation.records import write_lines

SECTION = "Cloud instances"
TITLES = {"vast": "Vast.ai", "runpod": "RunPod"}
_KEY = re.compile(r"- \*\*(?P<key>[^*]+)\*\*:")


def line(instance: dict) -> str:
    """``- **Vast.ai 123**: RTX 4090 · $0.45/hour · started 2026-11-29 19:40 UTC · RUNNING · $0.12 so far ·
    project my-style``"""
    cost = spent(instance["usd_per_hour"], instance["started_at"], instance["ended_at"])
    started = instance["started_at"].replace("T", " ")[:16] + " UTC"
    so_far = "in all" if instance["status"] == "TERMINATED" else "so far"
    return (f"- **{TITLES[instance['provider']]} {instance['id']}**: {instance['gpu']} · "
            f"${instance['usd_per_hour']:.2f}/hour · started {started} · {instance['status']} · "
            f"${cost:.2f} {so_far} · project {instance['project']}")  # fmt: skip


def record(grimoire: Path, instances: list[dict]) -> Path:
    """Write (or rewrite) these instances' lines in studio.md."""
    return write_lines(grimoire, SECTION, {f"{TITLES[i['provider']]} {i['id']}": line(i) for i in instances}, _KEY)
