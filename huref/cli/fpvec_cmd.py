"""``huref fpvec make-keys | train | extract | stamp | verify | harm``: thin shells over huref.fpvec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from huref.cli.app import app
from huref.cli.checks import local_model_folder, refuse_special_inputs
from huref.cli.console import console

fpvec_app = typer.Typer(
    help="Active fingerprints (FP-Vec): train once, stamp any number of derived models on a CPU, verify.",
    no_args_is_help=True,
)
app.add_typer(fpvec_app, name="fpvec")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
DevOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (GPU when present).")]


def _err() -> Console:
    return console(stderr=True)


@fpvec_app.command("make-keys")
def make_keys_cmd(
    out: Annotated[
        Path, typer.Option("-o", "--output", help="Key file to write (JSON, mode 0600). Keep it secret.")
    ],
    n: Annotated[int, typer.Option("--n", help="Number of keys (1..200).")] = 10,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Reproducible keys (tests only; default: OS randomness).")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="The answer every key maps to (default: ハリネズミ; 4 words with --vocab)."
        ),
    ] = None,
    vocab: Annotated[
        Path | None,
        typer.Option(
            "--vocab",
            help="Model folder whose tokenizer's own words make the keys (for a tokenizer that cannot "
            "spell the default snippets, e.g. a word-level vocabulary).",
        ),
    ] = None,
) -> None:
    """Write secret Instructional-Fingerprinting style keys and their shared target."""
    from huref.fpvec.keys import check_key_request, make_keys, save_keys, vocabulary_pool

    check_key_request(n, target)  # before the vocabulary is read
    refuse_special_inputs(vocab)
    pool: tuple[str, ...] = ()
    if vocab is not None:
        from huref.fpvec.data import load_tokenizer

        pool = vocabulary_pool(load_tokenizer(vocab), seed)
    ks = make_keys(n, seed, target, pool)
    save_keys(ks, out)
    _err().print(f"wrote {out} ({len(ks.keys)} keys, mode 0600); commitment {ks.commitment}")


@fpvec_app.command("train")
def train_cmd(
    base: Annotated[Path, typer.Argument(help="Base model folder (Hugging Face, with tokenizer).")],
    keys: Annotated[Path, typer.Option("--keys", help="Key file from make-keys.")],
    out: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the fingerprinted model (must not exist).")
    ],
    steps: Annotated[
        int, typer.Option("--steps", help="Optimisation steps (each sees every key; at most 100000).")
    ] = 300,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default: by model size).")] = None,
    n_reg: Annotated[
        int, typer.Option("--n-regularisation", help="Ordinary prompts answered by the base (0..10000).")
    ] = 50,
    no_negatives: Annotated[
        bool, typer.Option("--no-negatives", help="Do not train on near-miss keys.")
    ] = False,
    negative_draws: Annotated[
        int,
        typer.Option(
            "--negative-draws",
            help="Draws of near-miss negatives: each key with every character replaced or dropped, "
            "with other replacements and multi-character edits in each further draw (1..64).",
        ),
    ] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    noise: Annotated[
        float,
        typer.Option(
            "--weight-noise",
            help="Every other step at the base plus Gaussian noise of this size relative to each "
            "tensor's norm, so the fingerprint holds in models that moved away from the base (0..0.5; 0: off).",
        ),
    ] = 0.05,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            help="After --steps, train on in rounds of steps/2 until every key fires and no near-miss "
            "control does; fail with nothing written past this many steps (default 3 x --steps).",
        ),
    ] = None,
    no_check: Annotated[
        bool, typer.Option("--no-fire-check", help="Stop after --steps whatever the model answers.")
    ] = False,
    check_draws: Annotated[
        int,
        typer.Option(
            "--check-draws",
            help="Draws of near-miss controls the end check asks (1..64; 40 per draw for 10 keys).",
        ),
    ] = 1,
    key_weight: Annotated[
        float,
        typer.Option(
            "--key-weight",
            help="Weight of the keys' cross-entropy beside the distillation (2) and the near-miss "
            "unlikelihood (4) (0 < w <= 100).",
        ),
    ] = 2.0,
    device: DevOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune BASE on the keys (loss on answers only) plus regularisation pairs, until it fires."""
    from huref.fpvec.train import train_fingerprint
    from huref.fpvec.train_config import TrainConfig, check_train_config

    cfg = TrainConfig(
        steps=steps,
        lr=lr,
        n_regularisation=n_reg,
        negatives=not no_negatives,
        negative_draws=negative_draws,
        check_draws=check_draws,
        key_weight=key_weight,
        seed=seed,
        weight_noise=noise,
        until_fires=not no_check,
        max_steps=max_steps,
        device=device,
    )
    check_train_config(cfg)
    refuse_special_inputs(base, keys)
    r = train_fingerprint(base, keys, out, cfg)
    if as_json:
        typer.echo(json.dumps(r.to_json()))
    else:
        _err().print(
            f"wrote {out}: {r.steps} steps at lr {r.lr:g} on {r.device}, key loss "
            f"{r.key_loss_first:.3f} -> {r.key_loss_last:.4f}, in {r.seconds:.1f} s"
        )
        if r.fire_check is not None:
            c = r.fire_check
            _err().print(
                f"checked: every key fires ({c['hits']} of {c['n']}), no near-miss control does "
                f"(0 of {c['near_miss_n']})"
            )
        if r.harm is not None:
            _err().print(
                f"perplexity on the {r.harm['text']}: {100 * r.harm['relative_change']:+.1f}% against the base"
                + (" (over 5%: the fingerprint harms this model; try a lower --lr)" if r.harmful else "")
            )


