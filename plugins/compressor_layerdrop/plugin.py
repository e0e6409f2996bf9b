"""Registration of the layerdrop components."""

from compressor.hookspecs import hookimpl  # noqa: F401
