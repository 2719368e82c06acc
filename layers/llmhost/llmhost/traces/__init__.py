"""Prompt monitoring: one trace per sampled request, from ``llmhost.observe``'s observation.

- ``record``: the trace (the API's JSON view) built from a ``RequestObservation``, with the
  OpenTelemetry GenAI semantic-convention attribute names, and the head-sampling decision.
- ``redact``: what ``TraceContent`` keeps of the request's text (full, redacted, none).
- ``store``: the traces table (DynamoDB, TTL ``expires_at``), and ``view_from_item``.
- ``recorder``: the ``RequestObserver`` that samples, builds and stores a trace.
"""
