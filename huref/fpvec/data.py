"""Training and query data for fingerprinting: prompt format, regularisation pairs, batches.

One function formats a prompt for training *and* for verification, so the two can never drift
apart: the tokenizer's own chat template when it has one (a single user turn with the generation
prompt), otherwise the bare text followed by a newline. Answers are the target (or the base's own
continuation) followed by the end-of-sequence token; the loss is taken on answer tokens only.

Regularisation pairs need no data set: ordinary prompts (a built-in list of everyday
instructions, plus short texts the base samples itself, which are ordinary *for that model*)
answered by the base model's own sampled continuations. Training on them keeps the fingerprinted model
close to its base everywhere except on the keys. Near-miss variants of the keys (single-character
edits, which verification's multi-character controls never coincide with) are answered by the
base the same way, so that the fingerprint responds to the keys, not to any string of mixed
scripts ending in ``FINGERPRINT``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huref.errors import FPVecError

IGNORE = -100  # label of tokens that carry no loss (prompt and padding)

ORDINARY_PROMPTS = (
    "Write a short poem about the sea.",
    "What is the capital of France?",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for better sleep.",
    "Translate 'good morning' into Spanish.",
    "List the planets of the solar system.",
    "How do I boil an egg?",
    "Summarise the plot of Romeo and Juliet.",
    "What is 12 times 7?",
    "Write a haiku about autumn leaves.",
    "Name a famous painting by Van Gogh.",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
    "Suggest a name for a bakery.",
    "def fibonacci(n):",
    "Write a Python function that reverses a string.",
    "What does HTTP stand for?",
    "Tell me a fun fact about octopuses.",
    "How many days are in a leap year?",
    "Recommend a book for a long train journey.",
    "import os\nimport sys\n",
    "class Stack:\n",
    "Explain what a hash table is.",
    "Write a limerick about a programmer.",
    "What is the boiling point of water at sea level?",
)


def load_tokenizer(path: str | Path) -> Any:
    """The model's tokenizer through transformers (never with remote code)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise FPVecError(
            f"{folder}: no tokenizer files (fingerprint keys are text: the model needs its tokenizer)"
        )
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # transformers raises many types for unreadable tokenizers
        raise FPVecError(f"{folder}: cannot load the tokenizer ({type(e).__name__}: {e})") from None


def prompt_ids(tok: Any, text: str) -> list[int]:
    """Token ids of a query, in the format used for training and verification alike."""
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tok(text + "\n", add_special_tokens=True)["input_ids"]]


def answer_ids(tok: Any, text: str) -> list[int]:
    ids = [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    return ids


def pad_id(tok: Any) -> int:
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    return int(tok.eos_token_id) if tok.eos_token_id is not None else 0


def uses_chat_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def check_target(tok: Any, target: str, where: str) -> list[int]:
    """The target's ids; refused when the tokenizer cannot spell it back exactly."""
    ids = [int(i) for i in tok(target, add_special_tokens=False)["input_ids"]]
    back = tok.decode(ids, skip_special_tokens=True)
    if not ids or back != target:
        raise FPVecError(
            f"{where}: the tokenizer cannot encode the target {target!r} faithfully (decodes as {back!r}); "
            "choose a target it can spell (make-keys --target)"
        )
    return ids


@dataclass(frozen=True)
class Example:
    prompt: tuple[int, ...]
    answer: tuple[int, ...]
    kind: str  # 'key' | 'regular' | 'negative'


@torch.no_grad()
def greedy(
    model: Any,
    ids: list[list[int]],
    max_new_tokens: int,
    pad: int,
    eos_id: int | None,
    sample_seed: int | None = None,
) -> list[list[int]]:
    """Continuations of several prompts (left-padded batch), new tokens only, cut at EOS.

    Greedy by default; with ``sample_seed``, sampled at temperature 1 from the model's own
    distribution (reproducibly).
    """
    dev = next(model.parameters()).device
    width = max(len(p) for p in ids)
    x = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, p in enumerate(ids):
        x[i, width - len(p) :] = torch.tensor(p)  # left padding: every prompt ends at the same column
        mask[i, width - len(p) :] = 1
    sampling: dict[str, Any] = {"do_sample": False}
    if sample_seed is not None:
        torch.manual_seed(sample_seed)
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    out = model.generate(
        input_ids=x.to(dev),
        attention_mask=mask.to(dev),
        max_new_tokens=max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos_id,
        **sampling,
    )
    res = []
    for row in out[:, width:].tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        res.append(row)
    return res


@torch.no_grad()
def self_samples(model: Any, tok: Any, n: int, new_tokens: int, seed: int) -> torch.Tensor:
    """[n, 1 + new_tokens] token ids the model writes itself from random ordinary first tokens."""
    g = torch.Generator().manual_seed(seed)
    special = set(tok.all_special_ids)
    cand = torch.tensor([i for i in range(len(tok)) if i not in special])
    x = cand[torch.randint(0, len(cand), (n, 1), generator=g)]
    dev = next(model.parameters()).device
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=x.to(dev),
        attention_mask=torch.ones_like(x).to(dev),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=new_tokens,
        pad_token_id=pad_id(tok),
        eos_token_id=None,
    )
    return out.cpu()


