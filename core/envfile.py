"""``.env.example``: every setting with its meaning and default, generated from ``Settings`` so that it
cannot drift from the code (``tests/test_docker.py`` compares the committed file with ``env_example()``).

Regenerate it with ``.venv/bin/python -m core.envfile > .env.example``.

Every setting is written commented out: an empty value is not the same as an unset one (an empty
``LORATRAIN_DISCORD_GUILD`` fails to parse, an empty API key counts as a key), so a copied file changes
nothing until a line is uncommented.
"""

from __future__ import annotations

from core.settings import Settings, env_names

HEADER = """\
# loratrain's settings. Copy this file to .env (`cp .env.example .env`) and fill in what you need:
# loratrain and docker/compose.yaml both read .env.
#
# Every line below is commented out and shows the default after "=" (nothing after "=": unset).
# To change a setting, remove the "# " in front of its line and write the value. Only
# LORATRAIN_DISCORD_TOKEN is needed to run the Discord bot; everything else is optional.
#
# Under docker/compose.yaml, LORATRAIN_REDIS_URL, LORATRAIN_GRIMOIRE and LORATRAIN_DATABASE are set by
# the compose file (Redis in its own container, the data in volumes): lines here don't change them.
# Keep this file private: it holds your tokens and keys."""


def env_example() -> str:
    """The text of ``.env.example``: for each setting, its description, then ``# NAME=default``."""
    blocks = [HEADER]
    for name, field in Settings.model_fields.items():
        first, *others = env_names(name)
        meaning = field.description or ""
        if others:
            meaning += f" Also read from {', '.join(others)}."
        if name == "workers":  # the default is this machine's core count, which the file must not pin
            meaning += " Default: the number of cores."
        default = "" if field.default is None or name == "workers" else field.default
        blocks.append(f"# {meaning}\n# {first}={default}")
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    print(env_example(), end="")
