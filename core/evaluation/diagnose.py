"""Phase 12: what went wrong with a LoRA, why, and what to do next, as data.

Symptoms, causes and fixes are the "Symptoms" table of resources/training/failure-modes.md, read, never
copied. This module adds a stable key per row, the artist's words that point to each row, what the grid's
evidence suggests without being asked, and a next step made concrete with the project's own numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from core import resources
from core.errors import UserError
from core.evaluation.measures import CLIPPED, COPY, NOISE, VISIBLE, WeightEvidence
from core.training.params import Preset, preset_epochs, safe_ranges

FAILURE_MODES = "training/failure-modes.md"

# Row → key: each key owns the one row whose Symptom contains its phrase. A reworded, added or removed row
# stops the import with a message saying what to update, instead of quietly losing a diagnosis.
_ROWS = {
    "burnt": "burnt or fried",
    "blurry": "blurry, smeared",
    "weak_trigger": "trigger word does little",
    "copies": "near-copies of training pictures",
    "wrong_colours": "colours come out wrong",
    "only_at_full": "only works at strength 1.0",
    "bleeds": "bleeds into every image",
    "identity_drift": "identity drifts",
    "nan": "loss nan",
    "out_of_memory": "cuda out of memory",
    "killed": "the log just ends",
    "captions_ignored": "ignores captions",
}


@dataclass(frozen=True)
class Symptom:
    key: str
    symptom: str
    cause: str
    fix: str

    @property
    def label(self) -> str:
        """The symptom's first clause ('Pictures look burnt or fried'): short enough for a button."""
        return re.split(r"[:;]", self.symptom, maxsplit=1)[0].strip()


def keyed(rows: Iterable[dict[str, str]]) -> dict[str, Symptom]:
    """The table's rows by key, in table order; raises if the rows and ``_ROWS`` no longer agree."""
    found: dict[str, Symptom] = {}
    for row in rows:
        keys = [key for key, phrase in _ROWS.items() if phrase in row["Symptom"].lower()]
        if len(keys) != 1 or keys[0] in found:
            raise RuntimeError(
                f"resources/{FAILURE_MODES}: the symptom {row['Symptom']!r} matches {keys or 'no key'}; "
                "update _ROWS in core/evaluation/diagnose.py to give each row exactly one key"
            )
        found[keys[0]] = Symptom(keys[0], row["Symptom"], row["Likely cause"], row["Fix"])
    if missing := sorted(_ROWS.keys() - found.keys()):
        raise RuntimeError(f"resources/{FAILURE_MODES} has no row for {missing}; update _ROWS in diagnose.py")
    return found


SYMPTOMS: dict[str, Symptom] = keyed(resources.table(FAILURE_MODES, "Symptoms"))


@dataclass(frozen=True)
class Facts:
    """What is known about the run. ``checkpoints`` are file names, oldest first; the last is the final LoRA."""

    epochs: int | None = None
    preset: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    rank: int | None = None
    alpha: float | None = None
    learning_rate: float | None = None


@dataclass(frozen=True)
class Diagnosis:
    key: str
    symptom: str
    cause: str
    fix: str
    next_step: str
    evidence: str | None = None


# Next steps ---------------------------------------------------------------------------------------------

_EPOCH_FILE = re.compile(r"-(?:epoch(\d+)|(\d{6}))\.safetensors$")  # built-in "-epoch010", kohya "-000010"


def _earlier(facts: Facts) -> str | None:
    """The earliest checkpoint kept before the final one, in words; where a run overshot, it is the one
    least affected (failure-modes.md, "Overtrained or undertrained")."""
    if len(facts.checkpoints) < 2:
        return None
    name = facts.checkpoints[0]
    found = _EPOCH_FILE.search(name)
    return f"the checkpoint from epoch {int(found[1] or found[2])}" if found else f"the earlier checkpoint {name}"


def _retrain(facts: Facts, more: bool) -> str:
    """'Retrain with 25 epochs (Thorough) instead of 15': the nearest preset in that direction (never Quick,
    a test run, when going down), else two thirds or five thirds of the epochs, within the safe range."""
    presets = preset_epochs()
    current = facts.epochs or next((e for p, e in presets.items() if p.value == facts.preset), None)
    if current is None:
        return "Retrain with more epochs (Standard to Thorough)" if more else "Retrain with fewer epochs (Standard)"
    options = [(e, p) for p, e in presets.items() if (e > current if more else e < current and p is not Preset.quick)]
    if options:
        epochs, preset = min(options) if more else max(options)
        return f"Retrain with {epochs} epochs ({preset.value.title()}) instead of {current}"
    limits = safe_ranges()["epochs"]
    epochs = int(min(limits.high, round(current * 5 / 3))) if more else max(int(limits.low), round(current * 2 / 3))
    if epochs == current:
        instead = "a higher rank" if more else "a lower learning rate"
        return f"Retrain with {instead} ({current} epochs is already the {'most' if more else 'fewest'} advised)"
    return f"Retrain with {epochs} epochs instead of {current}"


