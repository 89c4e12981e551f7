"""``huref audit SUSPECT -o report.html``: passive and active evidence in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from huref.cli.app import app, check_fail_on, invocation
from huref.cli.checks import check_probe_tokens, refuse_special_inputs
from huref.cli.console import console, styled
from huref.errors import UsageError


@app.command("audit")
def audit_cmd(
    suspect: Annotated[str, typer.Argument(help="The suspect checkpoint.")],
    out: Annotated[
        Path, typer.Option("-o", "--output", help="report.html to write (report.json beside it).")
    ],
    base: Annotated[
        list[str] | None,
        typer.Option(
            "--base", help="A candidate base: checkpoint, fingerprint file or registered name (repeatable)."
        ),
    ] = None,
    registry: Annotated[
        bool, typer.Option("--registry", help="Compare with every base in the registry.")
    ] = False,
    fpvec: Annotated[
        list[Path] | None,
        typer.Option("--fpvec", help="An FP-Vec vector file (repeatable, each with a --keys)."),
    ] = None,
    keys: Annotated[
        list[Path] | None, typer.Option("--keys", help="The key file of the matching --fpvec.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Probe tokens in robust mode (16..8192).")] = 512,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    no_pcs: Annotated[bool, typer.Option("--no-pcs", help="Skip the parameter cosine.")] = False,
    no_dogs: Annotated[bool, typer.Option("--no-dogs", help="Leave out the dog images.")] = False,
    fail_on: Annotated[
        str | None, typer.Option("--fail-on", help="Exit 1 when the overall verdict is this.")
    ] = None,
    adapter_base: Annotated[
        str | None,
        typer.Option("--adapter-base", help="Base of a PEFT adapter suspect (default: its config's)."),
    ] = None,
) -> None:
    """Write a self-contained HTML audit report and its JSON evidence."""
    from huref.invariants import Settings
    from huref.report.audit import run_audit
    from huref.scan.results import VERDICTS

    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{out}: the report name must end in .html")
    check_fail_on(fail_on, VERDICTS)
    vectors = list(fpvec or [])
    key_files = list(keys or [])
    if len(vectors) != len(key_files):
        raise UsageError("give one --keys for every --fpvec, in the same order")
    check_probe_tokens(n=n)
    refuse_special_inputs(suspect, base, vectors, key_files, adapter_base)
    settings = Settings(n=n, device=device)
    ev, html_path, json_path = run_audit(
        suspect,
        out,
        list(base or []),
        registry,
        list(zip(vectors, key_files, strict=True)),
        settings,
        argv=invocation(),
        with_pcs=not no_pcs,
        with_dogs=not no_dogs,
        adapter_base=adapter_base,
    )
    console(stderr=True).print(
        styled("verdict: ", (ev["verdict"]["verdict"], "bold"), f"; wrote {html_path} and {json_path}")
    )
    if fail_on and ev["verdict"]["verdict"] == fail_on:
        raise typer.Exit(1)
