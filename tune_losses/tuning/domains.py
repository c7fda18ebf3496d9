"""Search-space domains mapped onto Ray Tune's (which OptunaSearch converts to Optuna's)."""

from collections.abc import Callable

from ray import tune

from tune_losses.spaces import Domain


def to_tune(domain: Domain):
    kind, given = domain.kind, getattr(domain, domain.kind)  # the one field that is set (Domain checks it)
    if kind == "value":
        return given
    if kind == "grid":
        return tune.grid_search(list(given))
    if kind == "choice":
        return tune.choice(list(given))
    sampler: Callable[..., object] = getattr(tune, kind)  # tune.uniform, loguniform, quniform, randint
    return sampler(*given)


def grid_size(space) -> int:
    n = 1
    for dom in space.params.values():
        if dom.kind == "grid":
            n *= len(dom.grid)
    return n
