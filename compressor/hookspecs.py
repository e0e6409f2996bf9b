"""Hook specifications of compressor.

Each hook receives a ``register`` callable. A plugin calls it once per component it
provides, with a :class:`compressor.components.Component` (or, for the architecture
hook, a :class:`compressor.models.adapters.ArchitectureAdapter`).
"""

import pluggy

hookspec = pluggy.HookspecMarker("compressor")
hookimpl = pluggy.HookimplMarker("compressor")


@hookspec
def register_estimators(register):
    """Register layer-importance estimators (kind ``estimator``)."""


@hookspec
def register_pruners(register):
    """Register pruners that remove layers from a model (kind ``pruner``)."""


@hookspec
def register_quantizers(register):
    """Register weight quantizers (kind ``quantizer``)."""


@hookspec
def register_evaluators(register):
    """Register evaluators that measure a model and return metrics (kind ``evaluator``)."""


@hookspec
def register_architectures(register):
    """Register architecture adapters that locate a model family's decoder layers."""
