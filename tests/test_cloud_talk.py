"""Renting a GPU from the conversation and the terminal: offers with their cost, the rental only on the
artist's press, the run's news in the thread, and the commands to list and tear down instances."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.events import CloudOffers, CloudQuote, InstanceDestroyed
from core.replies import Decide, Picture, Say
from core.store import open_store
from tests.test_engine import Conversation, choices, text


async def test_the_artist_rents_a_gpu_from_the_thread_and_gets_a_grid_back(cloud, configured, vast):
    async with open_store(cloud.database_path) as store:
        await store.save_session("t1", "u1", "pots", "gates", {})
        c = Conversation(cloud, store)
        offered = await c.act(Say(text="cloud"))  # embedded mode: the offers job runs right here
        rent = choices(offered)[-1]
        # a 12 GB card can't hold this run; of those that can, the fastest is the cheapest run in all
        assert rent.ref == "rent" and "RTX 3060" not in rent.prompt
        assert "1. A100 SXM4 (80 GB) on Vast.ai — $1.10/hour, reliability 99.9%, Canada, CA: about" in rent.prompt
        labels = [o.label for o in rent.options]
        assert labels == ["Rent A100 SXM4 — under $0.01", "Rent RTX 4090 — under $0.01", "Rent RTX 4090 — under $0.01",
                          "Not now"]  # fmt: skip
        assert not vast.instances  # nothing is rented by looking

        shown = await c.act(Decide(ref="rent", value="0"))
        said = text(shown)
        assert choices(shown)[0].ref == "cancel" and "Renting A100 SXM4 on Vast.ai" in choices(shown)[0].prompt
        assert "Rented A100 SXM4 on Vast.ai" in said and "Gate 4 (Dry run) passed on the rented A100 SXM4" in said
        assert "Training finished" in said and "Destroyed the A100 SXM4 on Vast.ai" in said
        # the grid drawn on the rented GPU is shown here, with the weights to choose from
        grid = [r for r in shown if isinstance(r, Picture) and "five strengths" in r.caption]
        assert grid and Path(grid[0].path).is_file() and "Weight 0.3:" in said, said
        assert choices(shown)[-1].ref == "weight"
        assert "Drawing" not in said  # no second grid job: the rented GPU drew it
        assert (await store.session("t1"))["phase"] == "evaluated"
        assert len(vast.destroyed) == 1 and "already been answered" in text(await c.act(Decide(ref="rent", value="0")))


async def test_offers_over_the_cap_are_never_buttons_and_not_now_rents_nothing(settings, configured):
    async with open_store(settings.database_path) as store:
        await store.save_session("t1", "u1", "pots", "gates", {})
        c = Conversation(settings, store)
        cheap = CloudQuote(provider="vast", gpu="A100 SXM4", usd=0.4, text="A100 SXM4 … about $0.40", quote={})
        dear = CloudQuote(provider="vast", gpu="H100", usd=30.0, text="H100 … about $30.00", quote={})
        event = CloudOffers(id="o1", session="t1", project="pots", job="j", quotes=[cheap, dear], cap_usd=10.0)
        rent = choices((await c.engine.on_event(event)).replies)[0]
        assert [o.label for o in rent.options] == ["Rent A100 SXM4 — about $0.40", "Not now"]
        assert "H100 … about $30.00" in rent.prompt  # shown, so the artist sees why it is not offered
        outcome = await c.engine.handle("t1", "u1", Decide(ref="rent", value="no"))
        assert not outcome.jobs and "Nothing rented" in outcome.replies[0].text
        gone = InstanceDestroyed(id="x", session="t1", project="pots", job="r", text="Destroyed the H100 …")
        assert [(r.text, r.ping) for r in (await c.engine.on_event(gone)).replies] == [("Destroyed the H100 …", True)]


async def test_renting_is_refused_in_plain_words_without_a_key_or_before_the_settings(settings, configured, vast):
    async with open_store(settings.database_path) as store:
        await store.save_session("t1", "u1", "pots", "gates", {})
        c = Conversation(settings, store)
        assert "needs a Vast.ai or RunPod API key" in text(await c.act(Say(text="cloud")))
        keyed = settings.model_copy(update=vast.settings())
        await store.db.execute("DELETE FROM gate_results WHERE gate = 2")
        await store.db.commit()
        refused = await Conversation(keyed, store).act(Say(text="rent a gpu"))
        assert "the settings (a preset) come first" in text(refused) and not vast.requests


def use_fake(vast, monkeypatch):
    """Point the terminal's settings (read from the environment) at the fake Vast.ai."""
    monkeypatch.setenv("LORATRAIN_VAST_URL", vast.url)
    monkeypatch.setenv("LORATRAIN_VAST_API_KEY", vast.key)


def test_the_terminal_shows_offers_lists_and_tears_down_instances(cli, configured, vast, monkeypatch):
    use_fake(vast, monkeypatch)
    code, out, err = cli("cloud", "offers", "pots")
    assert code == 0, err
    # 20 minutes of set-up dominate this tiny run: the cheapest card per hour is the cheapest run
    assert out.startswith("1. RTX 3090 (24 GB) on Vast.ai — $0.25/hour, reliability 97%, Poland, PL: about 21 min")
    assert "plus ~20 min to set up), so about $0.09. Your cap per run is $10.00." in out
    code, out, _ = cli("cloud", "list")
    assert out.strip() == "No rented GPU is running."
    stray = vast.add("loratrain-old")
    code, _, err = cli("cloud", "teardown", stray)
    assert code == 2 and "add --provider" in err
    code, out, _ = cli("cloud", "teardown", stray, "--provider", "vast")
    assert code == 0 and f"Destroyed instance {stray}" in out and vast.destroyed == [stray]
    code, out, _ = cli("cloud", "teardown", stray, "--provider", "vast")
    assert f"Instance {stray} was already gone" in out


def test_teardown_all_destroys_every_recorded_instance_and_records_it(cli, settings, vast, monkeypatch):
    use_fake(vast, monkeypatch)
    ids = [vast.add("loratrain-a"), vast.add("loratrain-b")]

    async def record():
        async with open_store(settings.database_path) as store:
            for instance_id in ids:
                await store.add_instance("vast", instance_id, "pots", "r1", "RTX 4090", 0.45, 10.0, "elsewhere:1", None)

    asyncio.run(record())
    code, out, _ = cli("cloud", "list")
    assert out.count("RUNNING") == 2 and "Vast.ai" in out and "$0.45/hour" in out
    code, out, _ = cli("cloud", "teardown", "--all")
    assert code == 0 and out.count("Destroyed the RTX 4090") == 2 and sorted(vast.destroyed) == sorted(ids)
    code, out, _ = cli("cloud", "list", "--all")
    assert out.count("TERMINATED") == 2
    studio = (settings.grimoire / "studio.md").read_text()
    assert all(f"**Vast.ai {i}**" in studio for i in ids) and studio.count("TERMINATED") == 2
