"""``make run``: the same Lambda handlers behind a local HTTP server, with AWS emulated.

The emulated AWS and its wiring are ``llmhost_local.cloud``'s ``LocalCloud``; this serves it:
the control API behind a local API Gateway (``serve``; requests must be SigV4-signed for
``execute-api`` with the local key pair, like API Gateway's IAM auth, and ``curl --aws-sigv4``
does it), the OpenAI-compatible server, the banner, and ``main`` (``python -m llmhost_local``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmhost_local import trace_export
from llmhost_local.cloud import (
    ACCESS_KEY,
    API_CONCURRENCY,
    ENGINE_KINDS,
    LOCAL_API_KEY,
    REGION,
    SECRET_KEY,
    LocalCloud,
    load_handler,
    project_root,
)
from llmhost_local.console import Upstreams, serve_console
from llmhost_local.http_server import BackgroundServer
from llmhost_local.llama import EngineUnavailable, LlamaBackend

# load_handler sets the process's POWERTOOLS_SERVICE_NAME: one load at a time.
_LOADING = threading.Lock()


def serve(port: int, cloud: LocalCloud) -> BackgroundServer:
    """The control API (API Gateway in front of the api and serve functions) on ``port``."""
    from llmhost_local.gateway import LocalApiGateway

    def answered(method: str, path: str, body: bytes, status: int) -> None:
        cloud.log(f"{method} {path} -> {status}")

    def environment(function: str) -> Any:
        first = [getattr(cloud, f"{function}_module")]  # loaded by start(): already warm

        def start() -> Any:
            with _LOADING:
                module = first.pop() if first else load_handler(function, f"llmhost-{function}")
            return module.handler

        return start

    gateway = LocalApiGateway(
        {"api": environment("api"), "serve": environment("serve")},
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        answered=answered,
        concurrency=API_CONCURRENCY,
    )
    return BackgroundServer(gateway, port=port, name="api")


def url_of(server: Any) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


BANNER = """
llmhost is running locally (no AWS account needed).

  API           {api}   (SigV4, key {key} / {secret})
  OpenAI API    {openai}/v1   (api_key={api_key}; streams)
{console_line}  moto server   {moto}   (DynamoDB, IAM, Secrets Manager, ...)
  SageMaker     stand-in, {speed:g}x faster than real (endpoint creation ~{create:g}s)
  model engine  {engine}
  documents     {documents} (embedded Qdrant, kept between runs)
{try_}
Ctrl-C stops everything; state lives in memory only.
"""
BANNER_DEMO = """
A deployment named "demo" is being created; it is IN_SERVICE in ~{create:g}s.
Try (the llmhost command finds this stack by itself, from .llmhost/local.json):
  {cli} status demo
  {ingest}
  {cli} ask demo "How do I run the tests?" --collection docs --stream

Scale to zero: "zero-demo" (shared, min 0) goes to zero copies after {idle:g}s without a
request ({speed:g}x its 5 idle minutes); this log shows each step. Then ask it:
  {cli} ask zero-demo hi
The first answer is 503 with Retry-After and wakes it; ask again a few seconds later, or
add --wait 30 to be held until it is up and answered then.

Work that may outlast a request (a job: 202 and a Location to poll), with curl:
  AUTH=(--aws-sigv4 aws:amz:us-east-1:execute-api --user {key}:{secret})
  curl -si "${{AUTH[@]}}" -X POST {api}/v1/jobs -H 'Content-Type: application/json' \\
       -d '{{"type": "chat", "body": {{"model": "demo",
            "messages": [{{"role": "user", "content": "hi"}}]}}}}'
Many requests at once: OpenAI's Batch API on {openai}/v1 (README, "Batch").
"""
BANNER_NO_DEMO = """
No deployment is being created (--no-demo): create one with `{cli} up SPEC.yaml --wait`.
Try:
  {cli} ls
  {ingest}
