"""Wall time per pipeline stage, recorded by operators into one shared dict."""

from __future__ import annotations

import time
from typing import Any, TypeVar

OperatorClass = TypeVar("OperatorClass", bound=type)


class TimedCompute:
    """Mixin for a MONAI Deploy operator: adds compute()'s wall time to ``stage_times[stage]``
    (several operators may share a stage: the output writers all count as "write").

    Put it first in the bases; set ``stage`` and ``stage_times`` after construction.
    """

    stage: str = ""
    stage_times: dict[str, float]

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        started = time.perf_counter()
        try:
            super().compute(op_input, op_output, context)  # type: ignore[misc]
        finally:
            self.stage_times[self.stage] = self.stage_times.get(self.stage, 0.0) + time.perf_counter() - started


def timed(operator: OperatorClass, stage: str) -> OperatorClass:
    """``operator`` with `TimedCompute` first in its bases: each compute()'s wall time counts to ``stage``."""
    return type(f"Timed{operator.__name__}", (TimedCompute, operator), {"stage": stage})  # type: ignore[return-value]
