"""A batch on SageMaker Batch Transform: the job's name, request, files and outcomes (pure).

A transform job runs a deployment's SageMaker model on instances that exist only for the
job: a sleeping deployment (its endpoint deleted, its model kept by the reconciler) can
still run a nightly batch. Each line's record is the engine payload the real-time route
would send for it (``ServingService.prepare_offline``: same chat template, token budget and
retrieval); SageMaker posts each record to the container's ``/invocations`` (``SplitType
Line``, ``BatchStrategy SingleRecord``) and writes one output line per record, in input
order (``AssembleWith Line``).

What AWS writes, and what llmhost does with it (``TransformOutput`` in the SageMaker API
reference): "Batch transform doesn't upload partially processed objects. For an input S3
object that contains multiple records, it creates an .out file only if the transform job
succeeds on the entire file. When the input contains multiple S3 objects, [it] uploads only
the output for successfully processed objects. If any object fails [...] batch transform
marks the job as failed." So the input is split into parts of ``PART_LINES`` lines: a record
the container refuses costs its own part, not the whole batch. When the job has ended, each
line of a part with an ``.out`` is decoded with the deployment's codec into its answer (or
the engine's error); each line of a part without one gets an error naming the job's
``FailureReason`` (``transform_failed``; ``batch_cancelled`` for a stopped job) and goes to
the batch's error file. Those lines are not retried: the record that failed its part may be
among them and would fail a retry the same way, and a retry of the others would need a
second job on new instances; resubmitting the error file's lines is one new batch. Nothing
is lost (every line has an outcome) and nothing runs twice (one job per batch and model, and
a line is in exactly one part).

Keys under the jobs bucket, for batch ``b``'s job on its ``g``-th model::

    batches/b/transform/g/lines.json           which line each record of each part is
    batches/b/transform/g/input/part-00000.jsonl
    batches/b/transform/g/output/.../part-00000.jsonl.out   (written by SageMaker)
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llmhost.batches.lines import LineOutcome
from llmhost.engines.codecs import Completion, codec_for
from llmhost.errors import LlmhostError
from llmhost.serving.errors import ModelInvocationError

# Lines per input part: what one refused record can cost (see the module docstring).
PART_LINES = 100
# SageMaker's default MaxPayloadInMB; AWS caps MaxPayloadInMB x MaxConcurrentTransforms at
# 100 MB (CreateTransformJob in the API reference), so a busier engine gets less per record.
DEFAULT_PAYLOAD_MB = 6
PAYLOAD_TIMES_CONCURRENCY_MB = 100
# A generation may take long on a busy batch engine: the API's maximum (ModelClientConfig).
INVOCATION_TIMEOUT_S = 3600
# SageMaker retries a failed invocation (a throttled or briefly failing engine) this often.
INVOCATION_RETRIES = 2
# A serverless deployment has no instance type; its transform runs on a CPU instance with
# more memory than serverless offers (6 GB at most).
SERVERLESS_TRANSFORM_INSTANCE = "ml.m5.xlarge"
# Statuses after which SageMaker changes nothing any more.
ENDED = frozenset({"Completed", "Failed", "Stopped"})
NAME_PREFIX = "llmhost-"
_NAME_MAX = 63


class TransformUnavailable(LlmhostError):
    """The deployment cannot run a transform job now; fan-out (the live endpoint) can."""

    code = "transform_unavailable"
    status = 409


@dataclass(frozen=True)
class LineRecord:
    """One line as the transform job receives it, and what decoding its output needs."""

    line: int
    kind: str  # "chat" | "rag"
    payload: dict[str, Any]
    estimated_prompt_tokens: int
    engine_counts_prompt: bool
    sources: list[dict[str, Any]] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """The manifest's entry for this line (everything but the payload)."""
        data = asdict(self)
        data.pop("payload")
        return data


@dataclass(frozen=True)
class TransformLayout:
    """Where one job's files live in the jobs bucket (``group``: see ``transform_job_name``)."""

    bucket: str
    batch_id: str
    group: int

    @property
    def prefix(self) -> str:
        return f"batches/{self.batch_id}/transform/{self.group}"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}/lines.json"

    @property
    def input_prefix(self) -> str:
        return f"{self.prefix}/input/"

    @property
    def output_prefix(self) -> str:
        return f"{self.prefix}/output/"

    def part_key(self, part: int) -> str:
        return f"{self.input_prefix}{part_name(part)}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def part_name(part: int) -> str:
    return f"part-{part:05d}.jsonl"


def transform_job_name(batch_id: str, group: int) -> str:
    """The name of the batch's job for its ``group``-th model (from 1, models sorted by
    name; a batch naming one model has one job): the same every time, so a start that
    crashed after ``CreateTransformJob`` finds its job again (``ResourceInUse``) instead of
    starting a second one. Within SageMaker's 63 characters and name pattern; a batch id that
    had to be shortened or respelled carries a hash of itself, so two never share a name.
    """
    if group < 1:
        raise ValueError("group counts from 1")
    suffix = f"-{group}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", batch_id).strip("-")
    room = _NAME_MAX - len(NAME_PREFIX) - len(suffix)
    if slug != batch_id or len(slug) > room:
        digest = hashlib.sha256(batch_id.encode()).hexdigest()[:8]
        slug = f"{slug[: room - len(digest) - 1].rstrip('-')}-{digest}".lstrip("-")
    return f"{NAME_PREFIX}{slug}{suffix}"


