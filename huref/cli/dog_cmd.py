"""``huref dog``: dog images of models or fingerprint files, alone or side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from huref.cli.app import app
from huref.cli.checks import refuse_special_inputs
from huref.cli.console import console
from huref.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from huref.invariants.fingerprint import Fingerprint

MAX_SIZE = 4096  # --size: pixels per side (a 4096 x 4096 RGB image is 48 MiB)
MAX_CELL = 2048  # --cell: pixels per side of one sheet thumbnail


def _png_target(path: Path, flag: str, models: list[str]) -> Path:
    from huref.checkpoint.outputs import check_output_file

    if path.suffix.lower() != ".png":
        raise UsageError(f"{flag} {path}: the image file name must end in .png")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {path.parent} does not exist")
    return check_output_file(path, models, flag=flag)  # a folder, or inside a model folder read


@app.command("dog")
def dog_cmd(
    models: Annotated[list[str], typer.Argument(help="Checkpoints or fingerprint files (.safetensors).")],
    out: Annotated[Path | None, typer.Option("-o", "--output", help="PNG of the dog (one model).")] = None,
    sheet: Annotated[
        Path | None, typer.Option("--sheet", help="PNG contact sheet of every model's dog.")
    ] = None,
    renderer: Annotated[str, typer.Option("--renderer", help="sketch (built in) or stylegan2.")] = "sketch",
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="stylegan2: generator .pkl or converted .safetensors.")
    ] = None,
    encoder: Annotated[
        Path | None,
        typer.Option("--encoder", help="Encoder weights (default: the shipped, hash-checked file)."),
    ] = None,
    size: Annotated[
        int, typer.Option("--size", help=f"Pixels per side of -o's image (16..{MAX_SIZE}).")
    ] = 512,
    columns: Annotated[
        int | None, typer.Option("--columns", help="Sheet columns, at least 1 (default: about square).")
    ] = None,
    cell: Annotated[
        int, typer.Option("--cell", help=f"Sheet thumbnail size in pixels (16..{MAX_CELL}).")
    ] = 192,
    labels: Annotated[
        list[str] | None,
        typer.Option("--label", help="Sheet caption per model, in order (default: model name)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the dog vector(s) as JSON.")] = False,
) -> None:
    """Render the dog image of each model: derived models look like their base."""
    opts = _check_dog_args(
        models, out, sheet, renderer, checkpoint, encoder, size, columns, cell, labels, as_json
    )
    fps, zs = _dog_vectors(models, encoder)
    _write_dogs(models, fps, zs, out, sheet, renderer, size, columns, cell, labels, opts)
    if as_json:
        _print_json(models, fps, zs, out, sheet, renderer)
    else:
        con = console(stderr=True)
        for target in (out, sheet):
            if target is not None:
                con.print(f"wrote {target}")


def _check_dog_args(
    models: list[str],
    out: Path | None,
    sheet: Path | None,
    renderer: str,
    checkpoint: Path | None,
    encoder: Path | None,
    size: int,
    columns: int | None,
    cell: int,
    labels: list[str] | None,
    as_json: bool,
) -> dict[str, object]:
    """Check stage: every check that needs no computation, so no work is wasted on a bad command
    line (output names, sizes, labels, special files), then the renderer is built (a bad renderer
    or generator file fails here, before fingerprinting). One :class:`UsageError` line each;
    nothing is written. Returns the renderer's options."""
    from huref.dogs import get_cached_renderer

    if out is None and sheet is None and not as_json:
        raise UsageError("nothing to do: give -o DOG.png, --sheet SHEET.png or --json")
    if out is not None and len(models) > 1:
        raise UsageError("-o writes one model's dog; use --sheet for several models")
    if out is not None:
        _png_target(out, "-o", models)
    if sheet is not None:
        _png_target(sheet, "--sheet", models)
    if out is not None and sheet is not None and out.resolve() == sheet.resolve():
        raise UsageError(f"-o and --sheet name the same file {out}")
    if labels and len(labels) != len(models):
        raise UsageError(f"{len(labels)} --label values for {len(models)} models")
    if not (16 <= size <= MAX_SIZE and 16 <= cell <= MAX_CELL):
        raise UsageError(
            f"--size must be 16..{MAX_SIZE} and --cell 16..{MAX_CELL} pixels, got {size} and {cell}"
        )
    if columns is not None and columns < 1:
        raise UsageError(f"--columns must be at least 1, got {columns}")
    refuse_special_inputs(models, checkpoint, encoder)
    opts: dict[str, object] = {}
    if renderer == "stylegan2" and checkpoint is None:
        raise UsageError(
            "--renderer stylegan2 needs --checkpoint FILE (an official stylegan2-ada .pkl, e.g. AFHQ-dog, "
            "or its converted .safetensors)"
        )
    if checkpoint is not None:
        if renderer != "stylegan2":
            raise UsageError("--checkpoint is for --renderer stylegan2")
        opts["checkpoint"] = str(checkpoint)
    get_cached_renderer(renderer, **opts)  # bad renderer or generator file: fail before fingerprinting
    return opts


