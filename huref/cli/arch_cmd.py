"""``huref arch ls | validate``: the architecture families, and a config or checkpoint against one."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from huref.cli.app import app
from huref.cli.checks import refuse_special_inputs
from huref.cli.console import console, styled

arch_app = typer.Typer(
    help="Architecture families: list them, check a config or checkpoint.", no_args_is_help=True
)
app.add_typer(arch_app, name="arch")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@arch_app.command("ls")
def ls_cmd(as_json: JsonOpt = False) -> None:
    """Every family: its model_types, the GGUF architectures read as it, the roles it provides."""
    from huref.arch.validate import family_rows

    rows = family_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    con = console()
    for r in rows:
        gguf = f"; GGUF {', '.join(r['gguf'])}" if r["gguf"] else ""
        con.print(styled((r["name"], "bold"), f": model_types {', '.join(r['model_types'])}{gguf}"))
        con.print(f"  roles {' '.join(r['roles'])}")


@arch_app.command("validate")
def validate_cmd(
    path: Annotated[str, typer.Argument(help="A config.json, or a checkpoint (model folder, file).")],
    as_json: JsonOpt = False,
) -> None:
    """Resolve the architecture and check the tensors both ways: every required role present,
    no unclaimed tensor (a config alone: the roles its family declares for it)."""
    from huref.arch.validate import validate

    refuse_special_inputs(path)
    result = validate(path)
    doc = result.summary()
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    con = console()
    con.print(styled((doc["path"], "bold"), f"  family {doc['family']}"))
    for k, v in {**doc["config"], **doc["extra"]}.items():
        if k == "family":
            continue
        con.print(f"  {k} = {v}")
    if result.checkpoint:
        con.print(
            styled(
                ("ok", "green"),
                f": {doc['tensors']} tensors checked both ways ({doc['buffers']} buffers, "
                f"{len(doc['ignored'])} ignored); every required role present",
            )
        )
    else:
        con.print(
            styled(
                ("ok", "green"),
                f": the definition declares {doc['tensors']} tensors with every required role "
                "(a config alone: no tensors to check)",
            )
        )
