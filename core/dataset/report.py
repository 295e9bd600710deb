"""Gate 1: the dataset report (``dataset-report.md``, in the seed's template) and its GO / NO-GO.

Gate 1 passes only when every kept picture is captioned with the trigger word first, no duplicate
awaits the artist's decision, no picture is unusable, and there are enough pictures for the type.
The result is stored with the dataset's fingerprint, so any change to a picture or caption voids it.
"""

from __future__ import annotations

from pydantic import BaseModel

from core.dataset.curate import Curation
from core.dataset.explain import issue_lines, names_list
from core.dataset.snapshot import Snapshot
from core.intent import LoraType, with_article
from core.store import Store


class GateOne(BaseModel):
    passed: bool
    reasons: list[str]  # why it is NO-GO (empty when GO)
    fixes: list[str]  # what to do, one per reason
    fingerprint: str


def decide(snapshot: Snapshot) -> GateOne:
    reasons, fixes = [], []
    usable, captioned = snapshot.usable, snapshot.captioned()
    target = snapshot.intent.target
    unusable = [a.file for a in snapshot.audit.images if not a.ok]
    if not any(snapshot.captions.get(f) for f in usable):
        reasons.append("images are not captioned yet")
        fixes.append(
            "Caption the pictures (the next step): each caption says what is in the picture and how it "
            f"is made, with `{snapshot.intent.trigger}` first, so the model can tell your subject from your "
            "technique (resources/dataset/captioning-guide.md)."
        )
    elif missing := [f for f in usable if f not in captioned]:
        reasons.append(
            f"{len(missing)} of {len(usable)} pictures have no caption starting with `{snapshot.intent.trigger}`"
        )
        fixes.append(
            f"Caption {names_list(missing)} with the trigger word first: it is what calls the LoRA up, so every "
            "picture must carry it (resources/dataset/captioning-guide.md)."
        )
    if snapshot.unresolved:
        reasons.append(f"{len(snapshot.unresolved)} duplicate pair(s) are waiting for your decision")
        fixes.append(
            "Choose which picture of each pair to keep, because duplicates make the model memorise those pictures "
            "(resources/dataset/curation-guide.md): "
            + "; ".join(
                f"`loratrain resolve {snapshot.project.name} {p.a} {p.b} --keep a|b|both`" for p in snapshot.unresolved
            )
            + "."
        )
    if unusable:
        reasons.append(f"{len(unusable)} file(s) can't be used")
        fixes.append(
            f"Remove or replace {names_list(unusable)}, because training tools can't read them (see Quality "
            "Issues for each one's problem, and resources/dataset/curation-guide.md)."
        )
    if len(usable) < target.low:
        kind = with_article(snapshot.intent.type)
        reasons.append(f"{len(usable)} usable pictures, fewer than the {target.low} {kind} LoRA needs")
        fixes.append(
            f"Add at least {target.low - len(usable)} more pictures, because {kind} needs {target}: {target.why} "
            "(resources/dataset/dataset-sizes.md)."
        )
    return GateOne(passed=not reasons, reasons=reasons, fixes=fixes, fingerprint=snapshot.fingerprint())


def _content_style(snapshot: Snapshot, curation: Curation) -> str:
    layout = next((f for f in curation.findings if f.aspect == "subjects and layout"), None)
    kind = snapshot.intent.type
    lines = []
    if layout is None:
        lines.append("Too few pictures to judge yet.")
    elif kind == LoraType.style:
        lines.append(
            {
                "varied": "Your pictures vary in arrangement and colour, so content and style can be told apart: "
                "what repeats is your technique.",
                "some": "Your pictures vary somewhat. Captions that name each picture's subject will help the model "
                "keep subjects and technique apart.",
                "narrow": "Your pictures look alike in arrangement and colour, so the model may learn the subject "
                "along with the style. More varied subjects, or captions that carefully name the subject, "
                "will help.",
            }[layout.level]
        )
    else:
        lines.append(
            {
                "varied": f"The {kind} appears in varied arrangements, so it can be learned apart from its "
                "surroundings.",
                "some": f"Arrangements vary somewhat; captions that name backgrounds and poses will keep the {kind} "
                "separate from them.",
                "narrow": f"The pictures look alike, so the {kind} may be learned together with one background or "
                "pose. Add pictures in other settings.",
            }[layout.level]
        )
    captioned = len(snapshot.captioned())
    lines.append(
        f"Captions carry the separation (the content each picture shows, named, so that only the "
        f"{'style' if kind == LoraType.style else kind} is left for `{snapshot.intent.trigger}`): "
        f"{captioned} of {len(snapshot.usable)} pictures are captioned."
    )
    return "\n\n".join(lines)


