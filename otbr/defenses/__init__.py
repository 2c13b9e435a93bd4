"""Defenses, one module per method, all registered by name.

Example:
    >>> from otbr.defenses import create_defense
    >>> d = create_defense("otbr", gamma=0.05)  # doctest: +SKIP
"""

from otbr.defenses.base import (
    Defense,
    DefenseResult,
    create_defense,
    list_defenses,
    register_defense,
)

__all__ = ["Defense", "DefenseResult", "create_defense", "list_defenses", "register_defense"]
