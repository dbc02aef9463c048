"""REST server for a registered maskflow model, with bounded work.

    python -m maskflow.serving.rest models:/maskflow@champion --port 5001 [--max-in-flight 2] [--workers 1]

The request and answer formats are MLflow's scoring protocol (the parsing, the schema
check, ``predict`` and the JSON answer are MLflow's own ``scoring_server.invocations``),
so clients of ``mlflow models serve`` work unchanged. What this server adds, because
``mlflow models serve`` queues without bound and keeps working for clients that are gone:

- at most ``max_in_flight`` requests per worker are admitted (one scored, the rest
  waiting their turn); one more gets **503** with ``Retry-After`` at once instead of
  queueing without bound;
- a body over ``max_body_mib`` gets **413** before it is read (``Content-Length``) or as
  soon as it grows past the limit (chunked);
- work is not started for a client that disconnected while its body was read or queued;
- an empty list of rows gets **400** saying so.

Capacity is ``workers x max_in_flight`` requests at once; each worker loads its own copy
of the model. Raise it with ``--workers`` on a bigger machine, or run replicas behind a
load balancer that retries on 503.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from starlette.requests import ClientDisconnect

from maskflow.errors import ModelNotFound, UserError, cli

# uvicorn is imported inside the functions that use it: importing this
# module (a CLI's --help, a spawned worker, another stage) stays fast without it.

log = logging.getLogger("maskflow.serving.rest")

# Bodies this short are parsed once more to give an empty request its own message; an
# empty request is always short, and long bodies are parsed by MLflow alone.
_EMPTY_CHECK_BYTES = 4096
_ROW_KEYS = ("dataframe_records", "instances", "inputs")


@dataclass(frozen=True)
class Limits:
    """What one worker accepts; the defaults fit one worker on a 2-core CPU."""

    # Requests admitted at once: one is scored, the rest wait their turn, so the longest
    # wait is about max_in_flight x one request's time.
    max_in_flight: int = 4
    max_body_mib: float = 64.0
    # Retry-After when no request has finished yet; afterwards the recent mean latency.
    retry_after_s: int = 1

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mib * 2**20)


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status_code=status, headers=headers)


def _has_no_rows(body: bytes, content_type: str) -> bool:
    if len(body) > _EMPTY_CHECK_BYTES or not content_type.startswith("application/json"):
        return False
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # MLflow answers malformed JSON itself
    if not isinstance(parsed, dict):
        return False
    if isinstance(parsed.get("dataframe_split"), dict):
        return parsed["dataframe_split"].get("data") == []
    return any(parsed.get(key) in ([], {}) for key in _ROW_KEYS)


class _Admission:
    """Counts requests in flight; a slot is freed when its work ends, not when its client leaves."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.refused = 0
        self.abandoned = 0
        self.latencies: deque[float] = deque(maxlen=20)

    def retry_after(self) -> str:
        if not self.latencies:
            return str(self.limits.retry_after_s)
        return str(max(1, math.ceil(sum(self.latencies) / len(self.latencies))))

    def release(self, started: float | None = None) -> None:
        self.in_flight -= 1
        if started is not None:
            self.latencies.append(time.perf_counter() - started)


