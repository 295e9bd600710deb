"""The ``loratrain`` command as a newcomer meets it: help everywhere, the demo, plain errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import parser

COMMANDS = ["new", "add", "audit", "dupes", "resolve", "curate", "report", "caption", "chat", "worker", "bot", "demo"]


def test_every_command_has_help(capsys):
    for args in ([], *[[c] for c in COMMANDS]):
        with pytest.raises(SystemExit) as done:
            parser().parse_args([*args, "--help"])
        assert done.value.code == 0
        assert "usage: loratrain" in capsys.readouterr().out
    assert set(COMMANDS) <= set(parser()._subparsers._group_actions[0].choices)


def test_the_console_script_is_installed_and_answers():
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "loratrain"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "demo" in result.stdout


def test_new_then_curate_and_report_through_the_cli(cli, tmp_path, painting):
    assert cli("new", "mira", "--type", "object", "--model", "sd15", "--trigger", "mirapot")[0] == 0
    folder = tmp_path / "pics"
    folder.mkdir()
    for seed in range(10):
        painting(seed, (576, 512)).save(folder / f"pot {seed}.jpg", quality=92)
    assert cli("add", "mira", str(folder))[0] == 0
    code, out, _ = cli("curate", "mira", "--json")
    assert code == 0 and json.loads(out)["count"] == 10
    code, out, _ = cli("report", "mira")
    assert code == 0 and "NO-GO — images are not captioned yet" in out
    assert (tmp_path / "grimoire/training/mira/dataset-report.md").is_file()


def test_invalid_input_is_a_plain_message_and_exit_code_2(cli):
    code, out, err = cli("new", "mira", "--type", "style", "--model", "sdxl", "--trigger", "two words")
    assert code == 2 and out == "" and err.startswith("loratrain: The trigger word 'two words' can't be used.")
    assert "Traceback" not in err
    code, _, err = cli("report", "ghost")
    assert code == 2 and "There is no training project called 'ghost'" in err


def test_demo_runs_the_whole_pipeline_offline(cli, tmp_path):
    code, out, err = cli("demo")
    assert code == 0, err
    for step in range(1, 15):
        assert f"Step {step} of 14" in out
    assert "❌ forest-late.jpg: This file is cut off partway" in out
    assert "❌ notes.jpg: This is a text file" in out
    assert "I found 1 pair of duplicates" in out
    assert "Gate 1 (dataset): NO-GO — images are not captioned yet." in out
    assert "(the demo plays the artist and presses Approve)" in out
    assert "Gate 1 (dataset): GO — ready." in out.split("Step 8 of 14")[1]
    assert "Gate 4 (dry run): Dry run passed — model loaded, 3 steps completed, no errors." in out
    assert "Gate 3 (environment): GO for this small test model, which trains on the CPU here" in out
    assert "✅ Dataset ✅ Config ✅ Environment ✅ Dry run" in out
    assert "Training finished: demo-style.safetensors" in out and "Weight 0.5:" in out
    assert "Registered demo-style in" in out
    studio = (tmp_path / "grimoire" / "demo" / "studio.md").read_text()
    assert "### LoRA: demo-style" in studio and "- **Trigger word**: demostyle_lt" in studio
    assert not (tmp_path / "grimoire" / "studio.md").exists()  # the artist's own studio is not touched
    root = tmp_path / "grimoire" / "demo" / "training" / "demo-style"
    assert (root / "checkpoints" / "demo-style.safetensors").is_file() and (root / "eval.md").is_file()
    assert (root / "intent.md").is_file() and (root / "dataset-report.md").is_file()
    assert len(list((root / "excluded").iterdir())) == 1
    assert len(list((root / "dataset").glob("*.jpg"))) == 23
    captions = list((root / "dataset").glob("*.txt"))
    assert len(captions) == 23 and all(c.read_text().startswith("demostyle_lt") for c in captions)
    code, again, _ = cli("demo")  # re-running starts the demo project afresh
    assert code == 0 and "I found 1 pair of duplicates" in again


async def test_caption_review_in_the_terminal(settings, painting):
    from core import intent as intents
    from core.chat import caption_review
    from core.families import Family
    from core.grimoire import Project
    from core.intent import LoraType

    project = Project.at(settings, "pots")
    intents.create(project, LoraType.object, Family.sd15, "potobj")
    for seed in range(10):
        painting(seed, (576, 512)).save(project.dataset_dir / f"pot{seed}.jpg", quality=92)
    # Approve the first sample, adjust the second (typing the new caption), approve the rest.
    lines = iter(["1", "5", "a red teapot on a table", "7", "10", "13", "quit"])
    out: list[str] = []
    await caption_review(settings, project, "mira", True, lines, out.append)
    said = "\n".join(out)
    assert said.count("Does this capture both what's in the image AND how it's painted?") == 5
    assert "Type the caption as you'd like it:" in said
    assert "**Gate 1 (dataset): GO**" in said
    captions = [p.read_text(encoding="utf-8").strip() for p in project.dataset_dir.glob("*.txt")]
    assert len(captions) == 10 and "potobj, a red teapot on a table" in captions
