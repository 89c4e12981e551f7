"""``huref fingerprint``, ``huref compare`` and ``huref zoo build``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from huref.cli.app import app, check_fail_on
from huref.cli.checks import MAX_WORKERS, check_probe_tokens, check_range, refuse_special_inputs
from huref.cli.console import console, styled
from huref.errors import UsageError

if TYPE_CHECKING:
    from huref.checkpoint import Checkpoint
    from huref.invariants import Fingerprint
    from huref.invariants.calibration import NullModel
    from huref.invariants.compare import Comparison
    from huref.invariants.settings import Settings

zoo_app = typer.Typer(
    help="Build the CPU model zoo used by tests, benchmarks and the demo.", no_args_is_help=True
)
app.add_typer(zoo_app, name="zoo")

NOpt = Annotated[int, typer.Option("--n", help="Probe tokens in robust mode (16..8192).")]
KeyOpt = Annotated[
    str | None,
    typer.Option("--token-key", help="Secret key for probe-token selection (both sides must use the same)."),
]
DevOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (GPU when present).")]
AdapterBaseOpt = Annotated[
    str | None,
    typer.Option("--adapter-base", help="Base of a PEFT adapter argument (default: its config's)."),
]
FreqOpt = Annotated[
    Path | None,
    typer.Option(
        "--frequency-list", help="Paper mode: 'token<TAB>count' lines; the n least frequent are used."
    ),
]


def _settings(n: int, paper_n: int, key: str | None, device: str, freq: Path | None, modes: str) -> Settings:
    from huref.invariants.settings import Settings
    from huref.invariants.tokens import DEFAULT_KEY

    check_probe_tokens(n=n, paper_n=paper_n)
    refuse_special_inputs(freq)
    if device != "cpu":  # the CPU always exists; checking another device needs torch
        from huref.device import resolve_device

        resolve_device(device)  # a device that does not exist is refused before any work
    wanted = tuple(m.strip() for m in modes.split(",") if m.strip())
    bad = [m for m in wanted if m not in ("robust", "paper")]
    if bad or not wanted:
        raise UsageError(f"--modes takes robust and/or paper, got {modes!r}")
    return Settings(
        n=n,
        paper_n=paper_n,
        modes=wanted,
        key=key.encode() if key else DEFAULT_KEY,
        device=device,
        frequency_list=freq,
    )


@app.command("fingerprint")
def fingerprint_cmd(
    model: Annotated[str, typer.Argument(help="Checkpoint to fingerprint.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Fingerprint file to write (.safetensors).")],
    n: NOpt = 512,
    paper_n: Annotated[int, typer.Option("--paper-n", help="Probe tokens in paper mode.")] = 4096,
    modes: Annotated[str, typer.Option("--modes", help="robust,paper")] = "robust,paper",
    token_key: KeyOpt = None,
    device: DevOpt = "cpu",
    frequency_list: FreqOpt = None,
    adapter_base: Annotated[
        str | None,
        typer.Option("--adapter-base", "--base", help="Base of a PEFT adapter (default: its config's)."),
    ] = None,
) -> None:
    """Extract the invariants of one checkpoint into a fingerprint file."""
    from huref.checkpoint import open_checkpoint
    from huref.invariants import fingerprint_model, save_fingerprint
    from huref.invariants.fpfile import check_fingerprint_target

    if out.suffix != ".safetensors":
        raise UsageError(f"{out}: the fingerprint file name must end in .safetensors")
    refuse_special_inputs(model, adapter_base)
    check_fingerprint_target(out, [model])
    settings = _settings(n, paper_n, token_key, device, frequency_list, modes)
    fp = fingerprint_model(model if adapter_base is None else open_checkpoint(model, adapter_base), settings)
    save_fingerprint(fp, out)
    console(stderr=True).print(
        f"wrote {out} ({fp.meta['architecture']['n_layers']} layers, "
        f"n={fp.robust.n if fp.robust else '-'} robust, {fp.paper.n if fp.paper else '-'} paper) "
        f"in {fp.timing['total_s']:.1f} s"
    )


@app.command("compare")
def compare_cmd(
    a: Annotated[str, typer.Argument(help="Checkpoint or fingerprint file.")],
    b: Annotated[str, typer.Argument(help="Checkpoint or fingerprint file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    n: NOpt = 512,
    paper_n: Annotated[int, typer.Option("--paper-n")] = 4096,
    token_key: KeyOpt = None,
    device: DevOpt = "cpu",
    frequency_list: FreqOpt = None,
    no_pcs: Annotated[
        bool, typer.Option("--no-pcs", help="Skip the parameter cosine (reads all weights).")
    ] = False,
    registry: Annotated[
        bool,
        typer.Option("--registry/--no-registry", help="Use the registry's independent pairs as the Z null."),
    ] = True,
    fail_on: Annotated[
        str | None, typer.Option("--fail-on", help="Exit 1 when the verdict is this (e.g. derived).")
    ] = None,
    adapter_base: AdapterBaseOpt = None,
) -> None:
    """Compare two models: robust and paper ICS, PCS, Z, p-value, layer alignment, verdict."""
    from huref.invariants import compare_paths
    from huref.invariants.calibration import format_log10_p
    from huref.invariants.compare import expert_summary, match_summary
    from huref.invariants.statistics import text_lines
    from huref.scan.results import VERDICTS

    check_fail_on(fail_on, VERDICTS)
    refuse_special_inputs(a, b, adapter_base)
    settings = _settings(n, paper_n, token_key, device, frequency_list, "robust,paper")
    null = _registry_null() if registry else None
    if adapter_base is None:
        c = compare_paths(a, b, settings, null, with_pcs=not no_pcs)
    else:
        c = _compare_adapter(a, b, adapter_base, settings, null, with_pcs=not no_pcs)
    if as_json:
        typer.echo(json.dumps(c.to_json()))
    else:
        con = console()
        f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
        con.print(
            styled(
                (str(c.a), "bold"), " vs ", (str(c.b), "bold"), f"  ({c.shared_tokens} shared probe tokens)"
            )
        )
        con.print(f"robust ICS {f(c.ics)}   paper ICS {f(c.ics_paper)}   PCS {f(c.pcs)}")
        con.print(f"Z {f(c.z)} (null: {c.null['source']})   p {format_log10_p(c.log10_p_value)}")
        con.print("alignment " + ", ".join(f"{x}->{y} ({s:.1f})" for x, y, s in c.layer_alignment))
        if c.expert_origin:
            con.print("experts from the dense FFN (p < 1e-6): " + expert_summary(c.expert_origin))
        if c.expert_matches:
            con.print("experts matched: " + match_summary(c.expert_matches))
        for line in text_lines(c.stats):  # the registered statistics (huref.invariants.statistics)
            con.print(line)
        con.print(styled("verdict: ", (str(c.verdict), "bold"), f"  ({c.rule})"))
    if fail_on and c.verdict == fail_on:
        raise typer.Exit(1)


def _compare_adapter(
    a: str, b: str, adapter_base: str, settings: Settings, null: NullModel | None, with_pcs: bool
) -> Comparison:
    """``compare_paths`` with ``adapter_base`` as the base of whichever of A and B is an adapter."""
    from huref.arch import load_model
    from huref.checkpoint import open_checkpoint
    from huref.checkpoint.adapter import is_adapter_folder
    from huref.invariants import compare_fingerprints, fingerprint_model
    from huref.invariants.compare import load_any

    if not (is_adapter_folder(a) or is_adapter_folder(b)):
        raise UsageError("--adapter-base: neither model is a PEFT adapter folder")
    loaded: list[tuple[Fingerprint, Checkpoint | None]] = []
    for p in (a, b):
        if is_adapter_folder(p):
            m = load_model(open_checkpoint(p, adapter_base))
            loaded.append((fingerprint_model(m, settings), m.ckpt))
        else:
            loaded.append(load_any(p, settings))
    (fa, ca), (fb, cb) = loaded
    return compare_fingerprints(fa, fb, null, ca if with_pcs else None, cb if with_pcs else None)


def _registry_null() -> NullModel | None:
    try:
        from huref.registry.store import default_null
    except ImportError:
        return None
    return default_null()


@zoo_app.command("build")
def zoo_build_cmd(
    dest: Annotated[
        Path, typer.Argument(help="Folder to build the zoo in (reused when its recipe matches).")
    ],
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            help="tiny (tests, 3-5 min), demo, or realistic (bases trained to a plateau, derivatives calibrated to real pairs; 10-35 min).",
        ),
    ] = "tiny",
    stories: Annotated[
        Path | None,
        typer.Option(
            "--stories", help="stories260K.bin to import (default: ../shared/models/stories260K if present)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help=f"Worker processes (1..{MAX_WORKERS}).")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a matching zoo exists.")] = False,
) -> None:
    """Build a zoo of bases, derivatives and function-preserving attacks with a zoo.json manifest."""
    # checked here rather than in build_zoo: the zoo's recipe hash covers huref/zoo's source code
    check_range("--workers", workers, 1, MAX_WORKERS)
    refuse_special_inputs(stories)
    from huref.zoo.build import build_zoo, default_stories

    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder; a zoo is built in a new or empty folder")
    path = build_zoo(dest, preset, stories or default_stories(), workers, force)
    doc = json.loads((path / "zoo.json").read_text())
    console(stderr=True).print(
        f"zoo at {path}: {len(doc['models'])} models (built in {doc['build_seconds']} s)"
    )


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Where the demo writes its reports.")] = Path(
        "reports/demo"
    ),
    zoo: Annotated[
        Path, typer.Option("--zoo", help="Where the demo zoo is built (reused when unchanged).")
    ] = Path(".zoo/demo"),
    preset: Annotated[str, typer.Option("--preset", help="Zoo preset.")] = "demo",
    workers: Annotated[int, typer.Option("--workers", help=f"Worker processes (1..{MAX_WORKERS}).")] = 2,
) -> None:
    """Build the demo zoo, register its bases, stamp an FP-Vec fingerprint, scan and audit."""
    from huref.demo import DemoConfig, run_demo

    check_range("--workers", workers, 1, MAX_WORKERS)
    summary = run_demo(DemoConfig(out=out, zoo=zoo, preset=preset, workers=workers))
    if not summary["ok"]:
        raise typer.Exit(1)
