"""``loratrain cloud offers|train|list|teardown``: renting a GPU from the terminal.

Like every command here they only translate: the quotes, the run and the reaper decide. ``train`` shows the
estimate and asks before any money is spent (``--yes`` for scripts); the instance is destroyed at the end
whatever happens, and ``teardown`` is there for anything left over.
"""

from __future__ import annotations

import argparse
import json
import uuid

from core.cloud import ledger
from core.cloud.cost import about
from core.cloud.providers import PROVIDERS, CloudError, keyed, provider
from core.errors import UserError
from core.grimoire import Project
from core.settings import Settings
from core.store import open_store


def _providers(settings: Settings, name: str | None) -> list:
    """The named provider, or every provider that has an API key set."""
    if name:
        return [provider(settings, name)]
    names = keyed(settings)
    if not names:
        raise UserError("No cloud provider is set up: set LORATRAIN_VAST_API_KEY or LORATRAIN_RUNPOD_API_KEY.")
    return [provider(settings, n) for n in names]


async def cmd_offers(settings: Settings, args: argparse.Namespace) -> None:
    from core.cloud.quotes import quotes
    from core.cloud.run import cloud_plan

    project = Project.existing(settings, args.name)
    async with open_store(settings.database_path) as store:
        details = await cloud_plan(settings, project, store)
    found = await quotes(settings, project, details, _providers(settings, args.provider), args.gpu)
    if args.json:
        print(json.dumps([{**e.offer.model_dump(), "usd": e.usd, "within_cap": e.within_cap} for e in found]))
        return
    if not found:
        print("No offer fits this run right now (memory, disk or your --gpu filter); try again later or another "
              "provider.")  # fmt: skip
        return
    for number, quote in enumerate(found[: args.limit], 1):
        over = "" if quote.within_cap else " — over your cap"
        print(f"{number}. {quote.text()}{over}")


async def cmd_train(settings: Settings, args: argparse.Namespace) -> None:
    from core.cloud.quotes import quotes
    from core.cloud.run import cloud_plan, train_in_cloud
    from core.training.train_commands import confirmed, print_report

    project = Project.existing(settings, args.name)
    chosen = provider(settings, args.provider)
    async with open_store(settings.database_path) as store:
        details = await cloud_plan(settings, project, store)
        found = [q for q in await quotes(settings, project, details, [chosen], args.gpu)
                 if args.offer is None or q.offer.id == args.offer]  # fmt: skip
        affordable = [q for q in found if q.within_cap]
        if not affordable:
            cheapest = f" (the cheapest fitting one: {found[0].text()})" if found else ""
            raise UserError(f"No {chosen.title} offer fits this run within your cap{cheapest}. Try --gpu with another "
                            "card, the other provider, or raise LORATRAIN_CLOUD_MAX_USD.")  # fmt: skip
        quote = affordable[0]
        print(f"Cheapest fitting offer: {quote.text()}")
        print("The machine is destroyed as soon as your results are safe here, whatever happens.")
        if not args.yes and not confirmed(f"Rent it ({about(quote.usd)} in all)?", "Renting a GPU costs money"):
            print("Nothing was rented.")
            return

        result, grid = await train_in_cloud(settings, project, store, chosen, quote, print_report,
                                            run_id=f"{project.name}-cloud-{uuid.uuid4().hex[:8]}")  # fmt: skip
    print(result.message)
    if grid:
        print(f"Grid: {grid['grid']}" if grid.get("grid") else grid.get("note") or "")
        print("\n".join(grid.get("comparison", [])))
    if result.status == "failed":
        raise UserError("The cloud run did not finish; the reason is above. The rented machine was destroyed.")
    if result.status == "finished":
        print(f"When you have chosen a weight: loratrain register {project.name} --weight W")


async def cmd_list(settings: Settings, args: argparse.Namespace) -> None:
    async with open_store(settings.database_path) as store:
        found = await store.instances(None if args.all else "RUNNING")
    if not found:
        print("No rented GPU is running." if not args.all else "No GPU was ever rented from here.")
        return
    for instance in found:
        print(ledger.line(instance).removeprefix("- ").replace("**", ""))


async def cmd_teardown(settings: Settings, args: argparse.Namespace) -> None:
    from core.cloud.reaper import destroy

    if not args.all and not args.id:
        raise UserError("Say which instance to destroy (its id, from `loratrain cloud list`) or --all.")
    async with open_store(settings.database_path) as store:
        running = await store.instances("RUNNING")
        chosen = running if args.all else [i for i in running if i["id"] == args.id]
        if not chosen and args.id:
            if not args.provider:
                raise UserError(f"Instance {args.id} is not in loratrain's record; add --provider vast|runpod to "
                                "destroy it anyway.")  # fmt: skip
            gone = not provider(settings, args.provider).destroy(args.id)
            print(f"Instance {args.id} was already gone." if gone else f"Destroyed instance {args.id}.")
            return

        async def tell(_: dict, text: str) -> None:
            print(text)

        failed = [i for i in chosen if not await destroy(settings, store, provider(settings, i["provider"]), i,
                                                         "you asked", tell)]  # fmt: skip
    if not chosen:
        print("No rented GPU is running; nothing to destroy.")
    if failed:
        raise CloudError(f"{len(failed)} instance(s) could not be destroyed; try again, or use the provider's console.")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``cloud`` and its subcommands to the CLI."""
    cloud = sub.add_parser("cloud", help="rent a cloud GPU (Vast.ai, RunPod), train there, and tear it down")
    more = cloud.add_subparsers(dest="cloud_command", required=True, metavar="ACTION")

    p = more.add_parser("offers", help="cards that fit a project's run, with what the run would cost on each")
    p.add_argument("name", help="project name (its settings decide the memory and disk needed)")
    p.add_argument("--provider", choices=PROVIDERS, help="only this provider (default: every one with a key)")
    p.add_argument("--gpu", help="only cards whose name contains this, e.g. 4090 or A100")
    p.add_argument("--limit", type=int, default=10, help="how many to show (default 10)")
    p.add_argument("--json", action="store_true", help="print the offers as JSON")
    p.set_defaults(run=cmd_offers)

    p = more.add_parser("train", help="rent the cheapest fitting card, train there, bring results home, destroy it")
    p.add_argument("name", help="project name")
    p.add_argument("--provider", choices=PROVIDERS, required=True, help="where to rent")
    p.add_argument("--gpu", help="only cards whose name contains this, e.g. 4090")
    p.add_argument("--offer", help="rent this offer id (from `cloud offers --json`) instead of the cheapest")
    p.add_argument("--yes", action="store_true", help="rent without asking (for scripts)")
    p.set_defaults(run=cmd_train)

    p = more.add_parser("list", help="rented GPUs with their price, status and cost so far")
    p.add_argument("--all", action="store_true", help="include destroyed ones")
    p.set_defaults(run=cmd_list)

    p = more.add_parser("teardown", help="destroy a rented GPU now (or every running one with --all)")
    p.add_argument("id", nargs="?", help="instance id, from `loratrain cloud list`")
    p.add_argument("--all", action="store_true", help="destroy every running instance loratrain rented")
    p.add_argument("--provider", choices=PROVIDERS, help="for an instance loratrain has no record of")
    p.set_defaults(run=cmd_teardown)
