"""The base of every configuration schema: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from audiotag.core.paths import name_problem


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _plain_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


# a config value that becomes a file or folder name (core/paths.py's one rule for such names)
PlainName = Annotated[str, AfterValidator(_plain_name)]
