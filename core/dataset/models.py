"""Typed results of the dataset phase. Their JSON (``model_dump``) is the CLI's ``--json`` contract."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Severity = Literal["error", "warning", "info"]


class Issue(BaseModel):
    code: str
    severity: Severity
    message: str


class ImageAudit(BaseModel):
    file: str
    ok: bool
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    issues: list[Issue] = Field(default_factory=list)

    def has(self, code: str) -> bool:
        return any(i.code == code for i in self.issues)


class AuditSummary(BaseModel):
    total: int
    usable: int
    unusable: int
    warnings: int
    by_code: dict[str, int]
    average_resolution: str | None
    average_width: int | None
    average_height: int | None
    formats: dict[str, int]
    aspect_buckets: dict[str, int] = Field(
        description="How many images land in each training bucket (width×height), as kohya sorts them."
    )


class AuditReport(BaseModel):
    images: list[ImageAudit]
    summary: AuditSummary


class DuplicatePair(BaseModel):
    a: str
    b: str
    distance: int = Field(description="Hamming distance of the 64-bit perceptual hashes (mirror-aware).")
    kind: Literal["exact", "near"]


class DuplicateReport(BaseModel):
    pairs: list[DuplicatePair]
    clusters: list[list[str]]