def _burnt(f: Facts) -> str:
    if earlier := _earlier(f):
        return f"Use {earlier} instead of the final one, or use the LoRA at a lower strength."
    lower = f" or a lower learning rate than {f.learning_rate:g}" if f.learning_rate else ""
    return f"{_retrain(f, more=False)}{lower}; until then, use the LoRA at a lower strength."


def _blurry(f: Facts) -> str:
    default = safe_ranges()["learning_rate"].default
    if f.learning_rate and f.learning_rate > default:
        return (
            f"Retrain with learning rate {default:g} instead of {f.learning_rate:g}, after checking the log for errors."
        )
    return "Check the run's log for errors and start it again: the learning rate is not the cause."


def _copies(f: Facts) -> str:
    first = f"Use {earlier} instead of the final one for now; then r" if (earlier := _earlier(f)) else "R"
    return f"{first}emove duplicates and look-alikes, add varied pictures and vary the captions before retraining."


def _only_at_full(f: Facts) -> str:
    if f.rank and f.alpha is not None and f.alpha < f.rank / 2:
        return f"Retrain with alpha {f.rank / 2:g} (half the rank, {f.rank}) instead of {f.alpha:g}."
    if f.rank and f.rank < 32:
        bigger = 16 if f.rank < 16 else 32
        return f"Retrain with rank {bigger} (alpha {bigger // 2}) instead of {f.rank}, or: {_retrain(f, more=True)}."
    return f"{_retrain(f, more=True)}."


def _bleeds(f: Facts) -> str:
    earlier = f" or {_earlier(f)}" if _earlier(f) else ""
    return f"Use the LoRA at a lower strength{earlier}; before retraining, name the medium and backgrounds in captions."


def _nan(f: Facts) -> str:
    rate = f" at learning rate {f.learning_rate / 2:g} instead of {f.learning_rate:g}" if f.learning_rate else ""
    return f"Retrain in bf16 (or with the image decoder kept in 32-bit: no_half_vae){rate}."


def _out_of_memory(f: Facts) -> str:
    rank = f", then rank {f.rank // 2} instead of {f.rank}" if f.rank and f.rank >= 8 else ""
    return f"Retrain with batch size 1, gradient checkpointing and an 8-bit optimiser{rank}; Gate 2 re-checks memory."


_NEXT: dict[str, Callable[[Facts], str]] = {
    "burnt": _burnt,
    "blurry": _blurry,
    "weak_trigger": lambda f: f"{_retrain(f, more=True)}, and check that every caption starts with the trigger word.",
    "copies": _copies,
    "wrong_colours": lambda f: (
        "Recaption the pictures with unusual colours (monochrome blue, sepia) so their captions name the colour, "
        "or leave those pictures out, then retrain."
    ),
    "only_at_full": _only_at_full,
    "bleeds": _bleeds,
    "identity_drift": lambda f: (
        f"Add clear face close-ups and remove off-model pictures; then r{_retrain(f, more=True)[1:]}."
    ),
    "nan": _nan,
    "out_of_memory": _out_of_memory,
    "killed": lambda f: "Close other programs and start the run again, or use a machine with more system memory.",
    "captions_ignored": lambda f: "Check that every picture has its .txt caption beside it, then start the run again.",
}


def symptoms() -> list[tuple[str, str]]:
    """(key, short plain symptom) for each row, in the table's order: a menu or a row of buttons."""
    return [(key, s.label) for key, s in SYMPTOMS.items()]


def diagnose(key: str, facts: Facts, evidence: str | None = None) -> Diagnosis:
    """The table's cause and fix for ``key``, with a next step made specific by ``facts``."""
    if key not in SYMPTOMS:
        menu = "; ".join(f"{k} ({label})" for k, label in symptoms())
        raise UserError(f"I don't know the problem {key!r}. Choose one of: {menu}.")
    s = SYMPTOMS[key]
    return Diagnosis(key, s.symptom, s.cause, s.fix, _NEXT[key](facts), evidence)


# The artist's words -------------------------------------------------------------------------------------

# Keywords per key, comma-separated. A keyword matches at the start of a word ("burn" covers burnt, burned,
# burning); the key whose matched keywords are longest in total wins, so "colour cast" beats a bare "cast".


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split(", "))


