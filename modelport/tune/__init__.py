"""The accuracy-budget search: which layers to keep out of INT8 so that an artifact meets `--budget`.

`parse_budget` reads the expression; `search` builds and judges candidates on the target runtime and writes the
fastest that meets it, `search_closest` the closest whether it meets or not (see search.py). Backends are reached
through builder and `exclude.TO_OPTIONS` only.
"""

from modelport.tune.budget import Budget, parse_budget
from modelport.tune.search import Outcome, search, search_closest

__all__ = ["Budget", "Outcome", "parse_budget", "search", "search_closest"]
