"""Reading the artist's models from studio.md."""

from pathlib import Path

from core.families import Family
from core.studio import studio_models


def test_models_listed_in_studio_md_are_offered(tmp_path):
    (tmp_path / "studio.md").write_text(
        "# Studio\n\n## Models\n<!-- - **Example** (flux): ignored, it's in a comment -->\n"
        "- **Pony Diffusion V6 XL** (pony): /models/pony.safetensors\n"
        "- **SDXL 1.0** (sdxl): /models/sdxl.safetensors\n- **Odd** (unknown): skipped\n\n"
        "## GPU\n- **Local** (sd15): not a model line\n"
    )
    assert studio_models(tmp_path) == [("Pony Diffusion V6 XL", Family.pony), ("SDXL 1.0", Family.sdxl)]


def test_every_family_is_offered_when_the_studio_lists_none(tmp_path):
    assert [f for _, f in studio_models(tmp_path)] == list(Family)
    shipped = Path(__file__).resolve().parent.parent / "grimoire" / "studio.md"
    (tmp_path / "studio.md").write_text(shipped.read_text())  # the template lists examples in comments only
    assert [f for _, f in studio_models(tmp_path)] == list(Family)
