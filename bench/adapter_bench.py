"""PEFT adapters merged when read: cost against the base itself and against peft's merged model.

    python bench/adapter_bench.py [--dir .bench/adapter] [--hidden 768] [--layers 8] [--r 16]

Builds (once) a random Llama of the given size and a LoRA adapter of it (every linear layer,
random A and B), then in one run, side by side:

- ``read base`` / ``read adapter``: every tensor of the base, and of the adapter read through
  huref (each targeted tensor merged when read), seconds and the ratio;
- ``fingerprint base`` / ``fingerprint adapter``: ``fingerprint_model`` with default settings;
- ``max |huref - peft|``: the largest difference between huref's merged tensors and peft's
  ``merge_and_unload`` of the same adapter (float32).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(root: Path, hidden: int, layers: int, r: int) -> tuple[Path, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base, adapter = root / f"base-{hidden}x{layers}", root / f"lora-{hidden}x{layers}-r{r}"
    if not (base / "config.json").is_file():
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=8192,
            hidden_size=hidden,
            intermediate_size=hidden * 8 // 3,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            num_key_value_heads=hidden // 64,
        )
        LlamaForCausalLM(cfg).save_pretrained(base)
    if not (adapter / "adapter_config.json").is_file():
        torch.manual_seed(1)
        model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS))
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.02)
        pm.save_pretrained(adapter)
    return base, adapter


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=REPO / ".bench" / "adapter")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(2)
    base, adapter = build(args.dir, args.hidden, args.layers, args.r)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from huref.checkpoint import open_checkpoint
    from huref.invariants import fingerprint_model

    def read_all(path: Path) -> None:
        src = open_checkpoint(path).source
        for n in src.names():
            src.read(n)

    read_all(base)  # warm the page cache for both
    read_all(adapter)
    t_rb, t_ra = timed(lambda: read_all(base)), timed(lambda: read_all(adapter))
    t_fb = timed(lambda: fingerprint_model(base))
    t_fa = timed(lambda: fingerprint_model(adapter))
    ck = open_checkpoint(adapter)
    assert ck.adapter is not None
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ref = PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()
    diff = max(float((ck.source.read(n).float() - ref[n]).abs().max()) for n in ck.adapter.merged)
    n_params = sum(ck.source.info(n).numel for n in ck.source.names())
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.1f} M parameters; LoRA r {args.r}"
    )
    print(f"adapter: {len(ck.adapter.merged)} tensors merged when read")
    print(f"read every tensor      base {t_rb:7.3f} s   adapter {t_ra:7.3f} s   ratio {t_ra / t_rb:5.2f}")
    print(f"fingerprint (default)  base {t_fb:7.3f} s   adapter {t_fa:7.3f} s   ratio {t_fa / t_fb:5.2f}")
    print(f"max |huref - peft merge_and_unload| over merged tensors: {diff:.3g}")


if __name__ == "__main__":
    main()
