"""The scoring server of `utkface serve`: MLflow's own (`mlflow.pyfunc.scoring_server`, the app
`mlflow models serve` runs) behind a request-size limit.

A request whose declared size (Content-Length) is over the limit is answered 413 before any of
its body is read; a body sent without a size (chunked) is read here as it arrives and refused
once it passes the limit, so no more than the limit (and one chunk) of it is ever held.
`utkface serve` runs uvicorn with the factory `utkface.inference.server:create_app` (`--factory`),
which reads the model URI and the limit from the environment.

The app answers concurrent requests together (`BatchedModel`): MLflow's app runs each request's
`predict` in a thread of its own, while most of an answer's time is Python holding the
interpreter lock, so one `predict` call over the images of all requests waiting costs less
than one call each.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import Future
from typing import Any

import pandas as pd

MODEL_ENV = "UTKFACE_SERVE_MODEL"
ROW = "row"  # the served model's column: which input row an answer row belongs to
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


class BatchedModel:
    """A served pyfunc whose `predict` answers, in one call of the model, the requests that
    wait for it with the same params: one thread runs the model, and while a call runs the
    requests arriving queue for the next, which takes them all (so a lone request waits for
    nothing). A batch in which some image is refused is answered again request by request, so
    each request gets its own answer or its own error, exactly as from the model alone."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.metadata = model.metadata
        self.waiting: list[tuple[pd.DataFrame, dict[str, Any] | None, Future]] = []
        self.ready = threading.Condition()
        threading.Thread(target=self._run, name="batched-predict", daemon=True).start()

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if not isinstance(data, pd.DataFrame):
            return self.model.predict(data, params=params)
        answer: Future = Future()
        with self.ready:
            self.waiting.append((data, params, answer))
            self.ready.notify()
        return answer.result()

    def _run(self) -> None:
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.waiting)
                params = self.waiting[0][1]
                batch = [item for item in self.waiting if item[1] == params]
                self.waiting = [item for item in self.waiting if item[1] != params]
            self._answer(batch, params)

    def _answer(
        self, batch: list[tuple[pd.DataFrame, Any, Future]], params: dict[str, Any] | None
    ) -> None:
        if len(batch) == 1:
            data, _, answer = batch[0]
            try:
                answer.set_result(self.model.predict(data, params=params))
            except Exception as error:  # the request's own error, as the model raised it
                answer.set_exception(error)
            return
        try:
            frames = [data for data, _, _ in batch]
            whole = self.model.predict(pd.concat(frames, ignore_index=True), params=params)
            parts = split_rows(whole, [len(data) for data, _, _ in batch])
        except Exception:  # a refused image (or a model without rows): each on its own
            for item in batch:
                self._answer([item], params)
            return
        for (_, _, answer), part in zip(batch, parts, strict=True):
            answer.set_result(part)


def split_rows(answers: pd.DataFrame, sizes: list[int]) -> list[pd.DataFrame]:
    """The answers to inputs of `sizes` rows each, asked together: each input's rows (by the
    `row` they answer), numbered from 0 again."""
    parts, start = [], 0
    for size in sizes:
        part = answers[answers[ROW].between(start, start + size - 1)].reset_index(drop=True)
        part[ROW] -= start
        parts.append(part)
        start += size
    return parts


def create_app() -> ASGIApp:
    """MLflow's scoring app for the model in `UTKFACE_SERVE_MODEL`, limited to
    `UTKFACE_SERVE_MAX_REQUEST_BYTES` per request."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = BatchedModel(mlflow.pyfunc.load_model(os.environ[MODEL_ENV]))
    return RequestSizeLimit(scoring_server.init(model), int(os.environ[LIMIT_ENV]))