def create_app(model, limits: Limits = Limits()) -> FastAPI:
    """The scoring app for a loaded pyfunc model (``mlflow.pyfunc.load_model``)."""
    app = FastAPI(title="maskflow")
    admission = _Admission(limits)
    app.state.admission = admission
    input_schema = model.metadata.get_input_schema()
    # One scoring thread: the finders keep per-call state (OpenCV's YuNet input size) and one
    # prediction already uses every core, so admitted requests take turns.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
    scoring_turn = asyncio.Lock()

    @app.get("/ping")
    @app.get("/health")
    async def ping() -> Response:
        return Response("\n", media_type="application/json")

    @app.get("/version")
    async def version() -> Response:
        return Response(scoring_server.VERSION, media_type="application/json")

    @app.get("/limits")
    async def current_limits() -> JSONResponse:
        return JSONResponse({**asdict(limits), "in_flight": admission.in_flight, "refused": admission.refused,
                             "abandoned": admission.abandoned})

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_body_bytes:
            return _error(413, f"request body of {int(length) / 2**20:.1f} MiB is over the {limits.max_body_mib:g} MiB limit",
                          "REQUEST_TOO_LARGE", {"Connection": "close"})
        if admission.in_flight >= limits.max_in_flight:
            admission.refused += 1
            return _error(503, f"server busy: {admission.in_flight} requests in flight, the limit is {limits.max_in_flight}; "
                          "retry later", "TEMPORARILY_UNAVAILABLE", {"Retry-After": admission.retry_after()})
        admission.in_flight += 1
        handed_over = False
        try:
            body = bytearray()
            try:
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limits.max_body_bytes:
                        return _error(413, f"request body is over the {limits.max_body_mib:g} MiB limit",
                                      "REQUEST_TOO_LARGE", {"Connection": "close"})
            except ClientDisconnect:
                admission.abandoned += 1
                log.info("client left while sending its request; not scoring it")
                return Response(status_code=499)
            content_type = request.headers.get("content-type", "")
            if _has_no_rows(bytes(body), content_type):
                return _error(400, "the request has no rows: send at least one image", "INVALID_PARAMETER_VALUE")
            async with scoring_turn:
                # Checked when its turn comes: a client that timed out while waiting is gone.
                if await request.is_disconnected():
                    admission.abandoned += 1
                    log.info("client left before its request was scored; not scoring it")
                    return Response(status_code=499)
                started = time.perf_counter()
                future = asyncio.get_running_loop().run_in_executor(
                    executor, scoring_server.invocations, bytes(body), content_type, model, input_schema)
                future.add_done_callback(lambda _: admission.release(started))
                handed_over = True
                try:
                    result = await asyncio.shield(future)
                except MlflowException as exc:
                    return Response(exc.serialize_as_json(), status_code=exc.get_http_status_code(),
                                    media_type="application/json")
            return Response(result.response, status_code=result.status, media_type=result.mimetype)
        finally:
            if not handed_over:
                admission.release()

    return app


_ENV = "MASKFLOW_REST_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: each worker loads the model named in the environment."""
    import mlflow.pyfunc

    settings = json.loads(os.environ[_ENV])
    model = mlflow.pyfunc.load_model(settings.pop("model"))
    return create_app(model, Limits(**settings))


def _free(host: str, port: int) -> None:
    """Stop before loading anything when the port is taken (uvicorn would say so late, in a log)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): stop what serves there, or pass --port N") from exc


def _resolves(uri: str) -> None:
    """A models:/ URI names a registered version (other URIs are checked when loaded)."""
    import mlflow

    from maskflow.tracking import registered_version

    if uri.startswith("models:/"):
        try:
            registered_version(mlflow.MlflowClient(), uri)
        except Exception as exc:  # noqa: BLE001 - MLflow's message names what is missing
            raise ModelNotFound.at(uri, mlflow.get_tracking_uri(), exc, "set MLFLOW_TRACKING_URI") from exc


@cli("maskflow.serving.rest")
def main(argv: list[str] | None = None) -> int:
    import uvicorn

    defaults = Limits()
    parser = argparse.ArgumentParser(prog="python -m maskflow.serving.rest", description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models:/maskflow@champion", help="model URI (default: the champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own model copy")
    parser.add_argument("--max-in-flight", type=int, default=defaults.max_in_flight,
                        help="requests admitted at once per worker (one scored, the rest waiting); more get 503")
    parser.add_argument("--max-body-mib", type=float, default=defaults.max_body_mib, help="larger bodies get 413")
    args = parser.parse_args(argv)
    if args.max_in_flight < 1 or args.workers < 1 or args.max_body_mib <= 0:
        parser.error("--workers and --max-in-flight must be at least 1, --max-body-mib above 0")
    _free(args.host, args.port)
    _resolves(args.model)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ[_ENV] = json.dumps({"model": args.model, "max_in_flight": args.max_in_flight,
                                   "max_body_mib": args.max_body_mib})
    log.info("serving %s on %s:%d: %d worker(s) x %d requests in flight, bodies up to %g MiB", args.model, args.host,
             args.port, args.workers, args.max_in_flight, args.max_body_mib)
    uvicorn.run("maskflow.serving.rest:app_from_env", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