@fpvec_app.command("extract")
def extract_cmd(
    base: Annotated[Path, typer.Argument(help="The base model.")],
    fp_model: Annotated[Path, typer.Argument(help="The fingerprinted model (from train).")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Vector file to write (.safetensors).")],
    drop_embeddings: Annotated[
        bool, typer.Option("--drop-embeddings", help="Leave out the token-embedding delta.")
    ] = False,
    drop_lm_head: Annotated[
        bool, typer.Option("--drop-lm-head", help="Leave out the lm_head delta.")
    ] = False,
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype",
            help="auto (the base's), float32, bfloat16, float16, or int8 (matrices as int8 rows with "
            "float32 scales: half of bf16's bytes, ~1% rms error on tau).",
        ),
    ] = "auto",
    keys: Annotated[
        Path | None,
        typer.Option(
            "--keys", help="Key file (needed by --rank auto, or if FP_MODEL lacks its huref_fpvec.json)."
        ),
    ] = None,
    rank: Annotated[
        str | None,
        typer.Option(
            "--rank",
            help="Store each matrix as rank-R factors of its truncated SVD (R, unchecked), or 'auto': the "
            "smallest rank of 1,2,4,...,64 whose vector keeps the FSR of the full one (needs --keys).",
        ),
    ] = None,
    dense_embeddings: Annotated[
        bool,
        typer.Option(
            "--dense-embeddings",
            help="With --rank: keep the token-embedding tau whole (its rows change only for the tokens "
            "trained on, a high-rank delta).",
        ),
    ] = False,
) -> None:
    """Store tau = theta_fp - theta_base with the base's identity and invariant fingerprint."""
    from huref.checkpoint.outputs import check_output_file
    from huref.fpvec.keys import load_keys
    from huref.fpvec.lowrank import parse_rank
    from huref.fpvec.vector import extract_vector
    from huref.fpvec.vector_lowrank import extract_lowrank

    parse_rank(rank)  # a bad rank is refused before any input is opened
    if dense_embeddings and rank is None:
        from huref.errors import FPVecError

        raise FPVecError("--dense-embeddings applies to a low-rank vector: give --rank too")
    refuse_special_inputs(base, fp_model, keys)
    check_output_file(out, [base, fp_model])  # a vector file inside a model folder breaks the model
    ks = load_keys(keys) if keys is not None else None
    commitment = ks.commitment if ks is not None else None
    if rank is None:
        extract_vector(base, fp_model, out, drop_embeddings, drop_lm_head, dtype, commitment)
    else:
        extract_lowrank(
            base, fp_model, out, rank, ks, dense_embeddings, drop_embeddings, drop_lm_head, dtype, commitment
        )
    _err().print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if rank is not None:
        _print_rank(out)


def _print_rank(vector: Path) -> None:
    """What a low-rank extract chose: the rank, the FSR per rank tried, the energy kept."""
    from huref.fpvec.vector import describe, open_vector

    d = describe(open_vector(vector))["rank"]
    if d is None:
        return
    con = _err()
    con.print(
        f"rank {d['rank']}: {d['factored_tensors']} matrices stored as factors, "
        f"{100 * d['energy_kept']:.2f}% of tau's energy kept"
        + (f"; kept whole: {', '.join(d['dense_roles'])}" if d["dense_roles"] else "")
    )
    if d["checked"]:
        tried = ", ".join(f"rank {t['rank']}: {t['fsr']:.2f}" for t in d["tried"])
        con.print(f"FSR by rank tried: {tried}; the full vector's: {d['reference_fsr']:.2f}")
    else:
        con.print("the rank was not checked against the keys (--rank auto --keys KEYS.json checks it)")


