"""The served model's guard on MLflow's scoring server: malformed requests get 4xx, never 500.

``mlflow models serve`` (MLflow 3.17) reads a request's whole body and hands it to
``mlflow.pyfunc.scoring_server.invocations``, which

- answers 500 (an uncaught error) for a request without a ``Content-Type``, for JSON nested deeper
  than Python's recursion limit and for an integer literal of more than 4,300 digits;
- parses a body of any size, and echoes a body that is not JSON whole in its error message (a 100 MB
  body of garbage gets a 100 MB answer).

Errors raised by the model itself already come back as 400 with their message (the model raises
MLflow's ``INVALID_PARAMETER_VALUE``). :func:`install`, called by the served model (``pyfunc.py``) when
the scoring server loads it, wraps ``invocations`` in that process so that a body above
``max_request_bytes`` gets 413 before it is parsed, a JSON body is parsed here (400 with the reason
when it cannot be) and every error message is cut to a readable length. The body has been read into
memory by then: a reverse proxy with a body-size limit is still what caps the bytes a client can send.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Callable

log = logging.getLogger(__name__)

SERVER_ENV = "__pyfunc_model_path__"  # set by `mlflow models serve` for the uvicorn process it starts
MAX_MESSAGE = 3000  # characters of an error message kept (its start and its end, where the reason is)


def in_scoring_server() -> bool:
    """True in the process of ``mlflow models serve`` (not in ``mlflow.pyfunc.load_model`` elsewhere)."""
    return SERVER_ENV in os.environ


def install(max_request_bytes: int) -> None:
    """Wrap this process's ``scoring_server.invocations`` (once) with :func:`guarded`."""
    from mlflow.pyfunc import scoring_server

    if not getattr(scoring_server.invocations, "activessf_guard", False):
        scoring_server.invocations = guarded(scoring_server.invocations, max_request_bytes)
        log.info("scoring server guarded: bodies above %s bytes get 413", f"{max_request_bytes:,}")


def guarded(invocations: Callable, max_request_bytes: int) -> Callable:
    """``invocations(data, content_type, model, input_schema)`` that refuses what the original would
    answer with 500 or an oversized echo: see the module docstring."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST
    from mlflow.pyfunc.scoring_server import InvocationsResponse

    def refuse(status: int, message: str):
        body = json.dumps({"error_code": "BAD_REQUEST", "message": message})
        return InvocationsResponse(response=body, status=status, mimetype="application/json")

    @functools.wraps(invocations)
    def wrapper(data, content_type, model, input_schema):
        if len(data) > max_request_bytes:
            return refuse(413, f"the request body is {len(data):,} bytes, above the limit of "
                               f"{max_request_bytes:,} bytes (register.max_request_bytes): send fewer or "
                               "smaller images per request")
        if not content_type:
            return refuse(415, "the request has no Content-Type: send JSON with 'Content-Type: application/json'")
        if content_type.split(";")[0].strip() == "application/json":
            try:
                parsed = json.loads(data)
            except RecursionError:
                raise MlflowException("the request body is JSON nested too deeply to parse", BAD_REQUEST) from None
            except ValueError as exc:  # not JSON, not UTF-8, or an integer literal beyond Python's limit
                raise MlflowException(f"the request body is not valid JSON: {shorten(str(exc))}",
                                      BAD_REQUEST) from None
            if isinstance(parsed, dict):  # MLflow takes a parsed dict as it is; anything else it refuses
                data = parsed
        try:
            return invocations(data, content_type, model, input_schema)
        except MlflowException as exc:
            exc.message = shorten(exc.message)
            raise

    wrapper.activessf_guard = True
    return wrapper


def shorten(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut to about ``limit`` characters, keeping its start and its end."""
    if len(message) <= limit:
        return message
    head, tail = limit // 3, limit - limit // 3
    return f"{message[:head]} [... {len(message) - head - tail:,} characters cut ...] {message[-tail:]}"
