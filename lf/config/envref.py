"""References to environment variables in llamafarm.yaml: `${VAR}`, `${VAR:-default}` and LlamaFarm's `${env:VAR}`."""

from __future__ import annotations

import os
import re

_ENV_REF = re.compile(r"^\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$")


def expand_env_ref(value: str | None) -> str | None:
    """`${VAR}`, `${env:VAR}` or `${VAR:-default}` → the variable's value; anything else as it is."""
    if value is None:
        return None
    match = _ENV_REF.match(value.strip())
    if not match:
        return value
    return os.environ.get(match.group(1), match.group(2))


def is_env_ref(value: str) -> bool:
    return _ENV_REF.match(value.strip()) is not None


def env_ref_name(value: str) -> str | None:
    """The variable an `${env:NAME}` reference names; None for anything else."""
    match = _ENV_REF.match(value.strip())
    return match.group(1) if match else None
