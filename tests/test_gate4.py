"""Gate 4 (the dry run on the tiny model, on the CPU) and the four gates at a glance."""

from __future__ import annotations

import pytest

from tests.conftest import make_project


@pytest.fixture
def configured(cli, tmp_path, painting, tiny_sd15):
    """A captioned 10-picture object project with Gate 1 decided and a built-in config on the tiny model."""
    dataset = make_project(cli, tmp_path, painting)
    code, out, err = cli("config", "pots", "--backend", "builtin", "--model", str(tiny_sd15), "--resolution", "512",
                         "--optimizer", "adamw", "--available", "24", "--batch", "2")  # fmt: skip
    assert code == 0, err
    return dataset


def test_the_dry_run_trains_a_few_real_steps_and_says_so(cli, configured, tmp_path):
    code, out, err = cli("dryrun", "pots")
    assert code == 0, err
    assert "Gate 4 (dry run): Dry run passed — model loaded, 3 steps completed, no errors." in out
    status = (tmp_path / "grimoire" / "training" / "pots" / "status.md").read_text()
    assert "- **Gate 4 (dry run)**: PASSED" in status


def test_a_missing_caption_is_diagnosed(cli, configured):
    (configured / "pot3.txt").unlink()
    code, out, _ = cli("dryrun", "pots")
    assert code == 0 and "Dry run failed" in out and "Finish the captions" in out


def test_a_missing_model_is_diagnosed(cli, configured, tiny_sd15, tmp_path):
    config = tmp_path / "grimoire" / "training" / "pots" / "config"
    main = next(p for p in config.glob("*.json") if p.name != "dryrun.json")
    main.write_text(main.read_text().replace(str(tiny_sd15), str(tmp_path / "nowhere")))
    code, out, _ = cli("dryrun", "pots")
    assert "Dry run failed" in out and "base model wasn't found" in out


def test_the_dry_run_needs_a_config_first(cli):
    assert cli("new", "empty", "--type", "style", "--model", "sdxl", "--trigger", "emptystyle")[0] == 0
    code, _, err = cli("dryrun", "empty")
    assert code == 2 and "no training settings yet" in err


def test_the_gates_at_a_glance_and_a_changed_caption_voids_gate_one(cli, configured):
    cli("dryrun", "pots")
    code, out, _ = cli("gates", "pots")
    assert code == 0
    assert out.splitlines()[0] == "✅ Dataset ✅ Config ⏸ Environment ⚠️ Dry run"
    assert "Training can't start until all four gates pass" in out
    (configured / "pot1.txt").write_text("potobj, a different caption\n")
    _, out, _ = cli("gates", "pots")
    assert out.splitlines()[0] == "⚠️ Dataset ⚠️ Config ⏸ Environment ⚠️ Dry run"
    assert "what it checked has changed since" in out


def test_a_machine_check_counts_until_the_machine_changes(cli, configured):
    _, out, _ = cli("env", "pots")  # no GPU here, but the tiny model trains on the CPU
    assert "Gate 3 (environment): GO for this small test model, which trains on the CPU here" in out
    _, out, _ = cli("gates", "pots")
    assert out.splitlines()[0] == "✅ Dataset ✅ Config ✅ Environment ⏸ Dry run"

    cli("config", "pots", "--backend", "builtin", "--resolution", "512", "--available", "24")  # real SD 1.5
    assert cli("env", "pots")[0] == 0  # a real model needs a GPU: Gate 3 is recorded as NO-GO
    _, out, _ = cli("gates", "pots")
    assert out.splitlines()[0] == "✅ Dataset ✅ Config ❌ Environment ⏸ Dry run"  # failed, not stale: same machine
    assert "No NVIDIA GPU was found" in out
