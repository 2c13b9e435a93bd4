"""Defenses, one module per method, all registered by name.

Importing this package registers every shipped defense.

Example:
    >>> from otbr.defenses import create_defense, list_defenses
    >>> list_defenses()["otbr"].needs
    'none'
    >>> d = create_defense("otbr", gamma=0.05, input_shape=(1, 28, 28))
"""

from otbr.defenses import anp as _anp  # noqa: F401  (registers "anp")
from otbr.defenses import clp as _clp  # noqa: F401  (registers "clp")
from otbr.defenses import fp as _fp  # noqa: F401  (registers "fp")
from otbr.defenses import ft as _ft  # noqa: F401  (registers "ft")
from otbr.defenses import otbr as _otbr  # noqa: F401  (registers "otbr")
from otbr.defenses import tsbd as _tsbd  # noqa: F401  (registers "tsbd")
from otbr.defenses import ulrl as _ulrl  # noqa: F401  (registers "ulrl")
from otbr.defenses.base import (
    Defense,
    DefenseResult,
    create_defense,
    list_defenses,
    register_defense,
)

__all__ = ["Defense", "DefenseResult", "create_defense", "list_defenses", "register_defense"]
