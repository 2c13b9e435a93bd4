"""Shared test settings."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_net, train_backdoor


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add overhead on a shared 2-core CPU (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backdoored():
    """A tiny model trained with a real 3×3-patch backdoor toward class 0 (``helpers.train_backdoor``), once per
    test module: ``(net, (test x, test y), clean subset)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, test, clean = train_backdoor(tiny_net(), clean=200)
        yield net, test, clean
    finally:
        torch.set_num_threads(threads)
