"""Entry point of the stream function: the OpenAI-compatible server on ``PORT``.

The Lambda Web Adapter starts this (functions/stream/run.sh), waits for ``/health``, then
forwards each function URL request to it and streams the response back as it is written.
uvicorn serves the app on the main thread, so SIGTERM at shutdown ends it gracefully.
Without an API key secret the server refuses to start: the function URL is public, so the
keys are its only lock.

SnapStart: this process is the adapter's web app, not Lambda's Python runtime, so the
runtime's hooks (``snapshot_restore_py``) never reach it. The adapter (1.1.0+) calls two
routes instead, an empty POST to ``AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH`` before the
snapshot and to ``AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH`` after a restore, and answers 403 to
anyone else asking for those paths; a non-2xx answer fails the phase. They run
``llmhost.snapstart``'s hooks; each route exists only when its variable names it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmhost import runtime, snapstart
from llmhost.serving.auth import ApiKeyAuth, hashes_from_secret
from llmhost.serving.http_app import AsgiServer, ServingHttpApp
from llmhost.serving.ratelimit import KeyRateLimiter, RateLimits

BEFORE_SNAPSHOT_PATH = "AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH"
AFTER_RESTORE_PATH = "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH"


class SnapStartRoutes:
    """ASGI: the Lambda Web Adapter's SnapStart hook routes, everything else to ``app``."""

    def __init__(self, app: Any, hooks: Mapping[str, Callable[[], None]]) -> None:
        self._app = app
        self._hooks = dict(hooks)

    @classmethod
    def from_env(cls, app: Any, environ: Mapping[str, str] | None = None) -> SnapStartRoutes:
        env = os.environ if environ is None else environ
        warm = snapstart.warm_serving
        hooks: dict[str, Callable[[], None]] = {}
        if before := env.get(BEFORE_SNAPSHOT_PATH, "").strip():
            hooks[before] = lambda: snapstart.before_snapshot(warm)
        if after := env.get(AFTER_RESTORE_PATH, "").strip():
            hooks[after] = lambda: snapstart.after_restore(warm)
        return cls(app, hooks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hook = self._hooks.get(scope.get("path", "")) if scope["type"] == "http" else None
        if hook is None or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        await run_in_threadpool(hook)  # an exception answers 500: the phase fails
        await Response(status_code=204)(scope, receive, send)


def main() -> int:
    # The stream function's Logger (POWERTOOLS_SERVICE_NAME): the library's modules log
    # through it as its children.
    logger = Logger()
    settings = runtime.serving_settings()
    if not settings.api_keys_secret_arn:
        logger.error("API_KEYS_SECRET_ARN is not set: refusing to serve without API keys")
        return 2
    auth = ApiKeyAuth(hashes_from_secret(settings.api_keys_secret_arn))
    app = ServingHttpApp(
        runtime.serving_service,
        auth,
        log=logger.info,
        limiter=KeyRateLimiter(RateLimits.from_env()),
        holds=runtime.hold_policy,
        # OpenAI's Files and Batches, on the jobs' table, bucket and queue (template.yaml).
        batches=runtime.batches,
    )
    server = AsgiServer(
        SnapStartRoutes.from_env(app), host="127.0.0.1", port=int(os.environ.get("PORT", "8080"))
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
