"""What the model cache refuses, and why: exceptions that keep their facts as attributes.

The cache knows no wire codes: the handlers map each class to one
(perfd.handlers.errors.CODES), and an application that embeds perfd catches these
classes directly. Every message says what is wrong and what to do.

CacheError                 (perfd.errors.PerfdError)  .model: the model's name
├── UnknownModel           no such model in the config or defined at run time
├── DefinedInConfig        a run-time definition of a model the config already defines
├── LoaderUnavailable      the model's loader cannot be had (LoaderError's message)
├── CapacityError          the model cannot be given room
│   ├── NoCapacity         its bytes do not fit the device's budget, even after evicting
│   └── TooManyModels      max_models is reached and every loaded model is pinned or in use
├── LoadOverdue            an earlier load ran past load_timeout and still runs
├── StillLoading           a waiter gave up on another request's load
├── LoadTimeout            this load ran past load_timeout
├── LoadFailed             the loader raised
├── NotReady               evict: the model is not loaded (or still loading, or unloading)
│   └── NotLoaded          pin/unpin: the model is not loaded
├── InUse                  evict: leases are held on the model
└── Pinned                 evict: the model is pinned
"""

from __future__ import annotations

from perfd.errors import PerfdError


def gib(n: int) -> str:
    """Bytes as the cache's messages show them: "1.50 GiB"."""
    return f"{n / (1 << 30):.2f} GiB"


class CacheError(PerfdError):
    """Base of what the cache refuses; ``model`` names the model, ``message`` says why."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(message)
        self.model = model
        self.message = message


class UnknownModel(CacheError):
    """No model of that name; ``known`` lists the names there are."""

    def __init__(self, model: str, known: tuple[str, ...]) -> None:
        self.known = known
        names = ", ".join(known) or "none"
        super().__init__(model, f"unknown model '{model}'; known: {names}")


class DefinedInConfig(CacheError):
    """``define`` of a name the config already has: load it by name instead."""

    def __init__(self, model: str) -> None:
        super().__init__(model, f"'{model}' is defined in the config; load it by name")


class LoaderUnavailable(CacheError):
    """The model's ``loader`` cannot be had; ``problem`` is the registry's LoaderError text."""

    def __init__(self, model: str, loader: str, problem: str) -> None:
        self.loader = loader
        self.problem = problem
        super().__init__(model, problem)


class CapacityError(CacheError):
    """The model cannot be given room now."""


class NoCapacity(CapacityError):
    """``need`` bytes do not fit ``device``'s ``budget``: ``fixed`` of it is pinned, in use,
    loading or the device's runtime ``overhead``, so at most ``freeable`` can be freed."""

    def __init__(
        self, model: str, *, device: str, need: int, budget: int, fixed: int, overhead: int = 0
    ) -> None:
        self.device = device
        self.need = need
        self.budget = budget
        self.fixed = fixed
        self.overhead = overhead
        held = "is pinned, in use or loading"
        if overhead:
            held = f"is pinned, in use, loading or perfd's runtime overhead ({gib(overhead)})"
        super().__init__(
            model,
            f"'{model}' needs {gib(need)} on {device}, but only {gib(budget - fixed)} of the "
            f"{gib(budget)} budget can be freed ({gib(fixed)} {held}); "
            "raise [cache] budgets, unpin or evict models",
        )

    @property
    def freeable(self) -> int:
        return self.budget - self.fixed


class TooManyModels(CapacityError):
    """Loading would make ``count`` models, over ``limit`` (max_models), and none can go."""

    def __init__(self, model: str, *, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(
            model,
            f"'{model}' would be model {count} of max_models = {limit}, and every loaded "
            "model is pinned or in use",
        )


class LoadOverdue(CacheError):
    """An earlier load of the model ran past load_timeout and has run ``overdue_s`` more."""

    def __init__(self, model: str, overdue_s: float) -> None:
        self.overdue_s = overdue_s
        super().__init__(
            model,
            f"an earlier load of '{model}' ran past load_timeout and has been running "
            f"{overdue_s:.0f}s more; it is unloaded when it ends, then '{model}' can load "
            "again: retry later",
        )


class StillLoading(CacheError):
    """A request waited ``waited_s`` for another request's load of the model, in vain."""

    def __init__(self, model: str, waited_s: float) -> None:
        self.waited_s = waited_s
        super().__init__(model, f"'{model}' is still loading")


class LoadTimeout(CacheError):
    """The load ran past ``timeout_s`` (load_timeout); its late result will be discarded."""

    def __init__(self, model: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            model,
            f"loading '{model}' took longer than load_timeout ({timeout_s:g}s); it will be "
            "discarded when it finishes",
        )


class LoadFailed(CacheError):
    """The loader raised: ``error_type`` and ``detail`` are its exception's class and text
    (kept as text: the exception itself would hold the failed load's frames in memory)."""

    def __init__(self, model: str, error_type: str, detail: str) -> None:
        self.error_type = error_type
        self.detail = detail
        super().__init__(model, f"loading '{model}' failed: {error_type}: {detail}")


class NotReady(CacheError):
    """The model is not ready to evict: ``state`` is "not loaded", "loading" or "unloading"."""

    def __init__(self, model: str, state: str) -> None:
        self.state = state
        super().__init__(model, f"'{model}' is {state}")


class NotLoaded(NotReady):
    """The model is known but not loaded, so it cannot be pinned or unpinned."""

    def __init__(self, model: str) -> None:
        CacheError.__init__(self, model, f"'{model}' is not loaded; load it first")
        self.state = "not loaded"


class InUse(CacheError):
    """``leases`` requests hold the model: it cannot be evicted until they end."""

    def __init__(self, model: str, leases: int) -> None:
        self.leases = leases
        super().__init__(model, f"'{model}' is in use by {leases} request(s); retry later")


class Pinned(CacheError):
    """The model is pinned: unpin it before evicting it."""

    def __init__(self, model: str) -> None:
        super().__init__(model, f"'{model}' is pinned; unpin it first")