def transform_concurrency(copy_concurrency: int, continuous_batching: bool) -> int:
    """MaxConcurrentTransforms: the requests one copy of the engine runs together (sizing),
    one for an engine without continuous batching, and at most what leaves each record the
    1 MB AWS's payload x concurrency cap allows."""
    if not continuous_batching:
        return 1
    return max(1, min(copy_concurrency, PAYLOAD_TIMES_CONCURRENCY_MB))


def payload_limit_mb(concurrency: int) -> int:
    """MaxPayloadInMB for ``concurrency`` records at once (AWS: their product <= 100 MB)."""
    return max(1, min(DEFAULT_PAYLOAD_MB, PAYLOAD_TIMES_CONCURRENCY_MB // max(1, concurrency)))


def transform_instance(hosting_kind: str, instance_type: str | None) -> str:
    """The instance type the job runs on: the deployment's own (its sizing plan's), or a
    CPU instance for serverless. Raises ``TransformUnavailable`` for a type Batch Transform
    does not offer (botocore's model lists the ones it does)."""
    wanted = instance_type or (
        SERVERLESS_TRANSFORM_INSTANCE if hosting_kind == "serverless" else None
    )
    offered = _transform_instance_types()
    if wanted is None or wanted not in offered:
        raise TransformUnavailable(
            f"SageMaker Batch Transform does not run on {wanted or 'this hosting'}; run the "
            "batch with runner 'fanout' (the live endpoint), or use an instance type that "
            "Batch Transform offers (ml.g5, ml.g6, ml.g6e, ml.g4dn, ml.inf2, ml.m5, ...)"
        )
    return wanted


def _transform_instance_types() -> frozenset[str]:
    from llmhost import aws

    shape = aws.service_model("sagemaker").shape_for("TransformInstanceType")
    return frozenset(getattr(shape, "enum", []) or [])


BATCH_TAG = "llmhost:batch"


def transform_tags(stack: str, deployment: str, batch_id: str) -> dict[str, str]:
    """A transform job's tags: the stack's and deployment's (IAM scopes llmhost's SageMaker
    changes to resources tagged for its stack), and the batch it runs."""
    from llmhost.lifecycle.ownership import deployment_tags

    return {**deployment_tags(stack, deployment), BATCH_TAG: batch_id}


STATE_CHANGE = "SageMaker Transform Job State Change"


def batch_of_state_change(event: Any, stack: str) -> str | None:
    """The batch whose job a "SageMaker Transform Job State Change" event is about, when the
    job has ended and is this stack's; else None (another stack's or someone else's job, a
    job still running, any other event). The job's tags travel in the event's detail."""
    if not isinstance(event, Mapping) or event.get("source") != "aws.sagemaker":
        return None
    detail = event.get("detail")
    if event.get("detail-type") != STATE_CHANGE or not isinstance(detail, Mapping):
        return None
    tags = detail.get("Tags")
    if not isinstance(tags, Mapping) or detail.get("TransformJobStatus") not in ENDED:
        return None
    from llmhost.lifecycle.ownership import STACK_TAG

    batch = tags.get(BATCH_TAG)
    if tags.get(STACK_TAG) != stack or not isinstance(batch, str) or not batch:
        return None
    return batch


def transform_request(
    *,
    name: str,
    model_name: str,
    layout: TransformLayout,
    instance_type: str,
    concurrency: int,
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """The ``CreateTransformJob`` body: one record per line, one output line per record."""
    return {
        "TransformJobName": name,
        "ModelName": model_name,
        "MaxConcurrentTransforms": max(1, concurrency),
        "MaxPayloadInMB": payload_limit_mb(concurrency),
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": INVOCATION_TIMEOUT_S,
            "InvocationsMaxRetries": INVOCATION_RETRIES,
        },
        "TransformInput": {
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": layout.uri(layout.input_prefix),
                }
            },
            "ContentType": "application/json",
            "SplitType": "Line",
            "CompressionType": "None",
        },
        "TransformOutput": {
            "S3OutputPath": layout.uri(layout.output_prefix),
            "Accept": "application/json",
            "AssembleWith": "Line",
        },
        "TransformResources": {"InstanceType": instance_type, "InstanceCount": 1},
        "Tags": [{"Key": k, "Value": v} for k, v in sorted(tags.items())],
    }


def parts(records: Sequence[LineRecord], size: int = PART_LINES) -> list[list[LineRecord]]:
    """The input's parts, in line order."""
    return [list(records[i : i + size]) for i in range(0, len(records), size)]


