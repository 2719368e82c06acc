#!/bin/sh
# Started by the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap): the
# OpenAI-compatible server, streaming through the function URL in RESPONSE_STREAM mode.
exec python3 -m llmhost.serving.lambda_http
