"""User errors end a flow run Failed with one clear line, not a traceback."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.states import Failed

from tasks.predict import ModelNotFound
from tasks.tracking import TrackingUnavailable
from training.errors import ConfigError, DataError

# problems with the input, the settings or the environment that the user fixes; anything else is a bug and
# keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ConfigError, ModelNotFound, TrackingUnavailable)


def fail_cleanly(*more: type[BaseException]) -> Callable:
    """Decorate a flow function: a user error becomes a Failed state whose message is the error, untraced."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (*USER_ERRORS, *more) as exc:
                message = f"{type(exc).__name__}: {exc}"
                get_run_logger().error(message)
                return Failed(message=message)

        # Prefect reads the parameters from the signature: give it fn's, with its annotations already resolved
        # (they are strings under `from __future__ import annotations`, and this module cannot resolve them)
        wrapper.__signature__ = inspect.signature(fn, eval_str=True)
        return wrapper

    return decorate
