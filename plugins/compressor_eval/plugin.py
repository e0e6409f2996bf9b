"""Registration of the eval components."""

from compressor.hookspecs import hookimpl  # noqa: F401
