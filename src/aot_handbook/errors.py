"""Errors a user can fix, and how they reach the command line.

The convention, for every ``aot-*`` command (``aot_handbook.cli`` is the one place that applies it):

- ``UserError`` (a ``ValueError``): a mistake the user can fix: a recipe key, a file, a column, a run folder.
  Its message names the culprit; the command prints ``error: <message>`` on one line and exits 1.
- ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) is a user error too (a path, a disk): one line,
  exit 1. So is ``KeyboardInterrupt`` (``interrupted``, exit 130).
- Anything else is a bug or a failure of long work (a NaN at step 120, a ``ValueError`` raised inside a
  training step) and keeps its traceback.

Code that checks user input either raises ``UserError`` or runs its checks inside ``user_errors()``, which turns
a ``ValueError`` (e.g. from ``parse_recipe``, ``DatasetMixture.from_dict`` or a config's ``__post_init__``)
into a ``UserError`` with the same message. Long work (training, sampling, generation) runs outside such a block,
so what goes wrong there keeps its type and traceback.
"""

from __future__ import annotations

import contextlib


class UserError(ValueError):
    """A mistake the user can fix; the message names it (the key, the file, the column, the run)."""


@contextlib.contextmanager
def user_errors(*types: type[BaseException]):
    """Turn ``ValueError`` (and ``types``) raised in the block into ``UserError``, keeping the message."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, *types) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise UserError(message) from err
