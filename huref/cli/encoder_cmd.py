"""``huref encoder train | info``: reproduce and inspect the dog encoder's weights."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from huref.cli.app import app
from huref.cli.checks import check_range, refuse_special_inputs
from huref.cli.console import console, styled
from huref.errors import UsageError

encoder_app = typer.Typer(
    help="Train and inspect the dog encoder (canonical stack -> Gaussian vector).", no_args_is_help=True
)
app.add_typer(encoder_app, name="encoder")

MAX_SEED = 2**64 - 1  # torch.manual_seed's range
# a recipe written on a machine with up to 64 cores can be replayed anywhere; more threads than
# that, or than this machine's cores, only oversubscribe it
MAX_THREADS = max(64, os.cpu_count() or 1)
# the shipped recipe is 400 steps, 16384 calibration and 2000 held-out stacks; far beyond that is a typo
MAX_STEPS = 100_000
MAX_CALIBRATION_MODELS = 2**18
MAX_HELDOUT_MODELS = 100_000


@encoder_app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option("-o", "--output", help="Weights file to write (.safetensors).")],
    seed: Annotated[
        int | None, typer.Option("--seed", help="Data and initialisation seed (default: the shipped one).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Training steps (default: the shipped recipe).")
    ] = None,
    threads: Annotated[
        int, typer.Option("--threads", help="Torch threads of the trainer (results depend on it).")
    ] = 1,
    workers: Annotated[
        int, typer.Option("--workers", help="Helper processes generating data (0: none).")
    ] = 1,
    calib_models: Annotated[
        int | None, typer.Option("--calibration-models", help="Fresh stacks for the final calibration.")
    ] = None,
    heldout_models: Annotated[
        int | None, typer.Option("--heldout-models", help="Held-out stacks for the Gaussianity metrics.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
) -> None:
    """Train the encoder on synthetic stacks from a seed (CPU, deterministic) and write it."""
    from huref.checkpoint.hashing import sha256_file
    from huref.checkpoint.outputs import check_output_file
    from huref.encoder.train import TrainConfig, train
    from huref.encoder.weights import SHIPPED_SHA256, is_encoder_file, save_encoder, shipped_path

    if out.suffix != ".safetensors":
        raise UsageError(f"{out}: the weights file name must end in .safetensors")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: folder {out.parent} does not exist")
    # --force replaces an encoder trained earlier, never another file nor the shipped weights
    if out.resolve() == shipped_path().resolve():
        raise UsageError(f"{out} is the shipped encoder, which every dog depends on: choose another name")
    check_output_file(out, replaceable=is_encoder_file, kind="huref encoder file")
    cfg = TrainConfig()
    changes: dict[str, int] = {"threads": threads, "workers": workers}
    for name, value in (
        ("seed", seed),
        ("steps", steps),
        ("calib_models", calib_models),
        ("heldout_models", heldout_models),
    ):
        if value is not None:
            changes[name] = value
    if threads < 1 or workers < 0 or changes.get("steps", 1) < 1:
        raise UsageError("--threads and --steps must be at least 1, --workers at least 0")
    if threads > MAX_THREADS or workers > MAX_THREADS:
        raise UsageError(
            f"--threads and --workers must be at most {MAX_THREADS}, got {threads} and {workers}"
        )
    check_range("--steps", changes.get("steps", 1), 1, MAX_STEPS)
    check_range(
        "--calibration-models", changes.get("calib_models", cfg.calib_models), 1024, MAX_CALIBRATION_MODELS
    )
    check_range("--heldout-models", changes.get("heldout_models", cfg.heldout_models), 16, MAX_HELDOUT_MODELS)
    if not 0 <= changes.get("seed", 0) <= MAX_SEED:
        raise UsageError(f"--seed must be in 0..{MAX_SEED} (2**64 - 1), got {seed}")
    cfg = replace(cfg, **changes)
    con = console(stderr=True)

    from rich.progress import Progress

    with Progress(console=con, transient=True) as bar:
        task = bar.add_task("training", total=cfg.steps)

        def progress(step: int, rec: dict[str, float]) -> None:
            bar.update(task, completed=step + 1, description=f"training (loss {rec['loss']:.3f})")

        model, metrics = train(cfg, progress)
    save_encoder(model, out, asdict(cfg), metrics)
    digest = sha256_file(out)
    h = metrics["heldout"]
    con.print(
        f"wrote {out} in {metrics['timing']['train_seconds'] + metrics['timing']['calibration_seconds']:.0f} s "
        f"(training {metrics['timing']['train_seconds']:.0f} s)"
    )
    con.print(
        f"held-out z: mean {h['mean_min']:.3f}..{h['mean_max']:.3f}, std {h['std_min']:.3f}..{h['std_max']:.3f}, "
        f"KS p {h['ks_pvalue']:.3g}"
    )
    same = "identical to" if digest == SHIPPED_SHA256 else "differs from"
    con.print(f"SHA-256 {digest} ({same} the shipped weights)")


@encoder_app.command("info")
def info_cmd(
    path: Annotated[Path | None, typer.Argument(help="Weights file (default: the shipped one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Recipe, metrics and SHA-256 of an encoder file; the shipped file is hash-checked."""
    from huref.checkpoint.hashing import sha256_file
    from huref.encoder.weights import SHIPPED_SHA256, load_numpy_encoder, read_metadata, shipped_path

    target = path or shipped_path()
    refuse_special_inputs(target)
    load_numpy_encoder(path)  # refuses a tampered shipped file or weights that do not fit
    meta = read_metadata(target)
    digest = sha256_file(target)
    doc = {"path": str(target), "sha256": digest, "shipped": digest == SHIPPED_SHA256, **meta}
    if as_json:
        typer.echo(json.dumps(doc, allow_nan=False))  # read_metadata refused non-finite numbers
        return
    con = console()
    con.print(styled((str(target), "bold"), f"  sha256 {digest}{'  (shipped)' if doc['shipped'] else ''}"))
    # files trained elsewhere may lack parts of the recipe or the metrics: print what there is
    cfg = meta["config"]
    recipe = [
        text
        for text, keys in (
            ("seed {seed}", ("seed",)),
            ("{steps} steps", ("steps",)),
            ("batch {families}x{siblings}x2 views", ("families", "siblings")),
            ("width {width}", ("width",)),
            ("{threads} thread(s)", ("threads",)),
        )
        if all(_plain_value(cfg.get(k)) for k in keys)
    ]
    con.print(", ".join(t.format(**cfg) for t in recipe) if recipe else "recipe: not recorded")
    h = meta["metrics"].get("heldout")
    numbers = ("n", "mean_min", "mean_max", "std_min", "std_max", "ks_statistic", "ks_pvalue")
    if isinstance(h, dict) and all(_number(h.get(k)) for k in numbers):
        con.print(
            f"held-out ({h['n']} stacks): mean {h['mean_min']:.3f}..{h['mean_max']:.3f}, "
            f"std {h['std_min']:.3f}..{h['std_max']:.3f}, KS D {h['ks_statistic']:.4f} p {h['ks_pvalue']:.3g}"
        )
    else:
        con.print("held-out metrics: not recorded")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain_value(value: object) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)
