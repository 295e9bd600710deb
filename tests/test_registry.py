"""The finished LoRA's records: eval.md, and its section in studio.md, which the /art tool parses and people
edit by hand, so registering must change that section and nothing else."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core import intent as intents
from core.errors import UserError
from core.evaluation.records import FIELDS, LoraEntry, register, registered, write_eval_md
from core.families import Family
from core.grimoire import Project
from core.intent import LoraType

TEMPLATE = (Path(__file__).resolve().parent.parent / "grimoire" / "studio.md").read_text(encoding="utf-8")

MIRA = LoraEntry(
    name="mira-style",
    file="/loras/mira-style.safetensors",
    type="style",
    trigger="mirastyle",
    weight=0.6,
    base_model="Pony Diffusion V6 XL",
    good_for="painterly portraits and landscapes",
    date="2026-11-29",
    params="standard, 15 epochs, rank 16",
)
MIRA_SECTION = """\
### LoRA: mira-style
- **File**: /loras/mira-style.safetensors
- **Type**: style
- **Trigger word**: mirastyle
- **Recommended weight**: 0.6
- **Base model**: Pony Diffusion V6 XL
- **Good for**: painterly portraits and landscapes
- **Training date**: 2026-11-29
- **Training params**: standard, 15 epochs, rank 16
"""

INKWASH_SECTION = """\
### LoRA: inkwash
- **File**: /loras/inkwash.safetensors
- **Type**: style
- **Trigger word**: inkwash_lt
- **Recommended weight**: 0.5
- **Base model**: SDXL 1.0
- **Good for**: ink wash landscapes
- **Training date**: 2026-10-01
- **Training params**: standard, 15 epochs, rank 16
"""

# Hand-written content before, between and after the sections, the template's example comment, trailing
# whitespace, a field a person added and a note after the last LoRA.
HAND_WRITTEN = (
    TEMPLATE.split("## LoRAs")[0]
    + """## LoRAs
<!-- Registered LoRAs appear here, one section each:
### LoRA: {name}
- **File**: {path to .safetensors}
- **Recommended weight**: {sweet spot}
-->

My LoRAs, newest last.   \n\n"""
    + INKWASH_SECTION
    + """- **Notes**: fades below 0.4

Inkwash works best with muted prompts.\t

## Ideas
- a charcoal LoRA, some day

