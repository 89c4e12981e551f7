"""Resolved hyperparameters in role terms: ``ArchConfig``, and the parts only some families have.

``MoEConfig`` is the sparse Mixture-of-Experts part of a config (routing included), ``MLAConfig``
Multi-head Latent Attention's; each is checked when it is made, so an inconsistent config.json is
one ArchitectureError naming what disagrees. Reading them from config.json is huref.arch.keys'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from huref.errors import ArchitectureError

Scoring = Literal["softmax", "sigmoid"]
TopkMethod = Literal["greedy", "group_limited_greedy", "noaux_tc"]


@dataclass(frozen=True)
class MoEConfig:
    """The sparse Mixture-of-Experts part of a config.

    Each token is routed to the ``top_k`` experts with the largest softmax router probabilities,
    weighted by them (renormalised to sum 1 over the chosen ones when ``renormalise``); a shared
    expert, when ``d_shared`` is set, sees every token (scaled by sigmoid(x @ w^T) when
    ``shared_gated``). Layers not in ``sparse_layers`` are dense: mlp_gate/up/down of width d_ff.

    DeepSeek's routing (huref.invariants.kernels.deepseek_route) is the other fields: scores are
    the softmax or the ``scoring`` sigmoid of the logits; ``topk_method`` 'group_limited_greedy'
    (V2) keeps the ``topk_group`` of ``n_group`` expert groups with the largest best score,
    'noaux_tc' (V3) those with the largest sum of their two best scores + the router bias
    (``router_bias``: moe_router_bias, used for selection only); the weights are the chosen
    scores, renormalised if ``renormalise``, times ``routed_scale``. The defaults are Mixtral's,
    Qwen's and OLMoE's plain softmax top-k. GPT-OSS's is that too, with ``router_logit_bias``:
    its moe_router_bias is a true Linear bias of the router, added to the logits before the
    softmax top-k (top-k of the logits, softmax over the chosen k: the same weights).
    """

    n_experts: int
    top_k: int
    d_expert: int  # F: each routed expert's hidden width
    renormalise: bool
    d_shared: int | None = None  # Fs: the shared expert's hidden width
    shared_gated: bool = False
    sparse_layers: tuple[int, ...] = ()
    scoring: Scoring = "softmax"
    topk_method: TopkMethod = "greedy"
    n_group: int = 1  # experts split into n_group equal groups, in index order
    topk_group: int = 1  # groups a token may choose experts from (group-limited methods)
    routed_scale: float = 1.0  # routed_scaling_factor: the routed experts' weights times this
    router_bias: bool = False  # a moe_router_bias (e_score_correction_bias) steers selection
    # moe_router_bias is the router Linear's bias (GPT-OSS): logits are x @ W^T + b
    router_logit_bias: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.n_experts:
            raise ArchitectureError(
                f"config.json: {self.top_k} experts per token, but the model has {self.n_experts}"
            )
        if self.router_bias and self.router_logit_bias:
            raise ArchitectureError(
                "config.json: moe_router_bias is a selection bias or a logit bias, not both"
            )
        if self.shared_gated and self.d_shared is None:
            raise ArchitectureError("config.json: a gated shared expert with no shared expert width")
        if self.scoring not in get_args(Scoring) or self.topk_method not in get_args(TopkMethod):
            raise ArchitectureError(
                f"config.json: unknown expert routing {self.scoring!r} / {self.topk_method!r}"
            )
        if self.topk_method != "greedy":
            if self.n_experts % self.n_group or not 1 <= self.topk_group <= self.n_group:
                raise ArchitectureError(
                    f"config.json: {self.n_experts} experts in {self.n_group} groups, "
                    f"{self.topk_group} of them chosen: the groups must be equal and enough"
                )
            per_group = self.n_experts // self.n_group
            if self.top_k > self.topk_group * per_group:
                raise ArchitectureError(
                    f"config.json: {self.top_k} experts per token, but {self.topk_group} groups "
                    f"of {per_group} hold {self.topk_group * per_group}"
                )
            if self.topk_method == "noaux_tc" and per_group < 2:
                raise ArchitectureError(
                    "config.json: 'noaux_tc' routing scores groups by their two best experts"
                )


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head Latent Attention (DeepSeek-V2/V3): per layer, the query is
    q_b(RMSNorm(q_a(x))) (or one attn_q when ``q_lora_rank`` is None), the keys and values come
    from one latent c = RMSNorm(kv_a(x)[:rkv]) through kv_b (per head k_nope, then v), and every
    head's key ends with the same rope part kv_a(x)[rkv:]. Head h's query is its k_nope + rope
    (``qk_nope_head_dim`` + ``qk_rope_head_dim``) rows of q; its value ``v_head_dim`` wide.
    """

    q_lora_rank: int | None  # rq; None: a full-rank attn_q
    kv_lora_rank: int  # rkv
    qk_nope_head_dim: int  # n
    qk_rope_head_dim: int  # r
    v_head_dim: int  # v
    norm_eps: float = 1e-6  # of the latent RMSNorms (transformers fixes it, whatever rms_norm_eps)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class ArchConfig:
    """Hyperparameters resolved from a checkpoint's config, in role terms."""

    family: str
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    norm: Literal["rms", "layer"]
    norm_eps: float
    norm_offset: float = 0.0  # Gemma stores w and multiplies by (1 + w)
    placement: Literal["pre", "post"] = "pre"
    parallel: bool = False  # attention and MLP read the same residual stream
    gated: bool = True
    activation: str = "silu"
    tied: bool = False
    positions: Literal["rope", "learned", "alibi", "none"] = "rope"
    qkv_layout: Literal["separate", "concat", "per_head", "per_kv_group"] = "separate"
    moe: MoEConfig | None = None  # None: a dense model
    mla: MLAConfig | None = None  # Multi-head Latent Attention in place of attn_q/k/v
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> int:
        """Query heads per key/value head (GQA); head h uses KV head h // group."""
        return self.n_heads // self.n_kv_heads

    def is_sparse(self, layer: int) -> bool:
        """Whether ``layer``'s feed-forward block is a sparse MoE block (else a dense MLP)."""
        return self.moe is not None and layer in self.moe.sparse_layers