KEYWORDS: dict[str, tuple[str, ...]] = {
    "burnt": _words("burn, fried, fry, crisp, crunchy, saturat, oversaturat, harsh, blotch, overcook, overtrain"),
    "blurry": _words("blur, smear, smudg, noise, noisy, static, mush, garbage"),
    "weak_trigger": _words(
        "does nothing, do nothing, does little, nothing happens, no effect, no difference, faint, weak, barely, "
        "undertrain, not learn, didn't learn, ignores the trigger, trigger doesn't, trigger does not"
    ),
    "copies": _words(
        "copy, copies, copied, memori, same pose, my pictures, training pictures, training images, identical, "
        "overfit, duplicat"
    ),
    "wrong_colours": _words("colour, color, tint, colour cast, color cast, hue, palette, too blue, sepia"),
    "only_at_full": _words("1.0, full strength, full weight, strength 1, weight 1, only at 1, above 1"),
    "bleeds": _words("bleed, leak, into every, without the trigger, even without"),
    "identity_drift": _words("face, identity, drift, off-model, off model, inconsistent, different person"),
    "nan": _words("nan, not a number"),
    "out_of_memory": _words("out of memory, oom, vram, cuda"),
    "killed": _words("killed, just stop, log ends, log just ends, no error, without an error, crash"),
    "captions_ignored": _words("caption file, no caption, ignores captions, ignores the captions, captions ignored"),
}


def match(text: str) -> str | None:
    """The key that best fits the artist's own description ('it looks fried' → burnt), or None."""
    text = " ".join(text.lower().split())
    scores = {
        key: sum(len(w) for w in words if re.search(rf"(?<![\w.]){re.escape(w)}", text))
        for key, words in KEYWORDS.items()
    }
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] else None


# What the evidence suggests -----------------------------------------------------------------------------

FULL = 0.9  # weights from here up are "full strength" (the grid's 0.9 and 1.0 columns)
MODERATE = 0.7  # at or below this a healthy LoRA already shows, and must not copy or burn
BURNT_FROM = 0.5  # burnt: already damaged between 0.5 and 0.7, not only at the top of the grid


def detect(evidence: Sequence[WeightEvidence], facts: Facts, loss_warnings: Sequence[str] = ()) -> list[Diagnosis]:
    """What the grid's numbers and the run's loss warnings suggest without the artist saying anything:
    - nothing shows even at full strength (change < VISIBLE at every weight ≥ FULL) → weak_trigger;
    - it shows at full strength but not at MODERATE or below → only_at_full;
    - a near-copy (copying ≥ COPY) at a weight ≤ MODERATE → copies;
    - clipping ≥ CLIPPED or noise ≥ NOISE already at BURNT_FROM–MODERATE → burnt (overtrained);
    - a loss warning that mentions NaN → nan.
    Healthy evidence suggests nothing (an empty list)."""
    found: list[tuple[str, str]] = []
    lora = sorted((e for e in evidence if e.weight > 0), key=lambda e: e.weight)
    full = [e for e in lora if e.weight >= FULL]
    moderate = [e for e in lora if e.weight <= MODERATE]
    if full and max(e.change for e in full) < VISIBLE:
        e = full[-1]
        found.append(("weak_trigger", f"Even at weight {e.weight:g} the pictures changed only {e.change:.2f} from "
                      f"the no-LoRA column (below {VISIBLE:g})."))  # fmt: skip
    elif full and moderate and max(e.change for e in moderate) < VISIBLE:
        e = moderate[-1]
        found.append(("only_at_full", f"At weight {e.weight:g} the pictures changed only {e.change:.2f} (below "
                      f"{VISIBLE:g}); the LoRA shows only from {FULL:g} up."))  # fmt: skip
    if copied := [e for e in moderate if e.copying >= COPY]:
        e = copied[0]
        found.append(("copies", f"Already at weight {e.weight:g} a picture came {e.copying:.2f} close to a "
                      f"training picture ({COPY:g} or more is a near-copy)."))  # fmt: skip
    if burnt := [e for e in moderate if e.weight >= BURNT_FROM and (e.clipped >= CLIPPED or e.noise >= NOISE)]:
        e = burnt[0]
        found.append(("burnt", f"Already at weight {e.weight:g}: {e.clipped:.0%} of pixels clipped (limit "
                      f"{CLIPPED:.0%}), noise {e.noise:.2f} (limit {NOISE:g})."))  # fmt: skip
    if nan := next((w for w in loss_warnings if re.search(r"\bnan\b", w, re.IGNORECASE)), None):
        found.append(("nan", f"The run warned: {nan}"))
    return [diagnose(key, facts, why) for key, why in found]
