"""otbr — remove backdoors from trained image classifiers, with or without data.

Example:
    >>> import otbr
    >>> model, meta = otbr.load_model("model.safetensors")  # doctest: +SKIP
"""

from otbr.errors import OtbrError

__version__ = "0.1.0"

__all__ = ["OtbrError", "__version__", "load_model", "save_model"]


def __getattr__(name: str):  # lazy, so `import otbr` stays cheap
    if name in ("load_model", "save_model"):
        from otbr.models import io

        return getattr(io, name)
    raise AttributeError(name)
