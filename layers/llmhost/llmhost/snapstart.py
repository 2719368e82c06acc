"""Lambda SnapStart hooks of the functions that embed or retrieve (serve, stream, ingest).

With SnapStart, Lambda runs a published version's init phase once, takes a Firecracker
snapshot of the memory and disk, and starts later environments by restoring that snapshot
(https://docs.aws.amazon.com/lambda/latest/dg/snapstart.html). So the work done before the
snapshot is paid once per published version, not once per cold start; and whatever the
snapshot holds is shared by every environment restored from it.

``before_snapshot`` builds what a first request would: the imports, the ONNX session (with
one inference, so its buffers are allocated), the Qdrant client and the AWS clients. It reads
no registry record and no API key hashes (the stream function reads those on its first
request), nothing that could be stale by the time an environment is restored; the one read
is the Qdrant API key's secret, when one is set, to build the server client, and that client
is built again, key read again, after each restore.

``after_restore`` refreshes what must not be shared between restored environments
(https://docs.aws.amazon.com/lambda/latest/dg/snapstart-uniqueness.html): Python's ``random``
is re-seeded from the kernel (botocore's retry jitter draws from it); every
AWS client and its connection pool is built again from a new session, which resolves the
restored environment's own credentials (SnapStart functions get container credentials,
https://docs.aws.amazon.com/lambda/latest/dg/snapstart-activate.html#snapstart-credentials);
the objects holding those clients or a Qdrant server connection are built again too. Then it
builds them eagerly, as before the snapshot, so the first request finds them ready. The ONNX
session holds no connection and is kept: it is what the snapshot is for. Lambda gives the
after-restore hooks 10 seconds (``SnapStartTimeoutException`` past that): this takes tens of
milliseconds, all imports being done.

serve and ingest run in Lambda's Python runtime, which calls the hooks registered with
``snapshot_restore_py`` (``register``; the runtime ships the library, the layer leaves it
out). The stream function's Python process is the Lambda Web Adapter's web app, not the
runtime's: the adapter (1.1.0+, layer 30) calls two HTTP routes of it instead
(``llmhost.serving.lambda_http``), which run the same two functions.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from llmhost import aws, runtime

# A few words through the model: ONNX Runtime allocates its buffers on the first run.
WARM_TEXT = "llmhost warms the embedding model before the snapshot"


def warm_serving() -> None:
    """What a first RAG request of serve or stream builds: the registry and SageMaker runtime
    clients, the ONNX session and the Qdrant client."""
    runtime.registry()
    runtime.serving_service()._invoker()
    runtime.warm_rag()


def warm_ingest() -> None:
    """What a first ingest builds: the S3 client, the ONNX session and the Qdrant client."""
    aws.client("s3")
    runtime.warm_rag()


def before_snapshot(warm: Callable[[], None]) -> None:
    """Build everything ``warm`` builds, and run the embedding model once."""
    warm()
    embedder = runtime.embedder()
    if getattr(embedder, "load", None) is not None:  # a local model, not an endpoint
        embedder.embed([WARM_TEXT])


def after_restore(warm: Callable[[], None]) -> None:
    """Give this environment its own random state, credentials, clients and connections."""
    random.seed()  # from os.urandom
    aws.refresh()
    runtime.refresh()
    warm()


def register(warm: Callable[[], None]) -> None:
    """Register the hooks with the Python runtime (call from the handler module: Lambda
    ignores hooks registered by modules the handler does not import)."""
    from snapshot_restore_py import register_after_restore, register_before_snapshot

    register_before_snapshot(before_snapshot, warm)
    register_after_restore(after_restore, warm)
