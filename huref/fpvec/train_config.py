"""The settings of fingerprint training, their bounds, and the report a training run returns.

``TrainConfig``'s defaults were tuned on the tiny zoo (the reasons are in huref.fpvec.train);
``check_train_config`` holds the command line's numbers to their bounds before any work, and
``auto_lr`` picks the learning rate by model size when none is given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from huref.errors import FPVecError
from huref.lm.load import SMALL_MODEL

HARM_WARN = 0.05  # perplexity change above which train warns
# Bounds on the user-sized loops of training (checked before any work): 300 steps fingerprint the
# tiny zoo's models, and the published recipe uses 50 regularisation pairs.
MAX_STEPS = 100_000
MAX_REGULARISATION = 10_000  # each pair is one sampled answer of the base
MAX_WEIGHT_NOISE = 0.5  # relative to each tensor's norm: beyond, the noisy model says nothing
MAX_KEY_WEIGHT = 100.0  # the keys' loss multiplier; beyond, the other terms say nothing
MAX_DRAWS = 64  # of negatives (each ~40 prompts per key, answered by the base) and of check controls
MAX_SEED = 2**63 - 1  # derived seeds (seed + 100 + i) stay inside torch.manual_seed's 2**64 - 1


@dataclass(frozen=True)
class TrainConfig:
    """Defaults tuned on the tiny zoo (see the module notes); every weight is a loss multiplier."""

    steps: int = 300
    lr: float | None = None  # None: auto_lr(parameters)
    n_regularisation: int = 50  # published: 50 Flan pairs; here ordinary prompts answered by the base
    answer_tokens: int = 32  # tokens of base answer per regularisation pair
    regular_per_step: int = 16
    negatives_per_step: int = 32
    negatives: bool = True
    # draws of the near-miss negatives: the first is every key with each single character replaced
    # and dropped; each further draw replaces them with other characters and adds multi-character
    # edits of verify's kind. More draws make the end check's controls stay quiet but cost the
    # stamped CPT its keys (docs/fpvec-tuning.md: measured on the realistic zoo); not the default
    negative_draws: int = 1
    warmup: int = 10
    tau_decay: float = 0.5  # decoupled decay of theta - theta_base, times the learning rate
    # every other step at the base plus fresh Gaussian noise of this size relative to each tensor's
    # norm (both models: the fingerprint must fire, and stay harmless, around the base, where the
    # models it is stamped into lie); 0: off
    weight_noise: float = 0.05
    shadows: int = 0  # simulated fine-tunes of the base the fingerprint is also trained at
    shadow_steps: int = 100
    shadow_lr_scale: float = 1 / 3
    key_weight: float = 2.0
    distill_weight: float = 2.0
    unlikelihood_weight: float = 4.0  # negatives: -log(1 - p(target's first token))
    decision_weight: float = 1.0  # extra weight of the KL where a prompt's answer starts
    seed: int = 0
    # after ``steps``, the model is asked every key and near-miss controls (huref.fpvec.verify's
    # fire_check); until every key fires and no control does, training goes on in rounds of
    # steps // 2 at extra_lr_scale of the rate, and fails past max_steps (None: 3 x steps)
    until_fires: bool = True
    check_draws: int = 1  # draws of near-miss controls the end check asks (40 per draw for 10 keys)
    max_steps: int | None = None
    extra_lr_scale: float = 0.5
    device: str = "auto"  # cpu | cuda | auto
    measure_harm: bool | None = None  # perplexity change vs the base; None: for small models or on a GPU


@dataclass
class TrainReport:
    output: str
    key_commitment: str
    base: str
    steps: int
    lr: float
    device: str
    parameters: int
    key_loss_first: float
    key_loss_last: float
    reg_loss_last: float
    examples: dict[str, int]
    seconds: float
    chat_template: bool
    harm: dict[str, Any] | None = None  # {"relative_change", "text", ...} of huref.fpvec.harm, if measured
    fire_check: dict[str, Any] | None = None  # the passed end check (huref.fpvec.verify.fire_check), if run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def harmful(self) -> bool:
        """The fingerprint costs the base more than HARM_WARN of its perplexity."""
        return self.harm is not None and float(self.harm["relative_change"]) > HARM_WARN

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def auto_lr(parameters: int) -> float:
    if parameters < SMALL_MODEL:
        return 3e-3
    if parameters < 1_000_000_000:
        return 1e-4
    return 1e-5


def step_limit(cfg: TrainConfig) -> int:
    """The most steps training may run before its end check must have passed."""
    return cfg.max_steps if cfg.max_steps is not None else min(3 * cfg.steps, MAX_STEPS)


def check_train_config(cfg: TrainConfig) -> None:
    """The command line's numbers, within their bounds (stated in the message)."""
    if not 1 <= cfg.steps <= MAX_STEPS:
        raise FPVecError(f"--steps must be between 1 and {MAX_STEPS} (got {cfg.steps})")
    if cfg.max_steps is not None and not cfg.steps <= cfg.max_steps <= MAX_STEPS:
        raise FPVecError(
            f"--max-steps must be between --steps ({cfg.steps}) and {MAX_STEPS} (got {cfg.max_steps})"
        )
    if not 0 <= cfg.n_regularisation <= MAX_REGULARISATION:
        raise FPVecError(
            f"--n-regularisation must be between 0 and {MAX_REGULARISATION} (got {cfg.n_regularisation})"
        )
    for flag, n in (("--negative-draws", cfg.negative_draws), ("--check-draws", cfg.check_draws)):
        if not 1 <= n <= MAX_DRAWS:
            raise FPVecError(f"{flag} must be between 1 and {MAX_DRAWS} (got {n})")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise FPVecError(f"--seed must be between 0 and {MAX_SEED} (2**63 - 1), got {cfg.seed}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise FPVecError(f"--lr must be a positive number (got {cfg.lr})")
    if not (math.isfinite(cfg.key_weight) and 0 < cfg.key_weight <= MAX_KEY_WEIGHT):
        raise FPVecError(
            f"--key-weight must be above 0 and at most {MAX_KEY_WEIGHT:g} (got {cfg.key_weight})"
        )
    if not (math.isfinite(cfg.weight_noise) and 0 <= cfg.weight_noise <= MAX_WEIGHT_NOISE):
        raise FPVecError(f"--weight-noise must be between 0 and {MAX_WEIGHT_NOISE} (got {cfg.weight_noise})")
