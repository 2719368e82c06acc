"""``llmhost``: drive a local or deployed llmhost stack from the command line.

Exit codes: 0 done; 1 the command failed (the API refused it, a deployment ended FAILED, a
document was rejected, a wait ran out); 2 a usage error (a missing argument, an unknown
option); 3 the stack could not be reached (nothing answered at its URL, or no such stack).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from llmhost_cli import render
from llmhost_cli.errors import EXIT_FAILURE, CliFailure

_STATE_KEY = "client"


# ---------------------------------------------------------------------------- the group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 done, 1 failed (the API's message and field are printed), "
    "2 usage error, 3 stack unreachable.",
)
@click.option(
    "--stack",
    envvar="LLMHOST_STACK",
    metavar="NAME",
    help="A deployed stack: its URLs come from CloudFormation, requests are signed with your "
    "AWS credentials. [env LLMHOST_STACK]",
)
@click.option(
    "--url",
    envvar="LLMHOST_URL",
    metavar="URL",
    help="The control API's URL. [env LLMHOST_URL; default: the local stack `make run` "
    "announces in .llmhost/local.json]",
)
@click.option(
    "--openai-url",
    envvar="LLMHOST_OPENAI_URL",
    metavar="URL",
    help="The OpenAI-compatible URL (streaming), when --url is given. [env LLMHOST_OPENAI_URL]",
)
@click.option(
    "--api-key",
    envvar="LLMHOST_API_KEY",
    metavar="KEY",
    help="API key for the OpenAI-compatible endpoint (ask --stream). [env LLMHOST_API_KEY]",
)
@click.option("--region", metavar="REGION", help="AWS region of --stack (default: your profile's).")
@click.option(
    "--profile", metavar="NAME", help="AWS profile for --stack (default: the usual chain)."
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for each request.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    stack: str | None,
    url: str | None,
    openai_url: str | None,
    api_key: str | None,
    region: str | None,
    profile: str | None,
    request_timeout: float,
) -> None:
    """Drive llmhost: deployments, questions, documents, jobs, traces and usage.

    Talks to the local stack by default (`make run`), to --url, or to a deployed --stack.
    """
    options = {
        "stack": stack,
        "url": url,
        "openai_url": openai_url,
        "api_key": api_key,
        "region": region,
        "profile": profile,
    }
    ctx.meta["target_options"] = options
    ctx.meta["request_timeout"] = request_timeout


def client_of(ctx: click.Context) -> Any:
    """The stack's client, resolved on first use (``--help`` and usage errors need none)."""
    if _STATE_KEY not in ctx.meta:
        from llmhost_cli.client import Client
        from llmhost_cli.target import resolve

        target = resolve(**ctx.meta["target_options"])
        ctx.meta[_STATE_KEY] = Client(target, timeout_s=ctx.meta["request_timeout"])
    return ctx.meta[_STATE_KEY]


json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")


def wait_options(default_timeout: float) -> Any:
    def decorate(command: Any) -> Any:
        command = click.option(
            "--timeout",
            type=click.FloatRange(min=0),
            default=default_timeout,
            show_default=True,
            help="Seconds --wait waits before giving up (the reconciler carries on).",
        )(command)
        return click.option(
            "--wait", is_flag=True, help="Follow the reconciler's steps until it is done."
        )(command)

    return decorate


# ---------------------------------------------------------------------------- deployments


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, allow_dash=True))
@json_option
@click.pass_context
def plan(ctx: click.Context, spec_file: str, as_json: bool) -> None:
    """Size a spec (YAML or JSON): instance, GPUs, token limits, $/hour. Creates nothing."""
    from llmhost_cli.specfile import load_spec

    answer = client_of(ctx).call("POST", "/v1/plan", load_spec(spec_file))
    if as_json:
        render.print_json(answer)
        return
    out = render.console()
    out.print(f"plan for {answer.get('name')}:")
    out.print(render.key_values(answer.get("plan") or {}))


