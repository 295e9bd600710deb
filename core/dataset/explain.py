"""The dataset phase's findings in the artist's words: one line per kind of problem, with the files
it concerns and what to do. The CLI prints these lines and the bot will post them; neither decides."""

from __future__ import annotations

from collections import defaultdict

from core.dataset.curate import Curation
from core.dataset.models import AuditReport, DuplicateReport

# code → (mark, sentence with {n}, {is_are}, {they_it}, {res}); in the order the artist should act.
GROUPS = {
    "truncated": (
        "❌",
        "{n} {is_are} cut off partway — probably {they_it} didn't finish uploading. Please send {they_it_obj} again",
    ),
    "corrupt": ("❌", "{n} can't be read — {they_it} may be damaged. Please export {they_it_obj} again"),
    "not_an_image": ("❌", "{n} {is_are}n't {a_picture} (empty, text or another kind of file)"),
    "unsupported_format": (
        "❌",
        "{n} {is_are} in a format training tools can't read (such as HEIC, PSD or "
        "SVG). Export {they_it_obj} as PNG or JPEG",
    ),
    "decompression_bomb": ("❌", "{n} claim{s} to be far larger than any real picture, so I didn't open {they_it_obj}"),
    "too_small": (
        "⚠️",
        "{n} {is_are} smaller than {res} px on the short side — {they_it}'d look soft after "
        "training. Upscale {they_it_obj} or leave {they_it_obj} out",
    ),
    "extreme_aspect": (
        "⚠️",
        "{n} {is_are} very wide or very tall — {they_it}'d be squeezed into a stretched "
        "training shape. Consider cropping",
    ),
    "low_quality_jpeg": (
        "⚠️",
        "{n} {is_are} heavily compressed — the blocky artefacts can be learned as part of your style",
    ),
    "alpha": (
        "⚠️",
        "{n} {has_have} a transparent background — I'll put {they_it_obj} on white unless you'd like another colour",
    ),
    "color_mode": (
        "⚠️",
        "{n} {is_are}n't in ordinary 8-bit colour (CMYK, 16-bit, grayscale or a palette) — I'll convert {they_it_obj}",
    ),
    "animated": ("⚠️", "{n} {is_are} animated — only the first frame will be used"),
    "exif_rotated": (
        "ℹ️",
        "{n} {was_were} stored rotated by a camera or phone — I'll use {they_it_obj} the right way up",
    ),
}


def names_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _sentence(template: str, n: int, resolution: int) -> str:
    one = n == 1
    return template.format(
        n=n,
        res=resolution,
        s="s" if one else "",
        is_are="is" if one else "are",
        has_have="has" if one else "have",
        was_were="was" if one else "were",
        a_picture="a picture" if one else "pictures",
        they_it="it" if one else "they",
        they_it_obj="it" if one else "them",
    )


def issue_lines(report: AuditReport, resolution: int) -> list[str]:
    """One bullet per kind of problem found, worst first, naming the files."""
    files_by_code: dict[str, list[str]] = defaultdict(list)
    for audit in report.images:
        for issue in audit.issues:
            files_by_code[issue.code].append(audit.file)
    return [
        f"- {mark} {_sentence(template, len(files_by_code[code]), resolution)} ({names_list(files_by_code[code])})."
        for code, (mark, template) in GROUPS.items()
        if code in files_by_code
    ]


def audit_lines(report: AuditReport, resolution: int) -> list[str]:
    """'Got 41 images. Here's what I found:', what is ready, then each kind of problem."""
    s = report.summary
    clean = sum(1 for a in report.images if a.ok and not any(i.severity == "warning" for i in a.issues))
    lines = [
        f"Got {s.total} file{'s' if s.total != 1 else ''}. Here's what I found:",
        f"- ✅ {clean} {'is' if clean == 1 else 'are'} ready to use.",
    ]
    lines += issue_lines(report, resolution)
    if s.average_resolution:
        lines.append(
            f"Average size {s.average_resolution} px; formats: "
            + ", ".join(f"{n} {fmt}" for fmt, n in s.formats.items())
            + "."
        )
    return lines


def duplicate_lines(report: DuplicateReport) -> list[str]:
    if not report.pairs:
        return ["No duplicates: every picture is its own."]
    n = len(report.pairs)
    lines = [
        f"I found {n} pair{'s' if n != 1 else ''} of duplicates. Training on duplicates makes the model "
        "memorise those exact pictures instead of learning what they share, so keep one of each:"
    ]
    for p in report.pairs:
        what = (
            "identical" if p.kind == "exact" else "the same picture, altered (resized, cropped, recoloured or mirrored)"
        )
        lines.append(f"- `{p.a}` and `{p.b}`: {what}.")
    return lines


def curation_lines(curation: Curation) -> list[str]:
    lines = [f"{curation.count} usable pictures; this kind of LoRA wants {curation.target}."]
    marks = {"varied": "✅", "some": "ℹ️", "narrow": "⚠️"}
    for f in curation.findings:
        lines.append(f"- {marks[f.level]} {f.aspect.capitalize()}: {f.summary} {f.why}")
    for group in curation.too_alike:
        lines.append(
            f"- ⚠️ Too alike: {names_list(group)} are nearly the same scene. Keeping the strongest one "
            "or two gives the others' weight to more varied pictures."
        )
    if curation.subset is not None:
        lines.append(
            f"- 📋 You have more than the {curation.target} this needs. I'd keep these "
            f"{len(curation.subset)}, the most varied set: {names_list(curation.subset, 8)}."
        )
        for name, why in list(curation.left_out.items())[:8]:
            lines.append(f"  - leave out `{name}`: {why}.")
    lines.append(f"- {'💡' if curation.regularization else '✅'} {curation.regularization_why}")
    return lines
