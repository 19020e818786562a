"""Checks of stage params at plan time: all problems of a model at once, and costly checks run once a plan.

`Problems` gathers a params model's problems so that one validation reports every one at its field.
`CheckCache` keeps the results of costly checks for one plan (the planner passes one in the validation
context under `CHECK_CACHE`); `checked_once` uses it where it is given. A leaf: imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError, ValidationInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from perfscale.errors import BadInput

if TYPE_CHECKING:
    from perfscale.spec.site import Site


@dataclass
class Problems:
    """Problems of a params model, gathered so that one validation reports all of them, each at its field
    (pydantic stops at the first error a model validator raises)."""

    found: list[InitErrorDetails] = field(default_factory=list)

    def add(self, loc: tuple[str | int, ...], message: str, value: Any = None) -> None:
        """One problem at `loc`; `value`, where given, is quoted after the message."""
        error = PydanticCustomError("problem", "{message}", {"message": message})
        self.found.append(InitErrorDetails(type=error, loc=loc, input=value))

    @contextmanager
    def check(self, *loc: str | int, value: Any = None) -> Iterator[None]:
        """Record the ValueError (or BadInput) raised inside as a problem at `loc`."""
        try:
            yield
        except (ValueError, BadInput) as exc:
            self.add(loc, str(exc), value)

    def extend(self, found: list[InitErrorDetails]) -> None:
        self.found.extend(found)

    def raise_all(self, model: type[BaseModel], before: ValidationError | None = None) -> None:
        """Raise one ValidationError with `before`'s errors (field validation) and these problems, if any."""
        if before is None and not self.found:
            return
        errors = [] if before is None else [_as_detail(e) for e in before.errors()]
        raise ValidationError.from_exception_data(model.__name__, [*errors, *self.found])


def _as_detail(error: Any) -> InitErrorDetails:
    """A pydantic error again as raisable details, with its type and message kept."""
    custom = PydanticCustomError(error["type"], "{message}", {"message": error["msg"]})
    return InitErrorDetails(type=custom, loc=tuple(error["loc"]), input=error.get("input"))


#: the validation-context key of the planner's CheckCache
CHECK_CACHE = "checks"
T = TypeVar("T")


class CheckCache:
    """Results of params checks, kept for one plan, by what the checks read (and the site).

    Planning validates a stage's params at every grid point, but grids mostly vary values that the costly
    checks (counter events against perf, PAPI and the site; templates; FOM regexes) do not read. The planner
    passes one cache per plan in the validation context, with the site, so such a check runs once per
    distinct input: a 10,000-point grid over sizes and threads checks its events once, a grid over event
    lists once per list. The site is part of every key: what one site's nodes can count, another's may not.
    """

    def __init__(self, site: Site | None):
        self.site = site
        self._site_key = None if site is None else site.model_dump_json()
        self._results: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """compute()'s result for `key`, computed on first use."""
        full = (self._site_key, key)
        if full not in self._results:
            self._results[full] = compute()
        return self._results[full]


def checked_once(info: ValidationInfo, key: Callable[[], Hashable], compute: Callable[[], T]) -> T:
    """compute() through the plan's CheckCache where the planner gave one, else every time (a task
    re-validating its params where it runs). `key()` must stand for every input of compute but the site."""
    cache = (info.context or {}).get(CHECK_CACHE)
    return compute() if cache is None else cache.get(key(), compute)


def freeze(value: Any) -> Hashable:
    """A hashable stand-in for a JSON-like value, typed so that 1, 1.0 and True stay apart."""
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("list", tuple(freeze(v) for v in value))
    return (type(value).__name__, value)
