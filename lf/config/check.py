"""`lf config validate`: every problem of one llamafarm.yaml, collected instead of stopping at the first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lf.config.project import normalise
from lf.config.schema import collect_problems, format_problems, problems_as_json, warning_lines, without_nulls
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
    strict: bool = False  # warnings count as errors

    @property
    def errors(self) -> list:
        return [p for p in self.problems if self.strict or not p.warning]

    @property
    def warnings(self) -> list[str]:
        return [] if self.strict else warning_lines(self.path, self.root, list(self.problems))

    @property
    def valid(self) -> bool:
        return self.unreadable is None and not self.errors

    def error(self) -> ConfigError | None:
        if self.unreadable is not None:
            return self.unreadable
        if self.errors:
            hint = "see the schema with: lf config schema" + (
                "; without --strict, unknown keys are only warnings" if self.strict else ""
            )
            return ConfigError(format_problems(self.path, self.root, self.errors), hint=hint)
        return None

    def to_dict(self) -> dict:
        if self.unreadable is not None:
            problems = [
                {
                    "file": str(self.path),
                    "line": None,
                    "column": None,
                    "field": None,
                    "message": self.unreadable.message,
                    "allowed": None,
                }
            ]
        else:
            problems = problems_as_json(self.path, self.root, self.errors)
        warnings = (
            []
            if self.strict or self.unreadable
            else problems_as_json(self.path, self.root, [p for p in self.problems if p.warning])
        )
        return {"file": str(self.path), "valid": self.valid, "problems": problems, "warnings": warnings}


def check_file(path: Path, strict: bool = False) -> Validation:
    """Read and validate one llamafarm.yaml, collecting every problem instead of stopping at the first."""
    try:
        data, root = read_yaml(path)
    except ConfigError as exc:
        return Validation(path, unreadable=exc, strict=strict)
    data = without_nulls(data)
    problems = tuple(collect_problems(data))
    result = Validation(path, problems, root, None, strict=strict)
    return result if result.errors else Validation(path, problems, root, normalise(path, data, root), strict=strict)