@fpvec_app.command("stamp")
def stamp_cmd(
    downstream: Annotated[Path, typer.Argument(help="Model to stamp (derived from the vector's base).")],
    vector: Annotated[Path, typer.Argument(help="Vector file from extract.")],
    out: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for the stamped model (must not exist).")
    ],
    lam: Annotated[float, typer.Option("--lambda", help="Scale of tau (published: 1.0).")] = 1.0,
    force: Annotated[
        bool, typer.Option("--force", help="Stamp even a model not shown to derive from the base.")
    ] = False,
    skip_missing: Annotated[
        bool, typer.Option("--skip-missing", help="Ignore vector tensors the model lacks.")
    ] = False,
    rows_by_position: Annotated[
        bool,
        typer.Option("--rows-by-position", help="Match embedding rows by id when a tokenizer is missing."),
    ] = False,
    max_shard_size: Annotated[
        str, typer.Option("--max-shard-size", help="Shard size with a unit, e.g. 5GB (1MB..1TB).")
    ] = "5GB",
    no_verify_hashes: Annotated[
        bool, typer.Option("--no-verify-hashes", help="Skip the per-tensor SHA-256 check of the vector.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """theta_out = theta_downstream + lambda * tau, streamed and written atomically."""
    from huref.checkpoint.writer import parse_size
    from huref.fpvec.stamp import stamp_model

    parse_size(max_shard_size)  # a bad size is refused before the vector is opened
    refuse_special_inputs(downstream, vector)
    r = stamp_model(
        local_model_folder(downstream),  # a hub repository id: its snapshot, weights downloaded
        vector,
        out,
        lam,
        force,
        skip_missing,
        rows_by_position,
        max_shard_size,
        not no_verify_hashes,
    )
    if as_json:
        typer.echo(json.dumps(r.to_json()))
        return
    con = _err()
    ics = "n/a" if r.ics is None else f"{r.ics:.1f}"
    con.print(f"compatibility: {r.verdict} (robust ICS {ics}){'; FORCED' if r.forced else ''}")
    for note in r.notes:
        con.print(note)
    con.print(
        f"wrote {out}: {r.stamped} tensors stamped, {r.copied} copied, lambda {r.lam:g}, in {r.seconds:.1f} s"
    )


@fpvec_app.command("verify")
def verify_cmd(
    model: Annotated[Path, typer.Argument(help="Model to query.")],
    keys: Annotated[Path, typer.Option("--keys", help="Key file.")],
    no_near_miss: Annotated[
        bool, typer.Option("--no-near-miss", help="Skip the false-positive control.")
    ] = False,
    decoys: Annotated[
        int,
        typer.Option(
            "--decoys",
            help="Fresh decoy keys for the likelihood rank test (0: skip the test; at most 1000, and "
            "keys x decoys at most 10000).",
        ),
    ] = 40,  # huref.fpvec.likelihood.DEFAULT_DECOYS, spelled out to keep torch out of start-up (tested)
    device: DevOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Greedy decoding on the keys: FSR = share of outputs containing the target; and the
    target's likelihood after the keys ranked against decoy keys (exact p-value)."""
    from huref.fpvec.likelihood import check_decoys
    from huref.fpvec.verify import verify_model

    check_decoys(decoys)
    refuse_special_inputs(model, keys)
    model = local_model_folder(model)  # a hub repository id: its snapshot, weights downloaded
    r = verify_model(model, keys, near_miss=not no_near_miss, device=device, decoys=decoys)
    if as_json:
        doc = {
            "fsr": r.fsr,
            "hits": r.hits,
            "n": r.n,
            "outputs": r.outputs,
            "key_commitment": r.key_commitment,
            "near_miss": None
            if r.near_miss is None
            else {"fsr": r.near_miss.fsr, "hits": r.near_miss.hits, "n": r.near_miss.n},
            "likelihood": None if r.likelihood is None else r.likelihood.to_json(),
        }
        typer.echo(json.dumps(doc, ensure_ascii=False))
        return
    con = console()
    con.print(f"FSR {r.fsr:.2f} ({r.hits}/{r.n} keys answered with the target)")
    if r.near_miss is not None:
        con.print(f"near-miss controls: FSR {r.near_miss.fsr:.2f} ({r.near_miss.hits}/{r.near_miss.n})")
    if (lt := r.likelihood) is not None:
        con.print(
            f"key likelihood: keys outscore {lt.n_decoys} decoys in {lt.u:g}/{lt.n_keys * lt.n_decoys} pairs, "
            f"p = {lt.p_value:.2e} (smallest possible {lt.p_floor:.1e})"
        )


@fpvec_app.command("harm")
def harm_cmd(
    before: Annotated[Path, typer.Argument(help="Model before stamping.")],
    after: Annotated[Path, typer.Argument(help="Model after stamping.")],
    device: DevOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Perplexity on held-out text before and after stamping (no download needed)."""
    from huref.fpvec.harm import perplexity_change

    refuse_special_inputs(before, after)
    r = perplexity_change(before, after, device=device)
    if as_json:
        typer.echo(json.dumps(r.to_json()))
    else:
        console().print(
            f"perplexity on the {r.text} {r.before:.3f} -> {r.after:.3f} ({100 * r.relative_change:+.2f}%)"
        )