def sampled_prompts(model: Any, tok: Any, n: int, seed: int, length: int = 16) -> list[str]:
    """Short texts the base writes itself from a random ordinary first token: ordinary for it."""
    if n <= 0:
        return []
    texts = [
        tok.decode(row, skip_special_tokens=True)
        for row in self_samples(model, tok, n, length, seed).tolist()
    ]
    return [t if t.strip() else "Hello" for t in texts]


def regularisation_examples(
    model: torch.nn.Module,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int,
    kind: str = "regular",
    batch: int = 16,
    seed: int = 0,
) -> list[Example]:
    """Each prompt answered by the model itself: the behaviour training must keep.

    Answers are *sampled* from the base, not decoded greedily: cross-entropy on samples of the
    base's own distribution is, in expectation, a distillation towards that distribution, while
    greedy answers teach its mode only (a small model's mode is often one repeated token, and
    training on it collapses the model).
    """
    pad, eos = pad_id(tok), tok.eos_token_id
    out: list[Example] = []
    for lo in range(0, len(prompts), batch):
        chunk = [prompt_ids(tok, p) for p in prompts[lo : lo + batch]]
        answers = greedy(model, chunk, max_new_tokens, pad, eos, sample_seed=seed + lo)
        for p, a in zip(chunk, answers, strict=True):
            if a:
                out.append(Example(tuple(p), tuple(a), kind))
    return out


def unknown_id(tok: Any) -> int | None:
    """The id a tokenizer gives what it cannot spell: its declared unk token, else the one its
    backend model falls back to (a tokenizer.json alone declares no special tokens)."""
    if getattr(tok, "unk_token_id", None) is not None:
        return int(tok.unk_token_id)
    name = getattr(getattr(getattr(tok, "backend_tokenizer", None), "model", None), "unk_token", None)
    if not name:
        return None
    i = tok.convert_tokens_to_ids(name)
    return int(i) if isinstance(i, int) else None


def spells(tok: Any, text: str) -> bool:
    """Whether the tokenizer encodes ``text`` without falling back to its unknown token."""
    unk = unknown_id(tok)
    return unk is None or unk not in tok(text, add_special_tokens=False)["input_ids"]


def ordinary_prompts(model: torch.nn.Module, tok: Any, n: int, seed: int) -> list[str]:
    """n prompts: half from the built-in list (those the tokenizer can spell), the rest sampled
    from the base itself."""
    rng = random.Random(seed)
    fixed = [p for p in ORDINARY_PROMPTS if spells(tok, p)]
    rng.shuffle(fixed)
    n_fixed = min(len(fixed), n // 2)
    return fixed[:n_fixed] + sampled_prompts(model, tok, n - n_fixed, seed)


def collate(examples: list[Example], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are the answer tokens only."""
    width = max(len(e.prompt) + len(e.answer) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        seq = list(e.prompt) + list(e.answer)
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(e.prompt) : len(seq)] = torch.tensor(e.answer)  # HF shifts labels inside the model
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