def _dog_vectors(models: list[str], encoder: Path | None) -> tuple[list[Fingerprint], list[np.ndarray]]:
    """The fingerprints of the models (refusing inputs fingerprinted with different settings) and
    their dog vectors; a warning on stderr for a model whose probe-token count lies outside the
    encoder's training range."""
    from huref.dogs import dog_vector, encoder_n_range, fingerprints_of

    fps = fingerprints_of(models)
    zs = [dog_vector(fp, encoder) for fp in fps]
    lo, hi = encoder_n_range(encoder)
    for m, fp in zip(models, fps, strict=True):
        n = fp.robust.n if fp.robust is not None else 0
        if not lo <= n <= hi:
            console(stderr=True).print(
                f"huref: warning: {m} has {n} probe tokens, outside the {lo}..{hi} the encoder was "
                "trained on: its dog is less reliable",
                highlight=False,
            )
    return fps, zs


def _write_dogs(
    models: list[str],
    fps: list[Fingerprint],
    zs: list[np.ndarray],
    out: Path | None,
    sheet: Path | None,
    renderer: str,
    size: int,
    columns: int | None,
    cell: int,
    labels: list[str] | None,
    opts: dict[str, object],
) -> None:
    """Render -o's image and the --sheet, each written atomically."""
    from huref.dogs import dog_sheet, render_dog
    from huref.render.sheet import save_png_atomic

    if out is not None:
        save_png_atomic(render_dog(zs[0], renderer, size=size, **opts), out)
    if sheet is not None:
        names = labels or [
            fp.name if fp.name != "?" else Path(m).name for fp, m in zip(fps, models, strict=True)
        ]
        caption = [f"huref dog images: renderer {renderer}; derived models look like their base"]
        img = dog_sheet(list(zip(names, zs, strict=True)), renderer, columns, cell, caption, **opts)
        save_png_atomic(img, sheet)


def _print_json(
    models: list[str],
    fps: list[Fingerprint],
    zs: list[np.ndarray],
    out: Path | None,
    sheet: Path | None,
    renderer: str,
) -> None:
    """--json: one dog's object, or every dog with the sheet's path."""
    dogs = [
        {
            "model": m,
            "name": fp.name,
            "z": [float(v) for v in z],
            "renderer": renderer,
            "path": str(out) if out is not None else None,
        }
        for m, fp, z in zip(models, fps, zs, strict=True)
    ]
    if len(dogs) == 1 and sheet is None:
        typer.echo(json.dumps(dogs[0]))
    else:
        typer.echo(json.dumps({"dogs": dogs, "renderer": renderer, "sheet": str(sheet) if sheet else None}))


@app.command("convert-stylegan2")
def convert_stylegan2_cmd(
    pkl: Annotated[Path, typer.Argument(help="An official stylegan2-ada-pytorch generator .pkl.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="The .safetensors file to write.")],
    key: Annotated[str, typer.Option("--key", help="Which network of the pickle.")] = "G_ema",
) -> None:
    """Convert an official StyleGAN2 pickle to safetensors, without running any code from it."""
    from huref.render.stylegan2.convert import convert_pickle_to_safetensors

    if out.suffix != ".safetensors":
        raise UsageError(f"{out}: the output name must end in .safetensors")
    refuse_special_inputs(pkl)
    if out.exists():
        raise UsageError(f"{out} already exists")
    convert_pickle_to_safetensors(pkl, out, key)
    console(stderr=True).print(f"wrote {out}")
