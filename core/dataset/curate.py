"""``loratrain curate``: is the dataset varied enough, which pictures are too alike, which subset to
keep when there are more than the type needs, and whether regularization pictures would help.

Every finding carries its reason in plain words (resources/dataset/curation-guide.md). Variety is
judged from cheap features (``features.py``): they show sameness of arrangement, colour, light and
placement, not what the pictures depict, and the wording says so.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
from pydantic import BaseModel

from core.dataset.duplicates import group_pairs
from core.dataset.features import Features, features, likeness_matrix
from core.dataset.snapshot import Snapshot
from core.intent import LoraType

TOO_ALIKE = 0.8  # likeness above which two pictures teach nearly the same thing (same scene, moved subject)
NARROW_SHARE = 0.75  # one value shared by this share of pictures makes a dimension narrow
Level = Literal["varied", "some", "narrow"]


class Finding(BaseModel):
    aspect: str
    level: Level
    summary: str
    why: str


class Curation(BaseModel):
    count: int
    target: str
    findings: list[Finding]
    too_alike: list[list[str]]
    subset: list[str] | None  # the recommended pictures, when there are more than the type needs
    left_out: dict[str, str]  # picture → why the subset leaves it out
    regularization: bool
    regularization_why: str


def _spread(values: list[str]) -> tuple[Level, str, float]:
    common, n = Counter(values).most_common(1)[0]
    share = n / len(values)
    level: Level = "narrow" if share >= NARROW_SHARE else "some" if share >= 0.5 else "varied"
    return level, common, share


def _findings(items: list[Features], likeness: np.ndarray, kind: LoraType) -> list[Finding]:
    found = []
    n = len(items)
    mean_like = float(likeness[np.triu_indices(n, 1)].mean()) if n > 1 else 1.0
    level: Level = "narrow" if mean_like > 0.55 else "some" if mean_like > 0.35 else "varied"
    what = {"style": "subjects", "character": "poses and settings", "object": "angles and settings"}[kind]
    alike = {"narrow": "very similar", "some": "somewhat similar", "varied": "varied"}[level]
    found.append(
        Finding(
            aspect="subjects and layout",
            level=level,
            summary=f"Your pictures' arrangements are {alike} (average likeness {mean_like:.2f} on a 0–1 scale).",
            why=f"A {kind} LoRA learns best from varied {what}: what repeats in every picture is what the "
            "trigger word absorbs. I judge this from arrangement and colour, not from what is depicted.",
        )
    )
    for aspect, values, summary, why in (
        ("colour", [f.hue for f in items], "{share:.0%} of the pictures are dominated by {value}.",
         "If one palette runs through every picture, the LoRA will push everything towards it — fine if that "
         "palette is part of what you want to teach, a problem if it isn't."),
        ("lighting", [f.lighting for f in items], "{share:.0%} of the pictures are {value}.",
         "Pictures all in one light teach that light along with everything else; a mix of darker and brighter "
         "pictures keeps the LoRA flexible."),
        ("composition", [f.placement for f in items], "In {share:.0%} of the pictures the main detail sits {value}.",
         "If the subject always sits in the same spot, generated images will put it there too."),
    ):  # fmt: skip
        level, value, share = _spread(values)
        found.append(Finding(aspect=aspect, level=level, summary=summary.format(share=share, value=value), why=why))
    return found


def _subset(names: list[str], likeness: np.ndarray, penalty: np.ndarray, size: int) -> tuple[list[int], dict[int, int]]:
    """Greedy farthest-point choice: start from the best picture, then keep adding the one least like
    anything chosen (pictures with quality warnings count as more alike, so they come last).
    Returns the chosen indices and, for each left out, the chosen picture it is most like."""
    distance = (1.0 - likeness) * penalty[None, :]
    chosen = [int(np.argmin(likeness.mean(axis=1) + (1.0 - penalty)))]
    nearest = distance[chosen[0]].copy()
    while len(chosen) < size:
        nearest[chosen] = -1.0
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = np.minimum(nearest, distance[pick])
    closest = {i: chosen[int(np.argmax(likeness[i, chosen]))] for i in range(len(names)) if i not in chosen}
    return sorted(chosen), closest


def most_varied(snapshot: Snapshot, names: list[str], count: int) -> list[str]:
    """The ``count`` pictures among ``names`` that best cover the dataset's variety (farthest-point
    choice on arrangement and colour): the captions reviewed first should meet every kind of picture."""
    names = [n for n in names if snapshot.inspections[n].thumb is not None]
    if len(names) <= count:
        return names
    likeness = likeness_matrix([features(snapshot.inspections[n].thumb) for n in names])
    chosen, _ = _subset(names, likeness, np.ones(len(names)), count)
    return [names[i] for i in chosen]


def _regularization(kind: LoraType, subject_level: Level, count: int, low: int) -> tuple[bool, str]:
    what = 'they are "normal" pictures that help the model remember what it already knows while it learns'
    if kind == LoraType.style:
        if subject_level == "narrow":
            return True, (
                f"Regularization pictures would help: {what} your style. Your pictures look alike in "
                "arrangement, so pictures of similar subjects in other styles would help the model "
                "separate your technique from your subjects."
            )
        return False, (
            "Regularization pictures aren't needed: for a style, varied subjects do that job, and "
            "your pictures are varied enough."
        )
    thing = "person or creature" if kind == LoraType.character else "kind of thing"
    return True, (
        f"Regularization pictures would help: {what} this one. Pictures of other examples of the "
        f"same {thing} keep it from turning every {thing} into yours"
        + (" — all the more with a small dataset." if count < low * 1.5 else ".")
    )


def curate(snapshot: Snapshot) -> Curation:
    target = snapshot.intent.target
    names = [f for f in snapshot.usable if snapshot.inspections[f].thumb is not None]
    if len(names) < 2:
        return Curation(
            count=len(names),
            target=str(target),
            findings=[],
            too_alike=[],
            subset=None,
            left_out={},
            regularization=False,
            regularization_why="There are too few pictures to judge yet; add more first.",
        )
    items = [features(snapshot.inspections[n].thumb) for n in names]
    likeness = likeness_matrix(items)
    findings = _findings(items, likeness, snapshot.intent.type)
    duplicate_sets = {frozenset((p.a, p.b)) for p in snapshot.duplicates.pairs}
    close = [
        (int(i), int(j))
        for i, j in zip(*np.nonzero(np.triu(likeness, 1) > TOO_ALIKE), strict=True)
        if frozenset((names[i], names[j])) not in duplicate_sets
    ]
    too_alike = group_pairs(names, close)
    subset, left_out = None, {}
    if len(names) > target.high:
        penalty = np.array(
            [0.8 if any(i.severity == "warning" for i in snapshot.inspections[n].audit.issues) else 1.0 for n in names]
        )
        chosen, closest = _subset(names, likeness, penalty, target.high)
        subset = [names[i] for i in chosen]
        for i, j in closest.items():
            issues = [
                x.code.replace("_", " ") for x in snapshot.inspections[names[i]].audit.issues if x.severity == "warning"
            ]
            left_out[names[i]] = (
                f"very like {names[j]}, which is kept"
                if not issues
                else f"has quality warnings ({', '.join(issues)}) and resembles {names[j]}"
            )
    regularization, why = _regularization(snapshot.intent.type, findings[0].level, len(names), target.low)
    return Curation(
        count=len(names),
        target=str(target),
        findings=findings,
        too_alike=too_alike,
        subset=subset,
        left_out=left_out,
        regularization=regularization,
        regularization_why=why,
    )
