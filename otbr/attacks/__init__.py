"""Backdoor attacks: triggers, poisoned training sets and poisoned test sets.

Included (all-to-one): ``badnets``, ``blended``, ``sig`` (clean-label), ``wanet``,
``lf`` and ``trojan``. Input-aware and SSBA attacks are *not* included.

Example:
    >>> from otbr.attacks import create_attack, list_attacks
    >>> list_attacks()
    ['badnets', 'blended', 'lf', 'sig', 'trojan', 'wanet']
    >>> attack = create_attack("badnets", target=0, poison_rate=0.1)
    >>> attack.config()["name"]
    'badnets'
"""

from otbr.attacks.badnets import BadNets
from otbr.attacks.base import (
    NOT_INCLUDED,
    Attack,
    PoisonedSet,
    attack_from_config,
    create_attack,
    list_attacks,
    quantize,
    register_attack,
)
from otbr.attacks.blended import Blended
from otbr.attacks.lf import LF
from otbr.attacks.sig import SIG
from otbr.attacks.trojan import Trojan
from otbr.attacks.wanet import WaNet

__all__ = [
    "LF",
    "NOT_INCLUDED",
    "SIG",
    "Attack",
    "BadNets",
    "Blended",
    "PoisonedSet",
    "Trojan",
    "WaNet",
    "attack_from_config",
    "create_attack",
    "list_attacks",
    "quantize",
    "register_attack",
]
