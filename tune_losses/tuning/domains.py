"""Search-space domains mapped onto Ray Tune's (which OptunaSearch converts to Optuna's)."""

from ray import tune

from tune_losses.spaces import Domain


def to_tune(domain: Domain):
    kind = domain.kind
    if kind == "value":
        return domain.value
    if kind == "grid":
        return tune.grid_search(list(domain.grid))
    if kind == "choice":
        return tune.choice(list(domain.choice))
    if kind == "uniform":
        return tune.uniform(*domain.uniform)
    if kind == "loguniform":
        return tune.loguniform(*domain.loguniform)
    if kind == "quniform":
        return tune.quniform(*domain.quniform)
    return tune.randint(*domain.randint)


def grid_size(space) -> int:
    n = 1
    for dom in space.params.values():
        if dom.kind == "grid":
            n *= len(dom.grid)
    return n
