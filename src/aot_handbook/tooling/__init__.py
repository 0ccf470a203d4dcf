"""Tooling around the core: recipe validation, sweeps, the reproduction grid and the GPU check.

These plan and check runs; they never train or evaluate by themselves but call the core (``aot_handbook.plan``,
``aot_handbook.training``, ``aot_handbook.evaluation``). The core never imports this package.
"""

from ..errors import UserError


class ValidationError(UserError):
    """A bad recipe, sweep, grid, evaluation recipe or accelerate config; the message names the file and the key."""


def fail(path, key: str | None, why: str) -> ValidationError:
    """The error for ``key`` of the file ``path`` (or the whole file)."""
    return ValidationError(f"{path}: key '{key}': {why}" if key else f"{path}: {why}")