"""
)


def studio(tmp_path: Path, text: str, newline: str = "\n") -> Path:
    path = tmp_path / "studio.md"
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def test_a_new_lora_is_added_in_the_template_format_and_nothing_else_changes(tmp_path):
    path = studio(tmp_path, HAND_WRITTEN)
    assert register(tmp_path, MIRA) == path
    text = read(path)
    assert text.count(MIRA_SECTION) == 1
    assert text.replace("\n" + MIRA_SECTION, "", 1) == HAND_WRITTEN  # one blank line before it, nothing else
    assert text.index("Inkwash works best") < text.index("### LoRA: mira-style") < text.index("## Ideas")
    assert [line.split("**")[1] for line in MIRA_SECTION.splitlines()[1:]] == list(FIELDS)


def test_registering_again_changes_only_the_weight_line(tmp_path):
    path = studio(tmp_path, HAND_WRITTEN)
    register(tmp_path, MIRA)
    before = read(path)
    register(tmp_path, replace(MIRA, weight=0.7))
    after = read(path)
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("- **Recommended weight**: 0.6", "- **Recommended weight**: 0.7")]


def test_replacing_a_hand_kept_section_keeps_its_notes_and_added_fields(tmp_path):
    path = studio(tmp_path, HAND_WRITTEN)
    new = replace(MIRA, name="inkwash", trigger="inkwash_lt", weight=0.45)
    register(tmp_path, new)
    section = "\n".join(new.lines()) + "\n"
    assert read(path).replace(section, INKWASH_SECTION) == HAND_WRITTEN
    assert registered(tmp_path)["inkwash"]["Notes"] == "fades below 0.4"


def test_crlf_files_keep_their_line_endings(tmp_path):
    path = studio(tmp_path, HAND_WRITTEN, "\r\n")
    register(tmp_path, MIRA)
    register(tmp_path, replace(MIRA, weight=0.65))
    text = read(path)
    assert "\n" not in text.replace("\r\n", "")
    section = MIRA_SECTION.replace("0.6", "0.65").replace("\n", "\r\n")
    assert text.replace("\r\n" + section, "", 1) == HAND_WRITTEN.replace("\n", "\r\n")


def test_the_template_example_is_not_a_registered_lora(tmp_path):
    path = studio(tmp_path, TEMPLATE)
    assert registered(tmp_path) == {}
    register(tmp_path, MIRA)
    text = read(path)
    assert text.replace("\n" + MIRA_SECTION, "", 1) == TEMPLATE
    assert text.endswith("-->\n\n" + MIRA_SECTION)
    assert list(registered(tmp_path)) == ["mira-style"]


def test_registered_reads_every_section_back(tmp_path):
    studio(tmp_path, HAND_WRITTEN)
    register(tmp_path, MIRA)
    found = registered(tmp_path)
    assert list(found) == ["inkwash", "mira-style"]
    assert found["mira-style"] == dict(zip(FIELDS, [line.split(": ", 1)[1] for line in MIRA_SECTION.splitlines()[1:]],
                                           strict=True))  # fmt: skip
    assert found["inkwash"]["Recommended weight"] == "0.5" and found["inkwash"]["Trigger word"] == "inkwash_lt"


def test_a_missing_studio_md_is_created(tmp_path):
    assert registered(tmp_path) == {}
    path = register(tmp_path / "grimoire", MIRA)
    assert read(path) == "# Studio\n\n## LoRAs\n\n" + MIRA_SECTION
    assert registered(tmp_path / "grimoire")["mira-style"]["Recommended weight"] == "0.6"


def test_a_studio_md_without_a_loras_section_gets_one_at_the_end(tmp_path):
    path = studio(tmp_path, "# Studio\n\n## GPU\n- **Local**: RTX 4090, 24 GB")  # no final newline
    register(tmp_path, MIRA)
    assert read(path) == "# Studio\n\n## GPU\n- **Local**: RTX 4090, 24 GB\n\n## LoRAs\n\n" + MIRA_SECTION


def test_a_file_without_a_final_newline_stays_without_one(tmp_path):
    path = studio(tmp_path, "## LoRAs\n" + MIRA_SECTION.rstrip("\n"))
    register(tmp_path, replace(MIRA, weight=0.8))
    assert read(path) == "## LoRAs\n" + MIRA_SECTION.replace("0.6", "0.8").rstrip("\n")
    register(tmp_path, replace(MIRA, name="other"))
    assert read(path).endswith("rank 16\n\n### LoRA: other\n" + MIRA_SECTION.split("\n", 1)[1])


@pytest.mark.parametrize("name", ["my lora", "x\n## Evil", "a]b", "../up"])
def test_names_that_would_break_the_markdown_are_refused(tmp_path, name):
    studio(tmp_path, HAND_WRITTEN)
    with pytest.raises(UserError):
        register(tmp_path, replace(MIRA, name=name))
    assert read(tmp_path / "studio.md") == HAND_WRITTEN


def test_field_values_stay_on_one_line_and_cannot_open_a_comment(tmp_path):
    register(tmp_path, replace(MIRA, good_for="portraits\n## Injected\nand more"))
    assert registered(tmp_path)["mira-style"]["Good for"] == "portraits ## Injected and more"
    with pytest.raises(UserError, match="would hide part of studio.md"):
        register(tmp_path, replace(MIRA, good_for="portraits <!-- hidden"))


def test_eval_md_is_written_in_the_seeds_format(settings):
    project = Project.at(settings, "mira-style")
    intents.create(project, LoraType.style, Family.pony, "mirastyle")
    path = write_eval_md(
        project,
        sweet_spot="0.5–0.7: style clearly present, faces clean",
        weight=0.6,
        quality_notes=["brushwork carried over", "faces clean up to 0.7"],
        high_weight_issues=["training-picture echo at 0.9–1.0"],
        checkpoint="mira-style-epoch010.safetensors",
        prompts=[("portrait", "mirastyle, portrait of a woman"), ("animal", "mirastyle, a fox")],
        grid="eval/grid-epoch010.png",
        comparison=["epoch 10: cleanest faces", "final: colours start to burn at 0.9"],
    )
    assert path == project.root / "eval.md"
    assert path.read_text(encoding="utf-8") == (
        "# Evaluation: mira-style\n"
        "- **Sweet spot**: 0.5–0.7: style clearly present, faces clean\n"
        "- **Recommended weight**: 0.6\n"
        "- **Quality notes**: brushwork carried over; faces clean up to 0.7\n"
        "- **Issues at high weight**: training-picture echo at 0.9–1.0\n"
        "- **Checkpoint used**: mira-style-epoch010.safetensors\n"
        "- **Test prompts**: portrait; animal\n"
        "\n## Comparison\n- epoch 10: cleanest faces\n- final: colours start to burn at 0.9\n"
        "\n## Test prompts\n- **portrait**: mirastyle, portrait of a woman\n- **animal**: mirastyle, a fox\n"
        "\n## Grid\neval/grid-epoch010.png\n"
    )
    write_eval_md(project, sweet_spot="none", weight=1.0, quality_notes=[], high_weight_issues=[], checkpoint="final",
                  prompts=[], grid=None, comparison=[])  # fmt: skip
    text = path.read_text(encoding="utf-8")
    assert "- **Quality notes**: none noted\n" in text and "No grid was drawn." in text


def test_cloud_instances_keep_one_line_each_in_studio_md_and_every_other_byte(tmp_path):
    from core.cloud import ledger

    hand = (
        "# Studio\r\n\r\n## Cloud instances\r\n<!-- loratrain records rented GPUs here -->\r\nMy own note.\r\n"
        "\r\n## LoRAs\r\n"
    )
    (tmp_path / "studio.md").write_bytes(hand.encode())
    instance = {"provider": "vast", "id": "7001", "gpu": "RTX 4090", "usd_per_hour": 0.5, "status": "RUNNING",
                "started_at": "2026-11-29T10:00:00+00:00", "ended_at": None, "project": "pots"}  # fmt: skip
    ledger.record(tmp_path, [instance])
    ledger.record(tmp_path, [{**instance, "status": "TERMINATED", "ended_at": "2026-11-29T12:00:00+00:00"}])
    text = (tmp_path / "studio.md").read_bytes().decode()
    line = ("- **Vast.ai 7001**: RTX 4090 · $0.50/hour · started 2026-11-29 10:00 UTC · TERMINATED · $1.00 in all · "
            "project pots")  # fmt: skip
    assert text == hand.replace("My own note.\r\n", f"My own note.\r\n{line}\r\n")
    fresh = tmp_path / "new"
    fresh.mkdir()
    ledger.record(fresh, [instance])  # no studio.md yet: the section is made
    assert "## Cloud instances\n\n- **Vast.ai 7001**: RTX 4090" in (fresh / "studio.md").read_text()
