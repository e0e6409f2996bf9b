"""Registration of the gptq components."""

from compressor.hookspecs import hookimpl  # noqa: F401
