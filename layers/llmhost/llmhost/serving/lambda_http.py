"""Entry point of the stream function: the OpenAI-compatible server on ``PORT``.

The Lambda Web Adapter starts this (functions/stream/run.sh), waits for ``/health``, then
forwards each function URL request to it and streams the response back as it is written.
uvicorn serves the app on the main thread, so SIGTERM at shutdown ends it gracefully.
Without an API key secret the server refuses to start: the function URL is public, so the
keys are its only lock.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger

from llmhost import runtime
from llmhost.serving.auth import ApiKeyAuth, hashes_from_secret
from llmhost.serving.http_app import ServingHttpApp, serve
from llmhost.serving.ratelimit import KeyRateLimiter, RateLimits


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
    )
    server = serve(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8080")))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
