"""The scoring server of `utkface serve`: MLflow's own (`mlflow.pyfunc.scoring_server`, the app
`mlflow models serve` runs) behind a request-size limit.

A request whose declared size (Content-Length) is over the limit is answered 413 before any of
its body is read; a body sent without a size (chunked) is read here as it arrives and refused
once it passes the limit, so no more than the limit (and one chunk) of it is ever held.
`utkface serve` runs uvicorn with the factory `utkface.inference.server:create_app` (`--factory`),
which reads the model URI and the limit from the environment.

The app answers concurrent requests together (`batching.BatchedModel`). With several workers
on Linux, `utkface serve` forks them after loading the model once (`forked_server`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from utkface.inference.arrowless import keep_arrow_out

MODEL_ENV = "UTKFACE_SERVE_MODEL"
LIMIT_ENV = "UTKFACE_SERVE_MAX_REQUEST_BYTES"
TOO_LARGE_CODE = "REQUEST_LIMIT_EXCEEDED"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def too_large_message(size: int | None, limit: int) -> str:
    what = "request body" if size is None else f"request body of {size} bytes"
    return (
        f"{what} exceeds the limit of {limit} bytes (register.max_request_bytes); "
        "send fewer or smaller images per request"
    )


class RequestSizeLimit:
    """ASGI middleware: HTTP requests larger than `limit` bytes get 413 and a JSON error in
    MLflow's format (`error_code`, `message`)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:  # the HTTP layer holds a body to this length
            if int(declared) > self.limit:
                await self._refuse(send, int(declared))
            else:
                await self.app(scope, receive, send)
            return
        body, more = bytearray(), True  # chunked: read here, never more than limit + a chunk
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(send, None)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, size: int | None) -> None:
        body = json.dumps(
            {"error_code": TOO_LARGE_CODE, "message": too_large_message(size, self.limit)}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def app_for(model: Any, limit: int) -> ASGIApp:
    """MLflow's scoring app for a loaded pyfunc `model`, limited to `limit` bytes a request."""
    from mlflow.pyfunc import scoring_server

    from utkface.inference.batching import BatchedModel

    return RequestSizeLimit(scoring_server.init(BatchedModel(model)), limit)


def create_app() -> ASGIApp:
    """The app for the model in `UTKFACE_SERVE_MODEL`, limited to
    `UTKFACE_SERVE_MAX_REQUEST_BYTES` per request (a worker that loads its own model), without
    Apache Arrow (`arrowless`) as `utkface serve` itself."""
    keep_arrow_out()
    import mlflow

    return app_for(mlflow.pyfunc.load_model(os.environ[MODEL_ENV]), int(os.environ[LIMIT_ENV]))
