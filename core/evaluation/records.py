"""Phase 13's records: the project's ``eval.md``, and the LoRA's entry in ``grimoire/studio.md``.

studio.md is both a contract (the ``/art`` tool parses its ``### LoRA: {name}`` sections) and a file people
edit by hand. So registering rewrites only that LoRA's heading and field lines and keeps every other byte as
it was: notes, other LoRAs, the template's example inside ``<!-- -->`` (never taken for a real section), and
the file's line endings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.grimoire import Project, write_atomic
from core.names import check_project_name

# The labels of a registered LoRA's fields, in the template's order (grimoire/studio.md).
FIELDS = (
    "File",
    "Type",
    "Trigger word",
    "Recommended weight",
    "Base model",
    "Good for",
    "Training date",
    "Training params",
)
_FIELD = re.compile(r"- \*\*(?P<label>.+?)\*\*:[ \t]?(?P<value>.*?)\s*$")
_HEADING = re.compile(r"(?P<level>#{1,6})[ \t]+(?P<title>.*?)\s*$")
_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)  # unclosed: runs to the end, as in HTML


def _one_line(value: object) -> str:
    """A field value on one line; comment markers are refused because they would hide the sections below."""
    text = " ".join(str(value).split())
    if "<!--" in text or "-->" in text:
        raise UserError(f"{text!r} contains '<!--' or '-->', which would hide part of studio.md; please remove it.")
    return text


def _inline(items: list[str], empty: str) -> str:
    return "; ".join(_one_line(i) for i in items) or empty


def write_eval_md(
    project: Project,
    *,
    sweet_spot: str,
    weight: float,
    quality_notes: list[str],
    high_weight_issues: list[str],
    checkpoint: str,
    prompts: list[tuple[str, str]],
    grid: str | None,
    comparison: list[str],
) -> Path:
    """Write ``eval.md``: what the grid showed, the chosen checkpoint and weight, and how it was tested."""
    lines = [
        f"# Evaluation: {project.name}",
        f"- **Sweet spot**: {_one_line(sweet_spot)}",
        f"- **Recommended weight**: {round(weight, 2)}",
        f"- **Quality notes**: {_inline(quality_notes, 'none noted')}",
        f"- **Issues at high weight**: {_inline(high_weight_issues, 'none noted')}",
        f"- **Checkpoint used**: {_one_line(checkpoint)}",
        f"- **Test prompts**: {_inline([name for name, _ in prompts], 'none')}",
        "",
        "## Comparison",
        *([f"- {_one_line(c)}" for c in comparison] or ["No comparison was recorded."]),
        "",
        "## Test prompts",
        *([f"- **{_one_line(n)}**: {_one_line(p)}" for n, p in prompts] or ["No prompts were used."]),
        "",
        "## Grid",
        _one_line(grid) if grid else "No grid was drawn.",
    ]
    return project.write("eval.md", "\n".join(lines) + "\n")


@dataclass(frozen=True)
class LoraEntry:
    name: str
    file: str
    type: str
    trigger: str
    weight: float
    base_model: str
    good_for: str
    date: str
    params: str

    def lines(self) -> list[str]:
        """The section in the template's format: the heading, then one line per field in FIELDS' order."""
        weight = round(self.weight, 2)
        values = (self.file, self.type, self.trigger, weight, self.base_model, self.good_for, self.date, self.params)
        fields = [f"- **{label}**: {_one_line(v)}" for label, v in zip(FIELDS, values, strict=True)]
        return [f"### LoRA: {check_project_name(self.name)}", *fields]


@dataclass(frozen=True)
class _Line:
    start: int
    end: int  # just past its line ending
    text: str  # without the line ending
    commented: bool  # starts inside <!-- -->


def _lines(text: str) -> list[_Line]:
    comments = [m.span() for m in _COMMENT.finditer(text)]
    return [
        _Line(m.start(), m.end(), m.group().rstrip("\r\n"), any(a <= m.start() < b for a, b in comments))
        for m in _LINE.finditer(text)
    ]


def _heading(line: _Line) -> tuple[int, str] | None:
    found = None if line.commented else _HEADING.match(line.text)
    return (len(found["level"]), found["title"]) if found else None


def _section(lines: list[_Line], title: str) -> range | None:
    """The line numbers of the ``## title`` section, its heading included, up to the next heading of level 1–2."""
    start = next((i for i, line in enumerate(lines) if _heading(line) == (2, title)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if (h := _heading(lines[i])) and h[0] <= 2), len(lines))
    return range(start, end)


