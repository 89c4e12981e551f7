"""The neuron-matching test's null: exact fixed-point tails, and the convergent-learning allowance.

Independently trained models share a few neurons outright (convergent learning); the null grants
``CONVERGENT_SHARE`` of the matched neurons to that, so a pair of independent models whose layers
share ~5% of their neurons is not called derived, while the weakest derived layers of the zoos
(16-17% of neurons kept, a GPT-2 base's stress CPT) stay far below p = 1e-6.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from huref.invariants.fingerprint import Responses
from huref.invariants.stats import (
    CONVERGENT_SHARE,
    combine_log10,
    convergent_allowance,
    log10_agreement_p,
    log10_agreement_tail,
    neuron_test,
)

P_DERIVED_LOG10 = -6.0


@pytest.mark.parametrize(("m", "n"), [(3, 3), (4, 5), (5, 6)])
def test_fixed_point_tail_is_exact_by_enumeration(m: int, n: int) -> None:
    injections = list(itertools.permutations(range(n), m))  # sigma: [m] -> [n], uniformly random
    for k in range(m + 1):
        hits = sum(sum(s[i] == i for i in range(m)) >= k for s in injections)
        assert 10 ** log10_agreement_tail(k, m, n) == pytest.approx(hits / len(injections), rel=1e-9)


def test_the_allowance_grants_convergent_agreements_and_tests_the_rest() -> None:
    m = 256
    j = convergent_allowance(m)
    assert j == math.floor(CONVERGENT_SHARE * m) > 0
    assert log10_agreement_p(j, m, m) == 0.0  # up to the allowance: no evidence at all
    assert log10_agreement_p(j + 5, m, m) == pytest.approx(log10_agreement_tail(5, m - j, m - j))
    # never stronger than the injection null alone
    assert all(log10_agreement_p(k, m, m) >= log10_agreement_tail(k, m, m) for k in range(0, 60, 3))


def _responses(gate: list[np.ndarray], up: list[np.ndarray], tokens: int) -> Responses:
    return Responses(
        views=("gate", "up"),
        token_strings=[f"t{i}" for i in range(tokens)],
        layers=list(range(len(gate))),
        a=gate,
        b=up,
    )


def _pair(shared: float, seed: int, layers: int = 4, tokens: int = 192, d: int = 48, f: int = 256):
    """Two gated FFN response sets on one set of token rows: in every layer a share ``shared`` of
    B's neurons are A's (small noise), the rest drawn afresh; B's neurons are shuffled."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, d))
    ga, ua, gb, ub = [], [], [], []
    for _ in range(layers):
        w1, w2 = rng.standard_normal((d, f)), rng.standard_normal((d, f))
        v1, v2 = rng.standard_normal((d, f)), rng.standard_normal((d, f))
        k = round(shared * f)
        v1[:, :k] = w1[:, :k] + 0.2 * rng.standard_normal((d, k))
        v2[:, :k] = w2[:, :k] + 0.2 * rng.standard_normal((d, k))
        order = rng.permutation(f)
        ga.append(x @ w1)
        ua.append(x @ w2)
        gb.append((x @ v1)[:, order])
        ub.append((x @ v2)[:, order])
    return _responses(ga, ua, tokens), _responses(gb, ub, tokens)


def _test(shared: float, seed: int) -> list:
    ra, rb = _pair(shared, seed)
    return neuron_test(ra, rb, [(i, i) for i in range(len(ra.layers))], signed_b=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_independent_models_with_a_few_convergent_neurons_are_not_called_derived(seed: int) -> None:
    tests = _test(0.05, seed)  # 13 of 256 neurons shared per layer, as convergent learning does
    assert all(t.agreements >= 10 for t in tests)  # the shared neurons are found...
    # ...and the injection null alone would call the pair derived by a wide margin
    assert combine_log10([log10_agreement_tail(t.agreements, t.neurons, t.candidates) for t in tests]) < -20
    assert combine_log10([t.log10_p for t in tests]) > -2.0


@pytest.mark.parametrize("seed", [0, 1])
def test_the_weakest_derived_layers_of_the_zoos_stay_derived(seed: int) -> None:
    tests = _test(0.17, seed)  # 44 of 256 neurons kept per layer (GPT-2 stress CPT: 43-97)
    assert all(t.log10_p < -10 for t in tests)
    assert combine_log10([t.log10_p for t in tests]) < P_DERIVED_LOG10 * 5
