"""Diagnosis: from a symptom (chosen, described, or suggested by the grid's numbers) to the cause and fix in
resources/training/failure-modes.md and a next step with the project's own numbers."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace

import pytest

from core import intent as intents
from core import resources
from core.errors import UserError
from core.evaluation import diagnose_commands
from core.evaluation.diagnose import (
    FAILURE_MODES,
    KEYWORDS,
    SYMPTOMS,
    Facts,
    detect,
    diagnose,
    keyed,
    match,
    symptoms,
)
from core.evaluation.diagnose_commands import cmd_diagnose
from core.evaluation.measures import WeightEvidence
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType
from core.store import open_store

CHECKPOINTS = ["pots-epoch010.safetensors", "pots-epoch013.safetensors", "pots.safetensors"]
STANDARD = Facts(epochs=15, preset="standard", checkpoints=CHECKPOINTS, rank=16, alpha=8, learning_rate=0.0001)


@pytest.mark.parametrize(
    ("key", "cause"),
    [
        ("burnt", "Overtrained"),
        ("blurry", "Learning rate far too high"),
        ("weak_trigger", "Undertrained"),
        ("copies", "Overfit"),
        ("wrong_colours", "captions don't mention"),
        ("only_at_full", "Weak signal"),
    ],
)
def test_each_required_symptom_has_its_cause_fix_and_next_step(key, cause):
    found = diagnose(key, STANDARD)
    assert found.key == key and cause in found.cause
    assert found.symptom == SYMPTOMS[key].symptom and found.fix == SYMPTOMS[key].fix and found.fix
    assert found.next_step.endswith(".") and found.evidence is None


def test_every_row_has_a_next_step_and_keywords():
    assert list(KEYWORDS) == list(SYMPTOMS)
    for key in SYMPTOMS:
        assert diagnose(key, Facts()).next_step
        assert diagnose(key, STANDARD).next_step


def test_next_steps_use_the_projects_facts():
    assert diagnose("burnt", STANDARD).next_step.startswith("Use the checkpoint from epoch 10 instead of the final one")
    kohya = replace(STANDARD, checkpoints=["pots-000005.safetensors", "pots.safetensors"])
    assert "the checkpoint from epoch 5 instead of the final one" in diagnose("copies", kohya).next_step
    final_only = replace(STANDARD, checkpoints=["pots.safetensors"])
    assert "epoch" not in diagnose("copies", final_only).next_step.split(";")[0]
    thorough = replace(final_only, epochs=25, preset="thorough", learning_rate=0.0002)
    assert diagnose("burnt", thorough).next_step.startswith(
        "Retrain with 15 epochs (Standard) instead of 25 or a lower learning rate than 0.0002"
    )
    assert diagnose("burnt", final_only).next_step.startswith("Retrain with 10 epochs instead of 15")
    assert diagnose("weak_trigger", STANDARD).next_step.startswith("Retrain with 25 epochs (Thorough) instead of 15")
    quick = replace(STANDARD, epochs=5, preset="quick")
    assert "Retrain with 15 epochs (Standard) instead of 5" in diagnose("weak_trigger", quick).next_step
    assert "30 epochs instead of 25" in diagnose("weak_trigger", thorough).next_step
    assert "monochrome blue, sepia" in diagnose("wrong_colours", STANDARD).next_step
    alpha_one = replace(STANDARD, alpha=1)
    assert diagnose("only_at_full", alpha_one).next_step == "Retrain with alpha 8 (half the rank, 16) instead of 1."
    assert "rank 32 (alpha 16) instead of 16" in diagnose("only_at_full", STANDARD).next_step
    too_fast = replace(STANDARD, learning_rate=0.001)
    assert "learning rate 0.0001 instead of 0.001" in diagnose("blurry", too_fast).next_step
    assert "learning rate 0.0005 instead of 0.001" in diagnose("nan", too_fast).next_step
    assert "rank 8 instead of 16" in diagnose("out_of_memory", STANDARD).next_step


def test_an_unknown_symptom_lists_the_choices_in_plain_words():
    with pytest.raises(UserError) as err:
        diagnose("sad", STANDARD)
    assert "burnt (Pictures look burnt or fried)" in str(err.value)
    assert "only_at_full (Only works at strength 1.0 or above)" in str(err.value)


def test_the_menu_is_short_enough_for_buttons():
    menu = symptoms()
    assert [k for k, _ in menu] == list(SYMPTOMS)
    assert dict(menu)["burnt"] == "Pictures look burnt or fried"
    assert all(0 < len(label) <= 80 for _, label in menu)  # Discord's button label limit


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("it looks fried", "burnt"),
        ("The colours are burned and crunchy", "burnt"),
        ("everything is blurry", "blurry"),
        ("the trigger does nothing", "weak_trigger"),
        ("the style is really faint", "weak_trigger"),
        ("it copies my pictures", "copies"),
        ("same pose every time, like it memorised them", "copies"),
        ("everything has a blue colour cast", "wrong_colours"),
        ("it only works at 1.0", "only_at_full"),
        ("I need full strength to see anything", "only_at_full"),
        ("the style leaks into every picture even without the trigger", "bleeds"),
        ("her face changes between pictures", "identity_drift"),
        ("loss is NaN", "nan"),
        ("CUDA out of memory", "out_of_memory"),
        ("it just stopped, no error", "killed"),
        ("I like it a lot", None),
    ],
)
def test_the_artists_words_find_the_symptom(text, key):
    assert match(text) == key


def test_the_table_guard_fails_loudly_when_the_table_changes():
    rows = resources.table(FAILURE_MODES, "Symptoms")
    assert list(keyed(rows)) == list(SYMPTOMS)
    reworded = [dict(r) for r in rows]
    reworded[0]["Symptom"] = "Pictures look overcooked"
    with pytest.raises(RuntimeError, match="matches no key"):
        keyed(reworded)
    with pytest.raises(RuntimeError, match="has no row for"):
        keyed(rows[1:])
    with pytest.raises(RuntimeError, match="update _ROWS"):
        keyed([*rows, {"Symptom": "Pictures look burnt or fried again", "Likely cause": "?", "Fix": "?"}])


def grid(change=(0.1, 0.25, 0.4, 0.5, 0.6), copying=0.5, noise=0.05, clipped=0.02) -> list[WeightEvidence]:
    weights = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
    return [
        WeightEvidence(w, c, copying if w else 0.3, noise if w else 0.0, clipped)
        for w, c in zip(weights, (0.0, *change), strict=True)
    ]


def test_healthy_evidence_suggests_nothing():
    assert detect(grid(), STANDARD) == []
    assert detect([], STANDARD, ["Loss is rising: the learning rate may be too high"]) == []


def test_each_evidence_rule():
    (weak,) = detect(grid(change=(0.005, 0.01, 0.02, 0.03, 0.04)), STANDARD)
    assert weak.key == "weak_trigger" and "Even at weight 1 the pictures changed only 0.04" in weak.evidence
    (full,) = detect(grid(change=(0.01, 0.02, 0.04, 0.2, 0.3)), STANDARD)
    assert full.key == "only_at_full" and "At weight 0.7 the pictures changed only 0.04" in full.evidence
    copy = grid()
    copy[3] = replace(copy[3], copying=0.91)  # weight 0.7
    (copies,) = detect(copy, STANDARD)
    assert copies.key == "copies" and "0.7" in copies.evidence and "0.91" in copies.evidence
    assert copies.next_step.startswith("Use the checkpoint from epoch 10 instead of the final one")
    high_only = grid()
    high_only[5] = replace(high_only[5], copying=0.95, clipped=0.4, noise=0.6)  # weight 1.0: too much, not a fault
    assert detect(high_only, STANDARD) == []
    fried = grid()
    fried[2] = replace(fried[2], clipped=0.2)  # weight 0.5
    (burnt,) = detect(fried, STANDARD)
    assert burnt.key == "burnt" and "20% of pixels clipped" in burnt.evidence
    speckled = grid()
    speckled[3] = replace(speckled[3], noise=0.3)
    assert [d.key for d in detect(speckled, STANDARD)] == ["burnt"]
    (nan,) = detect(grid(), STANDARD, ["The loss became NaN (not a number) — training broke down"])
    assert nan.key == "nan" and "NaN" in nan.evidence


# The command ---------------------------------------------------------------------------------------------


@pytest.fixture
async def project(settings):
    project = Project.at(settings, "pots")
    intents.create(project, LoraType.object, Family.sd15, "potobj")
    params = {"epochs": 15, "preset": "standard", "rank": 16, "alpha": 8.0, "learning_rate": 0.0001}
    async with open_store(settings.database_path) as store:
        await store.record_gate("pots", 2, True, "f", {"params": params})
    (project.root / "checkpoints").mkdir()
    for age, name in enumerate(reversed(CHECKPOINTS)):
        path = project.root / "checkpoints" / name
        path.write_bytes(b"lora")
        os.utime(path, (1_700_000_000 - age * 60, 1_700_000_000 - age * 60))
    return project


def args(**given) -> argparse.Namespace:
    return argparse.Namespace(**({"name": "pots", "symptom": None, "describe": None, "json": False} | given))


async def test_the_command_explains_a_chosen_symptom_with_the_projects_facts(settings, project, capsys):
    await cmd_diagnose(settings, args(symptom="burnt"))
    out = capsys.readouterr().out
    assert "What you see: Pictures look burnt or fried" in out
    assert "Likely cause: Overtrained" in out and "Fix: Use an earlier checkpoint" in out
    assert "Next step: Use the checkpoint from epoch 10 instead of the final one" in out
    assert "(from resources/training/failure-modes.md)" in out
    await cmd_diagnose(settings, args(symptom="weak_trigger", json=True))
    found = json.loads(capsys.readouterr().out)["diagnosis"]
    assert found["key"] == "weak_trigger" and found["next_step"].startswith("Retrain with 25 epochs (Thorough)")


async def test_the_command_understands_a_description(settings, project, capsys):
    await cmd_diagnose(settings, args(describe="it copies my pictures"))
    assert "Likely cause: Overfit" in capsys.readouterr().out
    with pytest.raises(UserError, match="couldn't tell which problem") as err:
        await cmd_diagnose(settings, args(describe="I like it a lot"))
    assert "burnt: Pictures look burnt or fried" in str(err.value)
    with pytest.raises(UserError, match="I don't know the problem 'sad'"):
        await cmd_diagnose(settings, args(symptom="sad"))


async def test_without_a_symptom_it_lists_them_and_what_the_grid_suggests(settings, project, capsys):
    await cmd_diagnose(settings, args())
    out = capsys.readouterr().out
    assert "burnt: Pictures look burnt or fried" in out and "captions_ignored: The LoRA ignores captions" in out
    assert "suggests" not in out  # no grid drawn yet
    evidence = grid(change=(0.005, 0.01, 0.02, 0.03, 0.04))
    (project.root / "eval").mkdir()
    (project.root / "eval" / "evidence.json").write_text(json.dumps([e.__dict__ for e in evidence]))
    await cmd_diagnose(settings, args())
    out = capsys.readouterr().out
    assert "The grid's evidence suggests this" in out and "What the grid shows: Even at weight 1" in out
    assert "Next step: Retrain with 25 epochs (Thorough) instead of 15" in out
    await cmd_diagnose(settings, args(json=True))
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["symptoms"]) == len(SYMPTOMS) and [d["key"] for d in listed["suggested"]] == ["weak_trigger"]
    (project.root / "eval" / "evidence.json").write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="not a list of grid measurements"):
        await cmd_diagnose(settings, args())


async def test_a_project_without_a_config_gets_general_next_steps(settings, capsys):
    intents.create(Project.at(settings, "fresh"), LoraType.style, Family.sdxl, "freshstyle")
    await cmd_diagnose(settings, args(name="fresh", symptom="weak_trigger"))
    assert "Next step: Retrain with more epochs (Standard to Thorough)" in capsys.readouterr().out


def test_the_parser_wires_the_command():
    parser = argparse.ArgumentParser(prog="loratrain")
    diagnose_commands.add_parsers(parser.add_subparsers())
    parsed = parser.parse_args(["diagnose", "pots", "--describe", "it looks fried", "--json"])
    assert parsed.run is cmd_diagnose and parsed.describe == "it looks fried" and parsed.json
    with pytest.raises(SystemExit):
        parser.parse_args(["diagnose", "pots", "--symptom", "burnt", "--describe", "fried"])