def _sections(lines: list[_Line], loras: range) -> dict[str, tuple[int, int]]:
    """Name → (heading line, line after its run of template fields) of each ``### LoRA:`` section; the first
    of two with the same name counts."""
    found: dict[str, tuple[int, int]] = {}
    for i in loras:
        heading = _heading(lines[i])
        if heading and heading[0] == 3 and heading[1].startswith("LoRA: "):
            end = i + 1
            while end < loras.stop and _template_field(lines[end]):
                end += 1
            found.setdefault(heading[1].removeprefix("LoRA: ").strip(), (i, end))
    return found


def _template_field(line: _Line) -> bool:
    found = None if line.commented else _FIELD.match(line.text)
    return bool(found and found["label"] in FIELDS)


def _read(grimoire: Path) -> str | None:
    path = grimoire / "studio.md"
    return path.read_bytes().decode("utf-8") if path.is_file() else None


def _with_section(text: str, title: str, body: str, newline: str) -> str:
    """``text`` with a new ``## title`` section holding ``body`` at its end."""
    ending = "" if text.endswith("\n") or not text else newline
    return f"{text}{ending}{newline if text else ''}## {title}{newline}{newline}{body}"


def _append(text: str, lines: list[_Line], section: range, body: str, newline: str, gap: bool) -> str:
    """``body`` after the section's last non-blank line (a blank line between when ``gap``)."""
    at = lines[max(i for i in section if lines[i].text.strip())].end
    ending = "" if text[:at].endswith("\n") else newline
    return f"{text[:at]}{ending}{newline if gap else ''}{body}{text[at:]}"


def write_lines(grimoire: Path, title: str, entries: dict[str, str], key: re.Pattern[str]) -> Path:
    """Keep one line per entry in studio.md's ``## title`` section: a line whose ``key`` group matches an
    entry's key is replaced by that entry, the other entries are added at the section's end, and every other
    byte stays as it was. For the lists loratrain keeps up to date there (the cloud instances)."""
    path = grimoire / "studio.md"
    text = _read(grimoire) or "# Studio\n"
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = _lines(text)
    section = _section(lines, title)
    if section is None:
        write_atomic(path, _with_section(text, title, "".join(e + newline for e in entries.values()), newline))
        return path
    pending = dict(entries)
    for i in reversed(section):
        found = None if lines[i].commented else key.match(lines[i].text)
        if found and found["key"] in pending:
            line = lines[i]
            ending = text[line.start + len(line.text) : line.end]
            text = text[: line.start] + pending.pop(found["key"]) + ending + text[line.end :]
    if pending:
        lines = _lines(text)
        text = _append(text, lines, _section(lines, title), "".join(e + newline for e in pending.values()), newline,
                       gap=False)  # fmt: skip
    write_atomic(path, text)
    return path


def register(grimoire: Path, entry: LoraEntry) -> Path:
    """Put ``entry`` in studio.md's LoRAs section: replacing its heading and field lines if the LoRA is
    already there, else after the section's last non-blank line. Creates the file (or the section) if missing."""
    path = grimoire / "studio.md"
    text = _read(grimoire)
    if text is None:
        text = "# Studio\n\n## LoRAs\n"
    newline = "\r\n" if "\r\n" in text else "\n"
    section = newline.join(entry.lines()) + newline
    lines = _lines(text)
    loras = _section(lines, "LoRAs")
    if loras is None:
        new = _with_section(text, "LoRAs", section, newline)
    elif entry.name in (sections := _sections(lines, loras)):
        first, after = sections[entry.name]
        start, end = lines[first].start, lines[after - 1].end
        new = text[:start] + (section if text[end - 1] == "\n" else section.removesuffix(newline)) + text[end:]
    else:
        new = _append(text, lines, loras, section, newline, gap=True)
    write_atomic(path, new)
    return path


def registered(grimoire: Path) -> dict[str, dict[str, str]]:
    """Each LoRA in studio.md's LoRAs section: name → {label: value} for every ``- **Label**: value`` line
    under its heading (the template's fields and any a person added), comments ignored."""
    text = _read(grimoire)
    lines = _lines(text) if text else []
    loras = _section(lines, "LoRAs")
    if loras is None:
        return {}
    found: dict[str, dict[str, str]] = {}
    for name, (first, _) in _sections(lines, loras).items():
        fields = found[name] = {}
        for line in lines[first + 1 : loras.stop]:
            if (h := _heading(line)) and h[0] <= 3:
                break
            if not line.commented and (field := _FIELD.match(line.text)):
                fields.setdefault(field["label"], field["value"])
    return found
