"""`orm_step`: Django's connection hygiene around a saga step that uses the ORM."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import close_old_connections

__all__ = ["orm_step"]

P = ParamSpec("P")
R = TypeVar("R")


def orm_step(function: Callable[P, R]) -> Callable[P, R]:
    """Decorate a plain ``def`` step or compensation that uses the Django ORM (put it
    below ``@action``/``@compensate``).

    sagaz runs sync steps in worker threads, where the ORM may run (it refuses to run on
    an event loop's thread, so ORM steps must not be ``async def``: TypeError here). Those
    threads serve no request, so nothing would ever close their connections: this closes
    unusable or expired ones (CONN_MAX_AGE) before and after the step, as Django does
    around each request - a worker then survives a database restart and keeps no idle
    connection per thread.
    """
    if inspect.iscoroutinefunction(function):
        raise TypeError(
            f"orm_step: {function.__qualname__} is async; steps that use the Django ORM "
            "must be plain def functions (sagaz runs them in threads)"
        )

    @functools.wraps(function)
    def step(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return step
