"""`lf config validate`: every problem of one llamafarm.yaml, collected instead of stopping at the first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lf.config.project import normalise
from lf.config.schema import collect_problems, format_problems, problems_as_json
from lf.config.yamlfile import read_yaml
from lf.errors import ConfigError


@dataclass(frozen=True)
class Validation:
    """What `lf config validate` found in one file."""

    path: Path
    problems: tuple = ()  # of lf.config.schema.Problem
    root: Any = None  # the YAML node tree, for positions
    project: Any = None  # the normalised project, when the file is valid
    unreadable: ConfigError | None = None  # the file could not be read or parsed as YAML

    @property
    def valid(self) -> bool:
        return self.unreadable is None and not self.problems

    def error(self) -> ConfigError | None:
        if self.unreadable is not None:
            return self.unreadable
        if self.problems:
            return ConfigError(format_problems(self.path, self.root, list(self.problems)), hint="see the schema with: lf config schema")
        return None

    def to_dict(self) -> dict:
        if self.unreadable is not None:
            problems = [{"file": str(self.path), "line": None, "column": None, "field": None, "message": self.unreadable.message, "allowed": None}]
        else:
            problems = problems_as_json(self.path, self.root, list(self.problems))
        return {"file": str(self.path), "valid": self.valid, "problems": problems}


def check_file(path: Path) -> Validation:
    """Read and validate one llamafarm.yaml, collecting every problem instead of stopping at the first."""
    try:
        data, root = read_yaml(path)
    except ConfigError as exc:
        return Validation(path, unreadable=exc)
    problems = tuple(collect_problems(data))
    return Validation(path, problems, root, None if problems else normalise(path, data, root))
