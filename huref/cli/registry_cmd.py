"""``huref registry add | list | remove | import | mark-independent | unmark-independent``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from huref.cli.app import app
from huref.cli.checks import check_probe_tokens, is_model_reference, refuse_special_inputs
from huref.cli.console import console, styled

registry_app = typer.Typer(
    help="Registry of known bases, under $HUREF_HOME (default ~/.huref).", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")

FamilyOpt = Annotated[
    str | None,
    typer.Option(
        "--family",
        help="Family of the base; bases of different families are recorded as independent pairs (the Z null).",
    ),
]
ReplaceOpt = Annotated[bool, typer.Option("--replace", help="Replace a registered base of the same name.")]


def _err() -> Console:
    return console(stderr=True, highlight=False)


def _report_pairs(
    con: Console, name: str, pairs: list[tuple[str, float]], skipped: list[tuple[str, str]]
) -> None:
    for other, ics in pairs:
        con.print(f"  independent pair {name} / {other}: robust ICS {ics:.1f}")
    for other, why in skipped:
        con.print(styled("  ", ("no pair", "yellow"), f" {name} / {other}: {why}"))


@registry_app.command("add")
def add_cmd(
    source: Annotated[str, typer.Argument(help="Checkpoint (fingerprinted now) or huref fingerprint file.")],
    name: Annotated[str, typer.Option("--name", help="Name of the base in the registry.")],
    family: FamilyOpt = None,
    replace: ReplaceOpt = False,
    n: Annotated[
        int, typer.Option("--n", help="Probe tokens in robust mode (checkpoints only; 16..8192).")
    ] = 512,
    token_key: Annotated[
        str | None, typer.Option("--token-key", help="Secret key for probe-token selection.")
    ] = None,
) -> None:
    """Register a known base from a checkpoint or a fingerprint file."""
    from huref.errors import RegistryError
    from huref.invariants.settings import Settings
    from huref.invariants.tokens import DEFAULT_KEY
    from huref.registry.enroll import add_base, check_name
    from huref.registry.store import Store

    check_name(name)  # refuse bad requests before the registry is created
    check_probe_tokens(n=n)
    refuse_special_inputs(source)
    if not is_model_reference(source):  # a path here, or a hub repository id (owner/name[@rev])
        raise RegistryError(f"{source}: no such file or folder (nor a hub repository id owner/name)")
    settings = Settings(n=n, key=token_key.encode() if token_key else DEFAULT_KEY)
    with Store() as store:
        store.check_writable()  # before minutes of fingerprinting
        res = add_base(store, source, name, family, replace, settings)
        con = _err()
        b = res.base
        con.print(
            f"registered {b.name} ({b.architecture}, {b.n_layers} layers, family {b.family or '-'}) "
            f"fingerprint {b.fingerprint[:12]} in {store.home}"
        )
        _report_pairs(con, b.name, res.pairs, res.skipped)


@registry_app.command("import")
def import_cmd(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Folder of huref fingerprint files (searched recursively); each is named by its file stem."
        ),
    ],
    family: FamilyOpt = None,
    replace: ReplaceOpt = False,
) -> None:
    """Register every fingerprint file of a folder (all or nothing)."""
    from huref.errors import RegistryError
    from huref.registry.enroll import import_folder
    from huref.registry.store import Store

    if not folder.is_dir():
        raise RegistryError(f"{folder}: not a folder")
    with Store() as store:
        store.check_writable()
        results = import_folder(store, folder, family, replace)
        con = _err()
        for res in results:
            con.print(f"registered {res.base.name} (fingerprint {res.base.fingerprint[:12]})")
            _report_pairs(con, res.base.name, res.pairs, res.skipped)
        con.print(f"imported {len(results)} bases into {store.home}")


@registry_app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """List the registered bases, the independent pairs and the Z null they give."""
    from dataclasses import asdict

    from huref.invariants.calibration import BUILTIN_NULL
    from huref.registry.store import MIN_NULL_PAIRS, Store, huref_home

    home = huref_home()
    if not (home / "registry.sqlite").is_file():
        bases, pairs, null = [], [], None
    else:
        with Store(home) as store:
            bases, pairs, null = store.bases(), store.pairs(), store.null()
    used = null or BUILTIN_NULL
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "home": str(home),
                    "bases": [asdict(b) for b in bases],
                    "independent_pairs": [asdict(p) for p in pairs],
                    "null": {
                        "mean": used.mean,
                        "std": used.std,
                        "n_pairs": used.n_pairs,
                        "source": used.source,
                    },
                }
            )
        )
        return
    con = console(highlight=False)
    if not bases:
        con.print(f"no bases registered in {home}; add some with 'huref registry add MODEL --name NAME'")
        return
    t = Table("name", "family", "architecture", "layers", "fingerprint", "added", title=f"bases in {home}")
    for b in bases:
        t.add_row(
            b.name,
            b.family or "-",
            b.architecture or "-",
            str(b.n_layers or "-"),
            b.fingerprint[:12],
            b.added,
        )
    con.print(t)
    con.print(
        f"{len(pairs)} independent pairs"
        + ("" if null else f" (fewer than {MIN_NULL_PAIRS}: the built-in null is used)")
    )
    con.print(f"Z null: mean {used.mean:.2f}, sd {used.std:.2f} ({used.source})")


@registry_app.command("remove")
def remove_cmd(name: Annotated[str, typer.Argument(help="Name of the base to remove.")]) -> None:
    """Remove a base (and its independent pairs)."""
    from huref.registry.store import Store

    with Store(create=False) as store:
        store.check_writable()
        b = store.remove_base(name)
        _err().print(f"removed {b.name} from {store.home}")


@registry_app.command("mark-independent")
def mark_cmd(
    a: Annotated[str, typer.Argument(help="A registered base.")],
    b: Annotated[
        str, typer.Argument(help="Another registered base, known to be trained independently of A.")
    ],
) -> None:
    """Declare two bases independent: their robust ICS joins the Z-score null."""
    from huref.registry.enroll import mark_independent
    from huref.registry.store import Store

    with Store(create=False) as store:
        store.check_writable()
        ics = mark_independent(store, a, b)
        _err().print(f"independent pair {a} / {b}: robust ICS {ics:.1f} ({len(store.pairs())} pairs)")


@registry_app.command("unmark-independent")
def unmark_cmd(
    a: Annotated[str, typer.Argument(help="A registered base.")],
    b: Annotated[str, typer.Argument(help="Another registered base.")],
) -> None:
    """Forget that two bases are independent."""
    from huref.errors import RegistryError
    from huref.registry.store import Store

    with Store(create=False) as store:
        store.check_writable()
        if not store.remove_pair(a, b):
            raise RegistryError(f"{a} / {b} is not recorded as an independent pair")
        _err().print(f"removed the independent pair {a} / {b}")
