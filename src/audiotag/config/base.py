"""The base of every configuration schema: unknown keys are errors, assignments are validated."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from audiotag.core.paths import inside_problem, name_problem


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _plain_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name


# a config value that becomes a file or folder name (core/paths.py's one rule for such names)
PlainName = Annotated[str, AfterValidator(_plain_name)]


def _inside(path: str) -> str:
    problem = inside_problem(path) if path.strip() else "is empty"
    if problem is not None:
        raise ValueError(
            f"{path!r} {problem}: a path a config names is relative to its folder (data_dir) and stays "
            "inside it (a symbolic link placed there is followed)"
        )
    return path


# a config value naming a file or folder inside another (data_dir): core/paths.py's one rule for them
InsidePath = Annotated[str, AfterValidator(_inside)]
