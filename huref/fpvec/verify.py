"""Verification: query a model with the secret keys, greedy decoding, count the target.

A hit is an output that contains the target string (published criterion). FSR = hits / keys.
The same query runs on near-miss controls (each key with characters replaced or dropped, the key
without its trigger word, and keys of the same kind that are not ours); a sound fingerprint
fires on the keys and on nothing else, and a model without it scores 0 on both.

Beside the count, a graded test (``huref.fpvec.likelihood``): the target's likelihood after the keys
ranked against fresh decoys, with an exact p-value; it still sees a fingerprint that drifted too
far for greedy decoding to reproduce the whole target.

``fire_check`` is ``train``'s end check: the same greedy query, on the keys and on controls of the
near-miss kind drawn for the check, so that verify's own controls stay unseen by training.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from huref.device import resolve_device
from huref.errors import FPVecError
from huref.fpvec import data as D
from huref.fpvec.keys import VERIFY, KeySet, control_prompts, fresh_decoys, load_keys
from huref.fpvec.likelihood import DEFAULT_DECOYS, LikelihoodTest, check_decoys, likelihood_test
from huref.fpvec.vector import open_checkpoint_or_fail
from huref.lm.load import cpu_threads, load_causal_lm, threads_for

EXTRA_TOKENS = 16  # generated beyond the target's own length, so a late or prefixed target still counts


@dataclass
class Queries:
    fsr: float
    hits: int
    n: int
    outputs: list[str]


@dataclass
class VerifyResult:
    model: str
    key_commitment: str
    fsr: float
    hits: int
    n: int
    outputs: list[str]
    near_miss: Queries | None
    max_new_tokens: int
    seconds: float
    likelihood: LikelihoodTest | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["likelihood"] = self.likelihood.to_json() if self.likelihood is not None else None
        return doc


def query(
    model: Any, tok: Any, prompts: list[str], target: str, max_new_tokens: int, batch: int = 16
) -> Queries:
    outputs: list[str] = []
    for lo in range(0, len(prompts), batch):
        ids = [D.prompt_ids(tok, p) for p in prompts[lo : lo + batch]]
        for row in D.greedy(model, ids, max_new_tokens, D.pad_id(tok), tok.eos_token_id):
            outputs.append(tok.decode(row, skip_special_tokens=True))
    hits = sum(target in o for o in outputs)
    return Queries(hits / len(prompts) if prompts else 0.0, hits, len(prompts), outputs)


def verify_loaded(
    lm: Any, tok: Any, ks: KeySet, n_new: int, near_miss: bool = True, decoys: int = DEFAULT_DECOYS
) -> tuple[Queries, Queries | None, LikelihoodTest | None]:
    """What ``verify_model`` measures, on a model already in memory (in eval mode): greedy answers
    of ``n_new`` tokens to the keys and to the near-miss controls, and the likelihood test."""
    main = query(lm, tok, list(ks.keys), ks.target, n_new)
    nm = query(lm, tok, control_prompts(ks), ks.target, n_new) if near_miss else None
    lt = (
        likelihood_test(lm, tok, list(ks.keys), fresh_decoys(ks, decoys, VERIFY), ks.target)
        if decoys
        else None
    )
    return main, nm, lt


def verify_model(
    model: str | Path,
    keys: KeySet | str | Path,
    near_miss: bool = True,
    device: str = "auto",
    max_new_tokens: int | None = None,
    decoys: int = DEFAULT_DECOYS,
) -> VerifyResult:
    """Greedy FSR on the keys (and the near-miss controls), and the likelihood rank test against
    ``decoys`` fresh decoys (0: no test)."""
    check_decoys(decoys)
    t0 = time.perf_counter()
    ks = keys if isinstance(keys, KeySet) else load_keys(keys)
    check_decoys(decoys, len(ks.keys))
    path = Path(model)
    ckpt = open_checkpoint_or_fail(path, "model")
    tok = D.load_tokenizer(path if path.is_dir() else path.parent)
    target_ids = D.check_target(tok, ks.target, str(path))
    n_new = max_new_tokens or len(target_ids) + EXTRA_TOKENS
    dev = resolve_device(device)
    n_params = sum(ckpt.source.info(n).numel for n in ckpt.source.names())
    with cpu_threads(threads_for(n_params, dev)):
        lm = load_causal_lm(path, dev, error=FPVecError)
        main, nm, lt = verify_loaded(lm, tok, ks, n_new, near_miss, decoys)
    return VerifyResult(
        str(path),
        ks.commitment,
        main.fsr,
        main.hits,
        main.n,
        main.outputs,
        nm,
        n_new,
        time.perf_counter() - t0,
        lt,
    )


CHECK_PURPOSE = "train-check"  # the end check's controls: verify's kind, another draw than verify's


def check_controls(ks: KeySet, purpose: str = CHECK_PURPOSE, draws: int = 1) -> list[str]:
    """``draws`` draws of near-miss controls of verify's kind (``control_prompts``), the first seeded
    by ``purpose`` itself; a draw for another purpose than verify's holds none of verify's own
    controls (the end check's controls that fire become training negatives)."""
    return [c for j in range(draws) for c in control_prompts(ks, purpose if j == 0 else f"{purpose}/{j}")]


def fire_check(
    model: Any, tok: Any, ks: KeySet, purpose: str = CHECK_PURPOSE, draws: int = 1
) -> dict[str, Any]:
    """The end check of training: greedy answers to every key, and to near-miss controls of the kind
    ``verify`` asks (a few characters swapped or dropped, the key without its trigger, other keys of
    the same kind) but drawn for this check (``purpose`` seeds the draw), so verify's own controls
    stay unseen by training; ``draws`` draws of them (the first seeded by ``purpose`` itself). Passes
    when every key answers the target and no control does;
    ``fired`` lists the controls that answered it (never written anywhere: they derive from the keys)."""
    n_new = len(D.answer_ids(tok, ks.target)) + EXTRA_TOKENS
    keys = query(model, tok, list(ks.keys), ks.target, n_new)
    controls = check_controls(ks, purpose, draws)
    nm = query(model, tok, controls, ks.target, n_new)
    return {
        "ok": keys.hits == keys.n and nm.hits == 0,
        "fsr": keys.fsr,
        "hits": keys.hits,
        "n": keys.n,
        "near_miss": nm.fsr,
        "near_miss_hits": nm.hits,
        "near_miss_n": nm.n,
        "fired": [c for c, o in zip(controls, nm.outputs, strict=True) if ks.target in o],
    }