"""
DEFAULT_API = "http://127.0.0.1:8080"


# Where ``make run`` announces itself to the ``llmhost`` command (and the console, the tests):
# its URLs and local keys, in the project root's .llmhost/ (next to embedded Qdrant).
LOCAL_FILE = Path(".llmhost") / "local.json"


def announcement(api: str, openai: str, console: str) -> dict[str, Any]:
    """What ``.llmhost/local.json`` holds for a stack serving these URLs from this process."""
    return {
        "api": api,
        "openai": openai,
        "console": console,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "api_key": LOCAL_API_KEY,
        "region": REGION,
        "pid": os.getpid(),
    }


@contextlib.contextmanager
def announced(root: Path, info: dict[str, Any]) -> Iterator[Path]:
    """Write ``info`` to ``root/.llmhost/local.json`` while the block runs, then remove it
    (unless another stack has announced itself there since: the newest one owns it). A stack
    that was announced before and still runs (``make run`` while a test starts a stack of its
    own) is announced again when this one leaves, so the command still finds it."""
    path = root / LOCAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads(path.read_text())
    draft = path.with_name(f".local.json.{os.getpid()}")
    # The keys are the local stack's published ones, but the file is still the user's own.
    draft.write_text(json.dumps(info, indent=2) + "\n")
    draft.chmod(0o600)
    draft.replace(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()) == json.loads(json.dumps(info)):
                if isinstance(previous, dict) and previous != info and _alive(previous.get("pid")):
                    draft.write_text(json.dumps(previous, indent=2) + "\n")
                    draft.chmod(0o600)
                    draft.replace(path)
                else:
                    path.unlink()


def _alive(pid: Any) -> bool:
    """Whether the process ``pid`` runs (a stack that announced itself is still up)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it runs, as another user
        return True
    return True


def cli_command() -> str:
    """The llmhost command as typed from the project root (``make run``'s directory): plain
    ``llmhost`` when it is the one on PATH, else the path of the one next to this stack's
    interpreter (or that interpreter's ``-m llmhost_cli``)."""
    executable = Path(sys.executable)
    script = executable.parent / "llmhost"
    if script.is_file() and shutil.which("llmhost") == str(script):
        return "llmhost"
    root = project_root()
    target, suffix = (script, "") if script.is_file() else (executable, " -m llmhost_cli")
    command = (
        os.path.relpath(target, root)
        if target.is_absolute() and target.is_relative_to(root)
        else shlex.quote(str(target))
    )
    if "/" not in command:
        command = f"./{command}"
    return command + suffix


def ingest_command(api: str) -> str:
    """The banner's ingest command line: one that works as printed from the project root."""
    cli = cli_command() if api == DEFAULT_API else f"{cli_command()} --url {api}"
    return f"{cli} ingest README.md --collection docs"


def banner(
    api: str,
    openai: str,
    *,
    moto: str,
    speed: float,
    documents: Path,
    engine: str,
    demo: bool = True,
    console: str = "",
) -> str:
    """What ``make run`` prints once the stack is up (``api``, ``openai``, ``console``: bound
    URLs; ``documents``: embedded Qdrant's folder; ``demo``: the demo deployments are created)."""
    values = {
        "console_line": (
            f"  console       {console}   (deployments, copies, traces, chat, in a browser)\n"
            if console
            else ""
        ),
        "api": api,
        "openai": openai,
        "ingest": ingest_command(api),
        "cli": cli_command(),
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "moto": moto,
        "speed": speed,
        "create": 600 / speed,
        "api_key": LOCAL_API_KEY,
        "engine": engine,
        "documents": documents,
        "idle": 300 / speed,
    }
    try_ = (BANNER_DEMO if demo else BANNER_NO_DEMO).format(**values)
    return BANNER.format(**values, try_=try_)


def choose_engine(requested: str, engine_url: str | None) -> tuple[str, str]:
    """The engine kind to run and a line saying why, when it is not what was asked for.

    ``auto`` runs the real model when llama-cpp-python and the model file are installed (``make
    run`` installs them, ``make llm-engine`` alone), else the extractive stand-in, with the
    reason; ``llama`` asked for explicitly and not installed is an error (exit 1).
    """
    from llmhost_local.llama import unavailable

    if engine_url:
        return "extractive", ""  # the server at engine_url answers; nothing to load here
    if requested == "extractive":
        return "extractive", ""
    reason = unavailable()
    if reason is None:
        return "llama", ""
    if requested == "llama":
        raise SystemExit(f"llmhost: LLMHOST_ENGINE=llama, but {reason}")
    build_log = project_root() / ".venv" / "llm-engine.log"
    hint = f" (the build's log: {build_log})" if build_log.exists() else ""
    return "extractive", (
        f"llmhost: answering with the extractive engine (not an LLM) because {reason}{hint}. "
        "LLMHOST_ENGINE=extractive make run skips the model and this message."
    )


def engine_line(cloud: LocalCloud) -> str:
    """The banner's "model engine" line: what answers, and for a real model its limits."""
    if cloud.engine_url:
        return cloud.engine_url
    if cloud.engine_kind == "llama":
        backend = cloud.engine.backend
        assert isinstance(backend, LlamaBackend)
        return (
            f"{backend.model_id} (llama.cpp on the CPU, {cloud.engine.max_input_tokens} input "
            f"tokens; a tiny model for development, loaded in {backend.load_seconds:.1f} s)"
        )
    return "local extractive engine (not an LLM; cites passages)"


