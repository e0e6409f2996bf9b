"""Exceptions that compressor reports to users as a message, without a traceback."""


class CompressorError(Exception):
    """An error whose message states what is wrong, with which value, and what to do next."""


class RecipeError(CompressorError):
    """A recipe is invalid. The message names the key path and, where known, the YAML line."""
