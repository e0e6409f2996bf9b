"""Registration of the shapley components."""

from compressor.hookspecs import hookimpl  # noqa: F401