def start_console(
    requested: int | None, api_port: int, upstreams: Upstreams, log: Callable[[str], None]
) -> BackgroundServer:
    """The console on the port asked for (``--console-port``; taken is an error), else on the
    API's port + 3, else, when that one is taken (by another program, or a stack started on
    free ports that did not reserve it), on a free port: the banner prints where."""
    if requested is not None:
        return serve_console(requested, upstreams, log=log)
    try:
        return serve_console(api_port + 3, upstreams, log=log)
    except OSError:
        return serve_console(0, upstreams, log=log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8080)))
    parser.add_argument("--moto-port", type=int, default=int(os.environ.get("MOTO_PORT", 5055)))
    parser.add_argument("--openai-port", type=int, default=int(os.environ.get("OPENAI_PORT", 8081)))
    parser.add_argument(
        "--engine",
        choices=("auto", *ENGINE_KINDS),
        default=os.environ.get("LLMHOST_ENGINE") or "auto",
        help="what answers: a real small model run by llama.cpp ('llama'), the extractive "
        "stand-in ('extractive'), or 'auto' (llama when it is installed; the default, "
        "or $LLMHOST_ENGINE)",
    )
    parser.add_argument(
        "--engine-url",
        default=os.environ.get("LLMHOST_ENGINE_URL") or None,
        help="a real TGI or vLLM server to answer instead of the local engine",
    )
    parser.add_argument(
        "--console-port",
        type=int,
        default=int(os.environ["CONSOLE_PORT"]) if os.environ.get("CONSOLE_PORT") else None,
        help="the web console's port (default: --port + 3)",
    )
    parser.add_argument("--no-demo", action="store_true", help="do not create the demo model")
    parser.add_argument(
        "--engine-port",
        type=int,
        default=None,
        help="also serve the local engine's own TGI API on this port (for direct comparisons)",
    )
    parser.add_argument("--engine-latency-ms", type=float, default=0)
    parser.add_argument(
        "--runtime-url",
        default=None,
        help="an external SageMaker runtime (endpoint URL) instead of the built-in front",
    )
    parser.add_argument("--drift-seconds", type=float, default=5.0)
    parser.add_argument("--token-interval-ms", type=float, default=0)
    parser.add_argument(
        "--speed",
        type=float,
        default=float(os.environ.get("SPEED", 60)),
        help="how much faster than real SageMaker the stand-in runs (default 60)",
    )
    args = parser.parse_args(argv)
    if args.engine not in ("auto", *ENGINE_KINDS):  # $LLMHOST_ENGINE is not checked by argparse
        parser.error(f"LLMHOST_ENGINE={args.engine!r}: use one of auto, {', '.join(ENGINE_KINDS)}")
    # With an external runtime something else answers: the model loads only when asked for
    # by name (its /info then names the demo deployments).
    requested = "extractive" if args.runtime_url and args.engine == "auto" else args.engine
    kind, engine_note = choose_engine(requested, args.engine_url)
    if engine_note:
        print(engine_note, file=sys.stderr, flush=True)
    cloud = LocalCloud(
        moto_port=args.moto_port,
        speed=args.speed,
        engine_url=args.engine_url,
        engine_latency_ms=args.engine_latency_ms,
        token_interval_ms=args.token_interval_ms,
        runtime_url=args.runtime_url,
        drift_seconds=args.drift_seconds,
        engine_kind=kind,
    )
    try:
        cloud.start()
    except EngineUnavailable as error:
        print(f"llmhost: the llama engine cannot start: {error}", file=sys.stderr)
        return 1
    if args.engine_port is not None:
        from llmhost_local.engine_server import serve_engine

        serve_engine(cloud.engine, port=args.engine_port)
    server = serve(args.port, cloud)
    openai_server = cloud.start_openai_server(args.openai_port)
    console_server = start_console(
        args.console_port,
        args.port,
        Upstreams(
            api=url_of(server),
            openai=url_of(openai_server),
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            api_key=LOCAL_API_KEY,
            region=REGION,
        ),
        log=cloud.log,
    )
    if not args.no_demo:
        cloud.create_demo()
    engine = engine_line(cloud)
    text = banner(
        url_of(server),
        url_of(openai_server),
        moto=cloud.moto_url,
        speed=cloud.speed,
        documents=cloud.qdrant_path,
        engine=engine,
        demo=not args.no_demo,
        console=url_of(console_server),
    )
    info = announcement(url_of(server), url_of(openai_server), url_of(console_server))
    print(text, flush=True)
    print(trace_export.banner_line(os.environ), flush=True)
    # `kill` (SIGTERM) stops it as Ctrl-C does: the servers close, the announcement goes.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with announced(project_root(), info):
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
    finally:
        console_server.shutdown()
        server.shutdown()
        openai_server.shutdown()
        cloud.stop()
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