@cli.command()
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, allow_dash=True))
@wait_options(default_timeout=3600)
@json_option
@click.pass_context
def up(ctx: click.Context, spec_file: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Create a deployment from SPEC (YAML or JSON), or update the one of that name.

    With --wait, show the reconciler's steps until it is IN_SERVICE (or FAILED, and why).
    """
    from llmhost_cli.errors import ApiRefused
    from llmhost_cli.specfile import load_spec

    client = client_of(ctx)
    spec = load_spec(spec_file)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise CliFailure(f"{spec_file}: the spec needs a name", field="name")
    try:
        record = client.call("POST", "/v1/deployments", spec)
        done = "created"
    except ApiRefused as refused:
        if refused.status != 409:
            raise
        before = client.call("GET", f"/v1/deployments/{name}")
        record = client.call("PATCH", f"/v1/deployments/{name}", spec)
        done = "updated" if record.get("generation") != before.get("generation") else "unchanged"
    if as_json and not wait:
        render.print_json(record)
        return
    err = render.console(stderr=True)
    err.print(f"{name}: {done} (generation {record.get('generation')}, {record.get('status')})")
    if wait:
        record = _follow(ctx, record, "IN_SERVICE", timeout)
        if as_json:
            render.print_json(record)


@cli.command("ls")
@click.option("--all", "include_deleted", is_flag=True, help="Include DELETED deployments.")
@json_option
@click.pass_context
def list_deployments(ctx: click.Context, include_deleted: bool, as_json: bool) -> None:
    """List deployments with their status."""
    query = {"include_deleted": "true"} if include_deleted else None
    answer = client_of(ctx).call("GET", "/v1/deployments", query=query)
    if as_json:
        render.print_json(answer)
        return
    items = answer.get("deployments") or []
    if not items:
        render.console(stderr=True).print("no deployments: create one with `llmhost up SPEC`")
        return
    render.console().print(render.deployments_table(items))


@cli.command()
@click.argument("name")
@click.option("--history", default=10, show_default=True, help="History entries to show.")
@json_option
@click.pass_context
def status(ctx: click.Context, name: str, history: int, as_json: bool) -> None:
    """A deployment's status, resources and recent history."""
    record = client_of(ctx).call("GET", f"/v1/deployments/{name}")
    if as_json:
        render.print_json(record)
        return
    out = render.console()
    for line in render.deployment_details(record, history):
        out.print(line)


def _lifecycle(
    ctx: click.Context,
    name: str,
    method: str,
    path: str,
    goal: Any,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    record = client_of(ctx).call(method, path)
    if wait:
        record = _follow(ctx, record, goal, timeout)
    if as_json:
        render.print_json(record)
    elif not wait:
        render.console(stderr=True).print(
            f"{name}: {record.get('status')} ({record.get('status_reason') or 'requested'})"
        )


@cli.command("sleep")
@click.argument("name")
@wait_options(default_timeout=3600)
@json_option
@click.pass_context
def sleep_deployment(
    ctx: click.Context, name: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Release a deployment's GPUs, keep its spec."""
    path = f"/v1/deployments/{name}/sleep"
    _lifecycle(ctx, name, "POST", path, "SLEEPING", wait, timeout, as_json)


@cli.command()
@click.argument("name")
@wait_options(default_timeout=3600)
@json_option
@click.pass_context
def wake(ctx: click.Context, name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Bring a sleeping deployment back."""
    path = f"/v1/deployments/{name}/wake"
    _lifecycle(ctx, name, "POST", path, "IN_SERVICE", wait, timeout, as_json)


@cli.command("rm")
@click.argument("name")
@wait_options(default_timeout=3600)
@json_option
@click.pass_context
def remove(ctx: click.Context, name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Delete a deployment (its SageMaker resources go, in order). --wait: until DELETED."""
    _lifecycle(ctx, name, "DELETE", f"/v1/deployments/{name}", "DELETED", wait, timeout, as_json)


def _follow(ctx: click.Context, record: dict[str, Any], goal: Any, timeout: float) -> Any:
    """Follow ``record`` to ``goal``: each history entry as a line, and a live status line."""
    from llmhost_cli.watch import follow

    out = render.console(stderr=True)
    started = time.monotonic()
    name = record["name"]

    def label(current: dict[str, Any]) -> str:
        return f"{name}: {current.get('status')} ({time.monotonic() - started:.0f} s)"

    with out.status(label(record)) as shown:
        final = follow(
            client_of(ctx),
            record,
            goal,
            timeout_s=timeout,
            on_entry=lambda entry: out.print(render.history_line(entry)),
            on_poll=lambda current: shown.update(label(current)),
        )
    out.print(f"{name}: {final.get('status')} after {time.monotonic() - started:.1f} s")
    return final


# ---------------------------------------------------------------------------- questions


@cli.command()
@click.argument("model")
@click.argument("question")
@click.option("--collection", "-c", metavar="NAME", help="Answer from this collection (RAG).")
@click.option("-k", type=click.IntRange(1, 50), help="Passages to retrieve (with --collection).")
@click.option("--stream", is_flag=True, help="Stream the answer (OpenAI-compatible endpoint).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Longest answer, in tokens.")
@click.option(
    "--wait",
    "wait_s",
    type=click.IntRange(min=1),
    help="If the model is cold, wait up to this many seconds for it instead of a 503.",
)
@json_option
@click.pass_context
def ask(
    ctx: click.Context,
    model: str,
    question: str,
    collection: str | None,
    k: int | None,
    stream: bool,
    max_tokens: int | None,
    wait_s: int | None,
    as_json: bool,
) -> None:
    """Ask MODEL a QUESTION, from a collection's documents with --collection."""
    if k is not None and collection is None:
        raise click.UsageError("-k needs --collection (passages come from a collection)")
    if stream and as_json:
        raise click.UsageError("--json and --stream do not go together")
    client = client_of(ctx)
    if stream:
        _ask_streamed(client, model, question, collection, k, max_tokens)
        return
    headers = {"Prefer": f"wait={wait_s}"} if wait_s else None
    if collection:
        body: dict[str, Any] = {"model": model, "collection": collection, "query": question}
        body.update({k_: v for k_, v in {"k": k, "max_new_tokens": max_tokens}.items() if v})
        reply = _call_with(client, "/v1/rag", body, headers, wait_s)
        answer = reply.body
        text, sources = answer.get("answer", ""), answer.get("sources") or []
    else:
        body = {"model": model, "messages": [{"role": "user", "content": question}]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        reply = _call_with(client, "/v1/chat/completions", body, headers, wait_s)
        answer = reply.body
        choices = answer.get("choices") or [{}]
        text = (choices[0].get("message") or {}).get("content", "")
        sources = (answer.get("llmhost") or {}).get("sources") or []
    if as_json:
        render.print_json(answer)
        return
    click.echo(text)
    for line in render.sources_lines(sources):
        click.echo(line)
    _name_trace(reply.headers)


def _call_with(
    client: Any, path: str, body: dict[str, Any], headers: dict[str, str] | None, wait_s: Any
) -> Any:
    from llmhost_cli.errors import refusal_from_body

    timeout = max(client.timeout_s, (wait_s or 0) + 30)
    reply = client.request("POST", path, body, headers=headers, timeout_s=timeout)
    if reply.status >= 400:
        refused = refusal_from_body(reply.status, reply.body, reply.headers)
        refused.trace = _trace_of(reply.headers)
        raise refused
    return reply


TRACE_HEADER = "x-llmhost-trace-id"


def _trace_of(headers: dict[str, str]) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == TRACE_HEADER), None)


def _name_trace(headers: dict[str, str]) -> None:
    """Say which trace recorded the request (on stderr: stdout stays the answer)."""
    trace = _trace_of(headers)
    if trace:
        render.console(stderr=True).print(f"trace {trace}: llmhost traces {trace}", style="dim")


def _ask_streamed(
    client: Any,
    model: str,
    question: str,
    collection: str | None,
    k: int | None,
    max_tokens: int | None,
) -> None:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": question}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    if collection:
        body["rag"] = {"collection": collection, **({"k": k} if k else {})}
    sources: list[dict[str, Any]] = []
    wrote = False
    received: dict[str, str] = {}
    streamed = client.stream_chat(
        body, timeout_s=max(client.timeout_s, 300), on_headers=received.update
    )
    for chunk in streamed:
        extra = chunk.get("llmhost") if isinstance(chunk, dict) else None
        if isinstance(extra, dict) and extra.get("sources"):
            sources = extra["sources"]
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                sys.stdout.write(piece)
                sys.stdout.flush()
                wrote = True
    if wrote:
        sys.stdout.write("\n")
    for line in render.sources_lines(sources):
        click.echo(line)
    _name_trace(received)


# ---------------------------------------------------------------------------- documents


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--collection", "-c", required=True, metavar="NAME", help="Collection to fill.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    help="Seconds to wait for each batch (default: 60 plus 1 per KB of text).",
)
@click.pass_context
def ingest(
    ctx: click.Context, paths: tuple[Path, ...], collection: str, timeout: float | None
) -> None:
    """Index files and folders (.txt, .md, .jsonl) into a collection, with a progress bar.

    A .txt/.md file is one document (its id: its path under the folder given); each .jsonl
    line is a document {"id", "text", "metadata"}. Each rejected document gets a line saying
    why; any rejection makes the exit code 1.
    """
    from llmhost_cli.ingest import ingest as run
    from llmhost_cli.ingest import summary
    from llmhost_cli.progress import ProgressReport

    client = client_of(ctx)
    with ProgressReport(render.console(), render.console(stderr=True)) as report:
        outcome = run(client, list(paths), collection, report, timeout_s=timeout)
    click.echo(summary(outcome, collection))
    if outcome.problems:
        ctx.exit(EXIT_FAILURE)


# ---------------------------------------------------------------------------- jobs


@cli.group(invoke_without_command=True)
@click.option("--model", metavar="NAME", help="Only this deployment's jobs (newest first).")
@click.option(
    "--status",
    "status_",
    type=click.Choice(["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"]),
    help="Only jobs in this status.",
)
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
@click.pass_context
def jobs(
    ctx: click.Context, model: str | None, status_: str | None, limit: int, as_json: bool
) -> None:
    """List jobs; `jobs show ID` and `jobs cancel ID` for one."""
    if ctx.invoked_subcommand is not None:
        return
    query = {"model": model, "status": status_, "limit": limit}
    answer = client_of(ctx).call("GET", "/v1/jobs", query=query)
    if as_json:
        render.print_json(answer)
        return
    render.console().print(render.jobs_table(answer.get("jobs") or []))
    if answer.get("next_token"):
        render.console(stderr=True).print("(more: narrow with --model or --status)")


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@click.pass_context
def show_job(ctx: click.Context, job_id: str) -> None:
    """A job: status, timings, result (JSON)."""
    render.print_json(client_of(ctx).call("GET", f"/v1/jobs/{job_id}"))


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@click.pass_context
def cancel_job(ctx: click.Context, job_id: str) -> None:
    """Cancel a job that has not started."""
    job = client_of(ctx).call("DELETE", f"/v1/jobs/{job_id}")
    render.console(stderr=True).print(f"{job_id}: {job.get('status')}")


# ---------------------------------------------------------------------------- observing


@cli.command()
@click.argument("trace_id", metavar="[ID]", required=False)
@click.option("--model", metavar="NAME", help="Only this deployment's traces.")
@click.option("--collection", metavar="NAME", help="Only traces retrieving from this collection.")
@click.option("--status", "status_", type=click.Choice(["ok", "error"]), help="Only these.")
@click.option("--from", "from_", metavar="TIME", help="ISO 8601 or epoch seconds.")
@click.option("--to", metavar="TIME", help="ISO 8601 or epoch seconds.")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new traces as they come.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True)
@json_option
@click.pass_context
def traces(
    ctx: click.Context,
    trace_id: str | None,
    model: str | None,
    collection: str | None,
    status_: str | None,
    from_: str | None,
    to: str | None,
    limit: int,
    follow: bool,
    interval: float,
    as_json: bool,
) -> None:
    """Recent requests (newest last), or one trace by ID: stages, prompt, sources, answer.

    --follow keeps printing new ones until Ctrl-C; --json prints one JSON object a line.
    """
    client = client_of(ctx)
    out = render.console()
    if trace_id:
        trace = client.call("GET", f"/v1/traces/{trace_id}")
        if as_json:
            render.print_json(trace)
            return
        for line in render.trace_details(trace):
            out.print(line)
        return
    query = {
        "model": model,
        "collection": collection,
        "status": status_,
        "from": from_,
        "to": to,
        "limit": limit,
    }
    from llmhost_cli.feed import traces as feed

    try:
        for trace in feed(client, query, follow=follow, interval_s=interval):
            if as_json:
                sys.stdout.write(json.dumps(trace, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                out.print(render.trace_line(trace))
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how --follow ends: not a failure


@cli.command()
@click.argument("trace_id", metavar="ID")
@click.argument("score", type=float)
@click.option("--comment", metavar="TEXT", help="Why (at most 2000 characters).")
@click.option("--name", default="user", show_default=True, help="Who or what scored it.")
@click.pass_context
def feedback(
    ctx: click.Context, trace_id: str, score: float, comment: str | None, name: str
) -> None:
    """Score a trace (1/0, 1..5, 0.0..1.0...), as an evaluator or a user's thumbs would."""
    body = {"score": score, "name": name, **({"comment": comment} if comment else {})}
    trace = client_of(ctx).call("POST", f"/v1/traces/{trace_id}/feedback", body)
    given = len(trace.get("feedback") or [])
    render.console(stderr=True).print(f"{trace_id}: feedback recorded ({given} in all)")


@cli.command()
@click.option(
    "--by",
    type=click.Choice(["deployment", "key"]),
    default="deployment",
    show_default=True,
    help="One row per deployment or per API key.",
)
@click.option("--from", "from_", metavar="TIME", help="ISO 8601 or epoch seconds.")
@click.option("--to", metavar="TIME", help="ISO 8601 or epoch seconds.")
@json_option
@click.pass_context
def usage(ctx: click.Context, by: str, from_: str | None, to: str | None, as_json: bool) -> None:
    """Requests, errors, tokens and estimated cost per deployment or API key."""
    report = client_of(ctx).call("GET", "/v1/usage", query={"by": by, "from": from_, "to": to})
    if as_json:
        render.print_json(report)
        return
    out = render.console()
    out.print(f"{report.get('from')} .. {report.get('to')}")
    out.print(render.usage_table(report))
    for note in ("method", "prices"):
        if report.get(note):
            out.print(str(report[note]), style="dim")


# ---------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Failures print the API's message and field on
    stderr, never a traceback (LLMHOST_DEBUG=1 shows one)."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        result = cli.main(args=argv, prog_name="llmhost", standalone_mode=False)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except CliFailure as failure:
        for line in failure.lines():
            click.echo(line, err=True)
        return failure.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as error:
        if os.environ.get("LLMHOST_DEBUG"):
            raise
        click.echo(f"error: unexpected {type(error).__name__}: {error}", err=True)
        click.echo("  (LLMHOST_DEBUG=1 shows where)", err=True)
        return EXIT_FAILURE
    return result if isinstance(result, int) else 0
