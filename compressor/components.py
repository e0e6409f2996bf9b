"""Typed records that plugins register, and the interface of each kind of stage.

A component is a named, configurable piece of work. Its ``config`` is a pydantic
model that validates the ``config:`` mapping of a recipe stage. Its ``factory`` takes
the validated config and returns an object with a ``run`` method (and optionally a
``restore`` method, used when a finished stage is resumed from the store).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from compressor.context import StageContext
    from compressor.models.handle import ModelHandle

Kind = Literal["estimator", "pruner", "quantizer", "evaluator"]
KINDS: tuple[str, ...] = ("estimator", "pruner", "quantizer", "evaluator")


class StrictConfig(BaseModel):
    """Base class for component configs: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass
class StageResult:
    """The output of one stage.

    ``data`` must be JSON-serialisable: it is stored and handed back to ``restore``
    when the stage is skipped on resume. ``metrics`` are numeric values stored under
    the stage. ``artifacts`` maps a label to a file or folder path.
    """

    handle: "ModelHandle"
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


class StageImpl(Protocol):
    def run(self, handle: "ModelHandle", ctx: "StageContext") -> StageResult: ...


@dataclass(frozen=True)
class Component:
    """One registered component.

    ``factory(config)`` builds the object that runs the stage. ``plugin`` is filled in
    by the plugin manager with the name of the plugin that registered it.
    """

    name: str
    kind: Kind
    config: type[BaseModel]
    factory: Callable[[BaseModel], StageImpl]
    description: str = ""
    plugin: str = ""

    def build(self, config: BaseModel) -> StageImpl:
        return self.factory(config)
