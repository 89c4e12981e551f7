"""``huref scan ZOO -o OUT_DIR``: every checkpoint of a zoo against the registry of known bases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from huref.cli.app import app, check_fail_on
from huref.cli.console import console

FAIL_ON = ("derived", "inconclusive", "error")


@app.command("scan")
def scan_cmd(
    zoo: Annotated[
        Path, typer.Argument(help="Folder of checkpoints (HF folders, HF cache, GGUF, llama2.c).")
    ],
    out: Annotated[Path, typer.Option("-o", "--output", help="Folder for results.json and index.html.")],
    executor: Annotated[
        str, typer.Option("--executor", help="local (processes on this machine) or dask.")
    ] = "local",
    workers: Annotated[
        int | None, typer.Option("--workers", help="Local worker processes (default: CPU cores, at most 4).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (with --executor dask).")
    ] = None,
    fail_on: Annotated[
        str | None,
        typer.Option("--fail-on", help="Exit 1 if any model is derived (or inconclusive, or error)."),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Probe tokens in robust mode.")] = 512,
    token_key: Annotated[
        str | None, typer.Option("--token-key", help="Probe-token key the bases were registered with.")
    ] = None,
    keys: Annotated[
        list[Path] | None,
        typer.Option(
            "--keys", help="FP-Vec key file: verify every model with it (repeatable); adds 'fpvec' FSRs."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    exhaustive: Annotated[
        bool,
        typer.Option(
            "--exhaustive", help="Compare with every base (no sketch rule-outs; slower on large registries)."
        ),
    ] = False,
) -> None:
    """Fingerprint every model of a zoo once, compare it with every registered base, report."""
    from huref.errors import UsageError
    from huref.paths import shown
    from huref.scan import ScanConfig, run_scan, scan_settings
    from huref.scan.runner import default_workers

    check_fail_on(fail_on, FAIL_ON)
    if n < 16:
        raise UsageError("--n must be at least 16")
    if workers is not None and executor != "local":
        raise UsageError("--workers is for --executor local (a Dask cluster sizes itself)")
    cfg = ScanConfig(
        zoo=zoo,
        out_dir=out,
        executor=executor,
        workers=default_workers() if workers is None else workers,
        scheduler=scheduler,
        settings=scan_settings(n, token_key.encode() if token_key else None),
        progress=progress,
        fpvec_keys=tuple(keys or ()),
        exhaustive=exhaustive,
    )
    report = run_scan(cfg)
    s = report.stats
    models = report.models
    verdicts = {
        v: sum(1 for m in models if m["verdict"] == v) for v in ("derived", "inconclusive", "independent")
    }
    con = console(stderr=True, highlight=False)
    con.print(
        f"{s['candidates']} models: {verdicts['derived']} derived, {verdicts['inconclusive']} inconclusive, "
        f"{verdicts['independent']} independent, {s['errors']} not scanned "
        f"({s['fingerprinted']} fingerprinted, {s['fingerprint_cached']} from cached fingerprints, {s['from_cache']} cached) "
        f"in {s['seconds']:.1f} s -> {shown(out / 'index.html')}"
    )
    if fail_on == "error":
        hit = [m["name"] for m in models if m["error"]]
    elif fail_on:
        hit = [m["name"] for m in models if m["verdict"] == fail_on]
    else:
        hit = []
    if hit:
        con.print(
            f"--fail-on {fail_on}: {len(hit)} models ({', '.join(hit[:5])}{', ...' if len(hit) > 5 else ''})"
        )
        raise typer.Exit(1)
