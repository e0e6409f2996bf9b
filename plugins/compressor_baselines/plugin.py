"""Registration of the baselines components."""

from compressor.hookspecs import hookimpl  # noqa: F401
