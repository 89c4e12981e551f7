"""``huref inspect MODEL``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from huref.cli.app import app
from huref.cli.checks import refuse_special_inputs
from huref.cli.console import console, styled


@app.command("inspect")
def inspect_cmd(
    model: Annotated[
        str, typer.Argument(help="Checkpoint: HF folder, .safetensors, .bin, llama2.c .bin or .gguf")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    no_hash: Annotated[bool, typer.Option("--no-hash", help="Skip the SHA-256 of weight files.")] = False,
    check_values: Annotated[
        bool,
        typer.Option("--check-values", help="Read every role tensor; fail if any holds NaN or inf."),
    ] = False,
    adapter_base: Annotated[
        str | None,
        typer.Option("--adapter-base", "--base", help="Base of a PEFT adapter (default: its config's)."),
    ] = None,
) -> None:
    """Architecture, roles, shapes, dtypes, parameter count, tokenizer and file hashes."""
    from huref.inspect import inspect_checkpoint

    refuse_special_inputs(model, adapter_base)
    info = inspect_checkpoint(model, hashes=not no_hash, check_values=check_values, adapter_base=adapter_base)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    con = console()
    c = info["config"]
    con.print(styled((str(info["path"]), "bold"), f"  ({info['format']})"))
    if info.get("quantization"):
        con.print(f"quantized: {info['quantization']} (read dequantized to float32, tensor by tensor)")
    if info["adapter"] is not None:
        ad = info["adapter"]
        con.print(
            f"{ad['variant']} adapter (r {ad['r']}, alpha {ad['lora_alpha']:g}{', rsLoRA' if ad['rslora'] else ''}) "
            f"on base {ad['base']['name']} ({ad['base']['path']}): {ad['merged_tensors']} tensors merged, "
            f"{ad['replaced_tensors']} replaced"
        )
    con.print(
        f"architecture {info['architecture']} ({info['model_type']}): {c['n_layers']} layers, d={c['d_model']}, "
        f"heads {c['n_heads']}/{c['n_kv_heads']} kv, head_dim {c['head_dim']}, d_ff {c['d_ff']}, vocab {c['vocab_size']}"
    )
    con.print(
        f"norm {c['norm']} ({c['placement']}-LN{', parallel' if c['parallel'] else ''}), "
        f"{'gated' if c['gated_mlp'] else 'plain'} MLP ({c['activation']}), positions {c['positions']}, "
        f"{'tied' if c['tied_embeddings'] else 'untied'} embeddings, qkv {c['qkv_layout']}"
    )
    if moe := c.get("moe"):  # a sparse Mixture-of-Experts model (Model.moe_summary)
        shared = f", shared expert d {moe['d_shared']}" if moe["d_shared"] else ""
        con.print(
            f"mixture of experts: {moe['experts']} experts of d {moe['d_expert']}, top-{moe['top_k']}"
            f"{' renormalised' if moe['renormalise'] else ''}{shared}, sparse layers {moe['sparse_layers']}"
        )
    if c.get("mtp_layers"):  # DeepSeek-V3's multi-token-prediction blocks after the main layers
        con.print(
            f"multi-token prediction: {c['mtp_layers']} block(s), {info['mtp_tensors']} tensors, "
            "claimed and shape-checked, not fingerprinted"
        )
    con.print(f"parameters {info['parameters']:,} in {info['tensors']} tensors; dtypes {info['dtypes']}")
    tok = info["tokenizer"]
    con.print(
        "tokenizer: "
        + ("none (token ids are used)" if tok is None else f"{tok['size']} tokens, {tok['style']}")
    )
    t = Table("role", "shape", title="roles (global and layer 0)")
    for r, s in {**info["roles"]["global"], **info["roles"]["layer_0"]}.items():
        t.add_row(r, str(s))
    con.print(t)
    for f in info["files"]:
        con.print(f"{f['name']}  {f['bytes']:,} bytes  {f.get('sha256', '')}")
