"""The request path to a hosted model, from an HTTP request to SageMaker and back.

Among its modules: ``llmhost.serving.invoke`` calls the ``sagemaker-runtime`` API (plain
and streamed) and ``llmhost.serving.errors`` holds the typed errors every failure on that
path becomes. Nothing is imported or built here, so importing the package costs nothing.
"""
