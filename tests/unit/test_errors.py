"""aot_handbook.errors: a ValueError raised by a check becomes a UserError with the same message; others pass."""

import pytest

from aot_handbook.errors import UserError, user_errors


def test_user_errors_keeps_the_message_and_the_cause():
    with pytest.raises(UserError, match="^recipes/x.yaml: key 'beta' must be > 0$") as err:
        with user_errors():
            raise ValueError("recipes/x.yaml: key 'beta' must be > 0")
    assert isinstance(err.value.__cause__, ValueError) and isinstance(err.value, ValueError)
    with pytest.raises(UserError, match="^run r: metric 'm' not there$"):  # KeyError's message without its quotes
        with user_errors(KeyError):
            raise KeyError("run r: metric 'm' not there")
    with pytest.raises(RuntimeError):  # not a user error: unchanged
        with user_errors():
            raise RuntimeError("a bug")
    original = UserError("already one")
    with pytest.raises(UserError) as err:
        with user_errors():
            raise original
    assert err.value is original