def encode_part(records: Iterable[LineRecord]) -> bytes:
    """One input part: each record's payload as one JSON line (no raw newline inside)."""
    lines = [json.dumps(r.payload, ensure_ascii=False, separators=(",", ":")) for r in records]
    return ("\n".join(lines) + "\n").encode()


def payload_bytes(record: LineRecord) -> int:
    return len(json.dumps(record.payload, ensure_ascii=False, separators=(",", ":")).encode())


def manifest(
    *,
    name: str | None,
    model: str,
    engine: str,
    seq2seq: bool,
    parts_: Sequence[Sequence[LineRecord]],
    rejected: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """What decoding the job's output needs, written before the job is created: the lines
    of each part, and the lines ended before it (``rejected``: ``{"line", "status_code",
    "code", "message"}``). ``name`` is None when no line was left for a job."""
    return {
        "transform_job": name,
        "model": model,
        "engine": engine,
        "seq2seq": seq2seq,
        "parts": [[r.meta() for r in part] for part in parts_],
        "rejected": list(rejected),
    }


def decode_part(
    manifest_: Mapping[str, Any], part: int, output: bytes | None, failure: str
) -> dict[int, LineOutcome]:
    """The outcome of each line of input part ``part``, by line number.

    ``output`` is the part's ``.out`` (None when SageMaker wrote none: the part failed or
    the job stopped first); ``failure`` is the error code for lines without output
    (``transform_failed`` or ``batch_cancelled``), whose message carries the job's reason.
    """
    metas: list[dict[str, Any]] = list(manifest_["parts"][part])
    if output is None:
        missing = _missing(failure, manifest_)
        return {m["line"]: LineOutcome.unanswered(*missing) for m in metas}
    lines = output.decode("utf-8", "replace").splitlines()
    lines = [line for line in lines if line.strip()]
    if len(lines) != len(metas):
        message = (
            f"the transform job wrote {len(lines)} output lines for {len(metas)} input "
            "lines of this part, so no line can be matched to its answer; run it again"
        )
        return {
            m["line"]: LineOutcome.unanswered("transform_output_invalid", message) for m in metas
        }
    codec = codec_for(str(manifest_["engine"]), seq2seq=bool(manifest_.get("seq2seq")))
    outcomes: dict[int, LineOutcome] = {}
    for meta, line in zip(metas, lines, strict=True):
        try:
            completion = codec.parse_reply(line)
        except ModelInvocationError as error:
            outcomes[meta["line"]] = LineOutcome.refused(error.status, error.code, error.message)
            continue
        created = int(manifest_.get("ended_at") or 0)
        result = line_result(meta, str(manifest_["model"]), completion, created)
        outcomes[meta["line"]] = LineOutcome.answered(result)
    return outcomes


def rejected_outcomes(manifest_: Mapping[str, Any]) -> dict[int, LineOutcome]:
    """Lines ended before the job (what the real-time route refuses too), by line number."""
    return {
        int(r["line"]): LineOutcome.refused(int(r["status_code"]), r["code"], r["message"])
        for r in manifest_.get("rejected", [])
    }


def _missing(failure: str, manifest_: Mapping[str, Any]) -> tuple[str, str]:
    reason = str(manifest_.get("failure_reason") or "no reason given")
    job = manifest_.get("transform_job")
    if failure == "batch_cancelled":
        message = f"the batch was cancelled before transform job {job} answered this line"
    else:
        message = (
            f"transform job {job} failed before this line's part of the input was written "
            f"({reason}); SageMaker keeps no output of a part with a failed record. Submit "
            "the line again, or check the job's CloudWatch logs for the record it refused"
        )
    return failure, message


def line_result(
    meta: Mapping[str, Any], model: str, completion: Completion, created: int | None = None
) -> dict[str, Any]:
    """A line's answer: the body the synchronous route answers (chat.completion or RAG).

    ``created`` (Unix seconds; now when None): a transform job's end, so every reading of
    the same output gives the same body and a batch finalised twice writes the same files."""
    from llmhost.serving.service import usage_of

    usage = usage_of(
        completion,
        estimated_prompt_tokens=int(meta["estimated_prompt_tokens"]),
        engine_counts_prompt=bool(meta["engine_counts_prompt"]),
    )
    finish = "length" if completion.finish_reason == "length" else "stop"
    sources = list(meta.get("sources") or [])
    if meta["kind"] == "rag":
        return {
            "answer": completion.text,
            "model": model,
            "finish_reason": completion.finish_reason,
            "sources": sources,
            "usage": usage,
            "latency_ms": {},
        }
    digest = hashlib.sha256(f"{model}/{meta['line']}/{completion.text}".encode()).hexdigest()
    return {
        "id": f"chatcmpl-{digest[:32]}",
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": finish,
                "logprobs": None,
            }
        ],
        "usage": usage,
        "llmhost": {"latency_ms": {}, "sources": sources},
    }


def failure_code(status: str) -> str:
    """The error code of lines a job ended without answering."""
    return "batch_cancelled" if status == "Stopped" else "transform_failed"
