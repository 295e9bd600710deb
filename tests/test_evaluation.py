"""The finished LoRA from the terminal: the strength grid with its evidence, the checkpoints side by
side, the weight recorded in studio.md (with what a person wrote there kept), and the diagnosis."""

from __future__ import annotations

import json
import socket

from tests.conftest import make_project

STUDIO = """# Studio

My own notes: the good brushes are in the blue box.

## Models
- **Tiny SD 1.5** (sd15): somewhere

## LoRAs
<!-- Registered LoRAs appear here, one section each:
### LoRA: {name}
-->

### LoRA: older-one
- **File**: /loras/older-one.safetensors
- **Type**: style
- **Trigger word**: oldsty
- **Recommended weight**: 0.7
- **Base model**: SDXL 1.0
- **Good for**: test
- **Training date**: 2026-01-01
- **Training params**: Standard, 15 epochs, rank 16

Last line, by hand.
"""


def test_eval_draws_the_grid_then_the_chosen_weight_is_registered(cli, settings, ready):
    assert cli("train", "pots", "--yes")[0] == 0
    (settings.grimoire / "studio.md").write_text(STUDIO)

    code, out, err = cli("eval", "pots", "--steps", "2", "--resolution", "128", "--compare")
    assert code == 0, err
    eval_dir = ready.root / "eval" / "pots"
    assert f"Grid: {eval_dir / 'grid.png'}" in out and (eval_dir / "grid.png").is_file()
    assert (eval_dir / "checkpoints.png").is_file()  # epoch 5 and the final one, side by side
    for weight in ("0.3", "0.5", "0.7", "0.9", "1.0"):
        assert f"Weight {weight}:" in out
    assert "When you have chosen: loratrain register pots --weight W" in out  # no one at a terminal to ask
    evidence = json.loads((ready.root / "eval" / "evidence.json").read_text())
    assert [e["weight"] for e in evidence] == [0.3, 0.5, 0.7, 0.9, 1.0]
    assert "- **Test prompts**: isolated; in context; held; close-up; multiple" in ready.path("eval.md").read_text()

    code, out, _ = cli("register", "pots", "--weight", "0.6")
    assert code == 0 and "Registered pots" in out
    studio = (settings.grimoire / "studio.md").read_text()
    section = studio.split("### LoRA: pots\n")[1].rstrip("\n")
    assert "- **Recommended weight**: 0.6" in section and "- **Trigger word**: potobj" in section
    assert "- **Training params**: Quick, 6 epochs, rank 16" in section
    assert studio == STUDIO.rstrip("\n") + "\n\n### LoRA: pots\n" + section + "\n"  # the rest kept byte for byte
    assert "- **Recommended weight**: 0.6" in ready.path("eval.md").read_text()
    assert "- **Phase**: COMPLETE" in ready.path("status.md").read_text()

    code, out, _ = cli("diagnose", "pots", "--describe", "the trigger word does nothing")
    assert code == 0 and "Next step:" in out and "resources/training/failure-modes.md" in out


def test_eval_before_training_says_what_to_do(cli, ready):
    code, _, err = cli("eval", "pots")
    assert code == 2 and "pots has no finished LoRA yet: train it first" in err


def test_without_a_running_comfyui_the_workflows_are_saved_and_the_artist_told(cli, tmp_path, painting, monkeypatch):
    make_project(cli, tmp_path, painting)
    model = tmp_path / "models" / "sd15.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"a checkpoint")
    assert cli("config", "pots", "--backend", "builtin", "--model", str(model), "--resolution", "512")[0] == 0
    lora = tmp_path / "grimoire" / "training" / "pots" / "checkpoints" / "pots.safetensors"
    lora.parent.mkdir()
    lora.write_bytes(b"a finished LoRA")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LORATRAIN_COMFYUI_URL", f"http://127.0.0.1:{port}")
    code, out, err = cli("eval", "pots")
    assert code == 0, err
    assert f"ComfyUI wasn't reachable at http://127.0.0.1:{port}" in out and "Grid:" not in out
    workflows = sorted((lora.parent.parent / "eval" / "pots" / "workflows").glob("*.json"))
    assert len(workflows) == 5 * 6  # five test prompts, no LoRA and five weights
    graph = json.loads(workflows[0].read_text())
    assert {node["class_type"] for node in graph.values()} >= {"CheckpointLoaderSimple", "KSampler", "SaveImage"}
