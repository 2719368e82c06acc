"""``llmhost``: the command line for a local (``make run``) or deployed llmhost stack.

Shipped with the llmhost package but never in the Lambda layer (the layer's Makefile copies
only ``llmhost/``). ``target`` finds the stack and its credentials, ``client`` talks to it
(SigV4 for the control API, an API key for the OpenAI-compatible one), ``errors`` names what
can go wrong and its exit code, ``commands`` is the click application; ``watch`` follows a
deployment's history, ``feed`` follows traces, ``ingest`` (with ``progress``) reads folders
into batches of documents, ``specfile`` reads specs, ``render`` prints.
"""
