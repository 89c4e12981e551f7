"""A byte-level BPE tokenizer trained locally with the ``tokenizers`` package."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL = ["<|pad|>", "<|bos|>", "<|eos|>"]


def train_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text[i : i + 100_000] for i in range(0, len(text), 100_000)], trainer)
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    """tokenizer.json plus the small config files transformers expects beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|bos|>",
                "eos_token": "<|eos|>",
                "pad_token": "<|pad|>",
                "model_max_length": 1024,
            },
            indent=2,
        )
    )


def load_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def id_named_tokenizer(vocab_size: int, bos: int = 1, eos: int = 2, unk: int = 0) -> Tokenizer:
    """A word-level vocabulary that names each token by its original id (``id:17``).

    Used for imports that arrive without their tokenizer (llama2.c exports): ids then travel
    with names, so a later id permutation can still be traced by string.
    """
    names = {f"id:{i}": i for i in range(vocab_size)}
    names.pop(f"id:{unk}")
    names.pop(f"id:{bos}")
    names.pop(f"id:{eos}")
    names.update({"<unk>": unk, "<s>": bos, "</s>": eos})
    tok = Tokenizer(models.WordLevel(vocab=names, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    return tok