def render(snapshot: Snapshot, curation: Curation, gate: GateOne) -> str:
    s = snapshot.audit.summary
    usable = len(snapshot.usable)
    captioned = len(snapshot.captioned())
    percent = round(100 * captioned / usable) if usable else 0
    duplicates = snapshot.decided + len(snapshot.unresolved)
    issues = sum(len(a.issues) for a in snapshot.audit.images)
    diversity = (
        "\n".join(f"- **{f.aspect.capitalize()}** ({f.level}): {f.summary} {f.why}" for f in curation.findings)
        or "- Too few pictures to judge variety yet."
    )
    if curation.too_alike:
        diversity += "\n" + "\n".join(f"- **Too alike**: {names_list(g)}" for g in curation.too_alike)
    diversity += f"\n- **Regularization**: {curation.regularization_why}"
    quality = issue_lines(snapshot.audit, snapshot.intent.resolution) or ["- None found."]
    if snapshot.unresolved:
        quality += [f"- ⚠️ Duplicates awaiting your decision: `{p.a}` and `{p.b}`." for p in snapshot.unresolved]
    decision = "GO" if gate.passed else "NO-GO"
    if gate.passed:
        reasoning = (
            "Every picture is captioned with the trigger word first, no duplicates are waiting, no file "
            "is unusable, and there are enough pictures for this type."
        )
        detail = f"### If GO:\n{_strengths(snapshot, curation)}"
    else:
        reasoning = "Not ready yet: " + "; ".join(gate.reasons) + "."
        detail = "### If NO-GO:\n" + "\n".join(f"{i}. {fix}" for i, fix in enumerate(gate.fixes, 1))
    return f"""# Dataset Report: {snapshot.project.name}

## Summary
- Images: {usable}
- Captioned: {captioned}/{usable} ({percent}%)
- Average resolution: {s.average_resolution or "n/a"}
- Duplicates found: {duplicates} (removed: {len(snapshot.excluded)})
- Quality issues: {issues}

## Diversity Assessment
{diversity}

## Content-Style Balance
{_content_style(snapshot, curation)}

## Quality Issues
{chr(10).join(quality)}

## Gate 1 Decision: {decision}
{reasoning}

{detail}
"""


def _strengths(snapshot: Snapshot, curation: Curation) -> str:
    varied = [f.aspect for f in curation.findings if f.level == "varied"]
    narrow = [f.aspect for f in curation.findings if f.level == "narrow"]
    lines = [
        f"- Trains well: {', '.join(varied) if varied else 'a consistent look'} "
        f"across {len(snapshot.usable)} pictures, all captioned with `{snapshot.intent.trigger}`."
    ]
    if narrow:
        lines.append(f"- Known limits: little variety in {', '.join(narrow)}; expect the LoRA to lean that way.")
    warned = sum(1 for a in snapshot.audit.images if a.ok and any(i.severity == "warning" for i in a.issues))
    if warned:
        lines.append(f"- {warned} picture(s) carry quality warnings (see above); they are usable.")
    return "\n".join(lines)


async def write_report(snapshot: Snapshot, curation: Curation, store: Store) -> tuple[GateOne, str]:
    gate = decide(snapshot)
    path = snapshot.project.write("dataset-report.md", render(snapshot, curation, gate))
    await store.record_gate(
        snapshot.project.name, 1, gate.passed, gate.fingerprint, {"reasons": gate.reasons, "fixes": gate.fixes}
    )
    return gate, str(path)
