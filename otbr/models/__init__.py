"""Architectures, the model registry and model files.

Example:
    >>> from otbr.models import create_model, list_architectures
    >>> "preactresnet18" in list_architectures()
    True
"""

from otbr.models.io import ModelMeta, build_model, file_sha256, load_model, read_meta, save_model
from otbr.models.normalize import Normalized, unwrap
from otbr.models.preact import PreActResNet18
from otbr.models.registry import (
    count_parameters,
    create_model,
    is_custom_arch,
    list_architectures,
    output_classes,
    register_model,
)
from otbr.models.tiny import TinyCNN
from otbr.models.vgg import VGG

__all__ = [
    "VGG",
    "ModelMeta",
    "Normalized",
    "PreActResNet18",
    "TinyCNN",
    "build_model",
    "count_parameters",
    "create_model",
    "file_sha256",
    "is_custom_arch",
    "list_architectures",
    "load_model",
    "output_classes",
    "read_meta",
    "register_model",
    "save_model",
    "unwrap",
]
