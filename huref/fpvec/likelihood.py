"""Graded verification: does the model expect the target after *our* keys more than after others?

Greedy FSR counts exact answers; a fingerprint that reached a model weakened (a stamped model that
drifted far from the base, one token of the target lost) scores 0 there although the model still
knows the keys. This test measures, for every key and for ``n_decoys`` fresh decoys (keys of the
same kind drawn from the same generator, never trained on), the *target score*: the mean
log-probability of the target's tokens, teacher-forced after the prompt. Then a one-sided
Mann-Whitney rank test: are the keys' scores above the decoys'?

Calibration is exact, with no model of the scores: the keys and the verification decoys are
independent draws of one random process (``keys.make_key``), so for a model that never saw the keys
they are exchangeable, and every assignment of ranks to the two groups is equally likely. The
p-value is the exact share of assignments with a rank sum at least as large; its floor is
1 / C(n_keys + n_decoys, n_keys) (1e-10 for 10 keys and 40 decoys), reached when every key
outscores every decoy. Ties count half, and the p-value is taken at the next lower integer U,
which keeps it conservative.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from huref.fpvec import data as D

DEFAULT_DECOYS = 40
MAX_DECOYS = 1000  # each decoy is one more forward pass of the model
# The exact distribution costs (keys x decoys)^2 / 4 steps of pure Python (10 keys x 1000 decoys:
# 4 s on one core; 10 x 10^4 would be 6 minutes with memory to match), so the product is bounded.
MAX_RANK_PAIRS = 10_000


@dataclass
class LikelihoodTest:
    statistic: str  # what each score is
    key_scores: list[float]
    decoy_scores: list[float]
    u: float  # (key, decoy) pairs where the key scores higher; ties count half
    p_value: float  # one-sided, exact under exchangeability
    p_floor: float  # the smallest p-value these group sizes can give

    @property
    def n_keys(self) -> int:
        return len(self.key_scores)

    @property
    def n_decoys(self) -> int:
        return len(self.decoy_scores)

    def summary(self) -> dict[str, Any]:
        """The test without its per-prompt scores (what an audit report carries)."""
        return {
            "p_value": self.p_value,
            "p_floor": self.p_floor,
            "u": self.u,
            "n_keys": self.n_keys,
            "n_decoys": self.n_decoys,
            "key_mean": sum(self.key_scores) / self.n_keys,
            "decoy_mean": sum(self.decoy_scores) / self.n_decoys,
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"n_keys": self.n_keys, "n_decoys": self.n_decoys}


def check_decoys(decoys: int, n_keys: int | None = None) -> None:
    """``verify --decoys``: 0..MAX_DECOYS, and with ``n_keys`` known, at most MAX_RANK_PAIRS
    (key, decoy) pairs; checked before any model is loaded."""
    from huref.errors import FPVecError

    if not 0 <= decoys <= MAX_DECOYS:
        raise FPVecError(f"--decoys must be between 0 and {MAX_DECOYS} (got {decoys})")
    if n_keys is not None and n_keys * decoys > MAX_RANK_PAIRS:
        raise FPVecError(
            f"--decoys {decoys} with {n_keys} keys: the exact rank test allows at most {MAX_RANK_PAIRS} "
            f"(key, decoy) pairs, i.e. at most {MAX_RANK_PAIRS // n_keys} decoys for these keys"
        )


def mann_whitney_upper_p(u: float, n1: int, n2: int) -> float:
    """P(U >= floor(u)) for U the Mann-Whitney count of n1 against n2 exchangeable values, no ties.

    Exact: the number of rank assignments with U = k is the coefficient of q^k in the Gaussian
    binomial [n1 + n2 choose n1]_q, built here by the recurrence on the last-ranked value.
    """
    if n1 < 1 or n2 < 1:
        raise ValueError("both groups need at least one value")
    # ways[j][k]: assignments of i values of group 1 and j of group 2 with U = k, for the current i
    ways = [[1] + [0] * (n1 * n2) for _ in range(n2 + 1)]  # i = 0: U is 0
    for i in range(1, n1 + 1):
        nxt = [[0] * (n1 * n2 + 1) for _ in range(n2 + 1)]
        nxt[0][0] = 1
        for j in range(1, n2 + 1):
            # the largest value is from group 1 (beats all j of group 2) or from group 2 (beats none)
            for k in range(i * j + 1):
                nxt[j][k] = (ways[j][k - j] if k >= j else 0) + nxt[j - 1][k]
        ways = nxt
    counts = ways[n2]
    k0 = max(0, min(n1 * n2, math.floor(u)))
    return sum(counts[k0:]) / math.comb(n1 + n2, n1)


def mann_whitney_u(xs: list[float], ys: list[float]) -> float:
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in xs for y in ys)


@torch.no_grad()
def target_scores(model: Any, tok: Any, prompts: list[str], target: str, batch: int = 16) -> list[float]:
    """Mean log-probability of the target's tokens after each prompt (teacher-forced, no EOS)."""
    answer = tuple(int(i) for i in tok(target, add_special_tokens=False)["input_ids"])
    dev = next(model.parameters()).device
    pad = D.pad_id(tok)
    out: list[float] = []
    for lo in range(0, len(prompts), batch):
        ex = [D.Example(tuple(D.prompt_ids(tok, p)), answer, "key") for p in prompts[lo : lo + batch]]
        b = {k: t.to(dev) for k, t in D.collate(ex, pad).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, T-1, V]: position t predicts t+1
        labels = b["labels"][:, 1:]  # [B, T-1]
        mask = labels != D.IGNORE
        picked = lp.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)  # [B, T-1]
        out.extend(((picked * mask).sum(1) / mask.sum(1)).tolist())
    return out


def likelihood_test(model: Any, tok: Any, keys: list[str], decoys: list[str], target: str) -> LikelihoodTest:
    ks = target_scores(model, tok, keys, target)
    ds = target_scores(model, tok, decoys, target)
    u = mann_whitney_u(ks, ds)
    return LikelihoodTest(
        "mean log-probability of the target's tokens after the prompt",
        ks,
        ds,
        u,
        mann_whitney_upper_p(u, len(ks), len(ds)),
        1 / math.comb(len(ks) + len(ds), len(ks)),
    )
