"""Running a function with the global torch RNG forked and seeded from its own ``seed`` argument.

Dropout layers in training mode draw from the global RNG. A step that trains a model (unlearning, fine-tuning)
is reproducible only if that RNG starts from the step's own seed, and it should leave the caller's RNG as it found
it. :func:`seeded_global_rng` does both for any function whose first argument is the model and that takes a
``seed`` parameter.

Example:
    >>> import torch
    >>> @seeded_global_rng
    ... def draw(model, seed: int = 0):
    ...     return torch.rand(1).item()
    >>> net = torch.nn.Linear(1, 1)
    >>> before = torch.random.get_rng_state()
    >>> draw(net, seed=3) == draw(net, seed=3), torch.equal(before, torch.random.get_rng_state())
    (True, True)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from otbr.device import model_device

F = TypeVar("F", bound=Callable[..., Any])


def seeded_global_rng(fn: F) -> F:
    """Decorate ``fn(model, …, seed=…)`` so it runs with the global torch RNG (and the model's CUDA device's)
    forked and seeded with its ``seed`` argument, given or default."""
    signature = inspect.signature(fn)
    if "seed" not in signature.parameters:
        raise TypeError(f"seeded_global_rng: {fn.__name__} takes no seed parameter")

    @functools.wraps(fn)
    def wrapper(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(model, *args, **kwargs)
        bound.apply_defaults()
        dev = model_device(model)
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(int(bound.arguments["seed"]))
            return fn(model, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
