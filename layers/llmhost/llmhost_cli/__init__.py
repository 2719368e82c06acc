"""``llmhost``: the command line for a local (``make run``) or deployed llmhost stack.

Shipped with the llmhost package but never in the Lambda layer (the layer's Makefile copies
only ``llmhost/``). Modules: ``target`` finds the stack and its credentials, ``client``
talks to it, ``ingest`` turns files into batches of documents, ``watch`` follows a
deployment's history, ``render`` prints, ``commands`` is the click application.
"""
