"""The Batch Transform runner: start, report and stop a batch's SageMaker transform jobs
(the S3 and SageMaker calls; the rules are in ``llmhost.batches.transform``).

It plugs into the batch seam (``llmhost.batches.runners``) as ``transform``. ``start``
writes the lines' engine payloads as JSONL parts and creates one job per model of the batch
on that deployment's SageMaker model. The reconciler keeps a sleeping deployment's model (it
deletes only the endpoint), so the model is never created here: the lines of a deployment
without one yet (still being created, or failed) end at once with ``transform_unavailable``.
A job's name is deterministic per batch and model: a start that crashed after
``CreateTransformJob`` and before the batch recorded it finds the job again (described
first, or ``ResourceInUse`` on a race) and adopts it, so a batch never runs a line twice.

``outcomes`` reads only what is stored (the manifest, the job's status, its ``.out`` files),
so it may be called any number of times, from the job's state-change event and from the
batch schedule's poll alike: nothing while a job runs, every line of it once it has ended.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from llmhost.batches.lines import BatchLine, LineOutcome
from llmhost.batches.record import Batch
from llmhost.batches.runners import register_runner
from llmhost.batches.transform import (
    ENDED,
    LineRecord,
    TransformLayout,
    TransformUnavailable,
    decode_part,
    encode_part,
    failure_code,
    manifest,
    part_name,
    parts,
    payload_bytes,
    payload_limit_mb,
    rejected_outcomes,
    transform_concurrency,
    transform_instance,
    transform_job_name,
    transform_request,
    transform_tags,
)
from llmhost.errors import LlmhostError

logger = Logger(child=True)


@dataclass(frozen=True)
class TransformStarted:
    """One model's job: ``lines`` records went to it, ``rejected`` lines ended before it
    (what the real-time route refuses too); ``name`` is None when no line was left."""

    name: str | None
    group: int
    lines: int
    rejected: int
    adopted: bool = False


class TransformRunner:
    """Runs batch lines on SageMaker Batch Transform. Clients and collaborators are passed
    in: ``sagemaker`` and ``s3`` boto3 clients, the jobs ``bucket``, the ``stack`` name
    (ownership tag), ``registry`` (deployments) and ``service`` (``ServingService``, which
    builds each line's payload)."""

    name = "transform"

    def __init__(
        self, *, sagemaker: Any, s3: Any, bucket: str, stack: str, registry: Any, service: Any
    ) -> None:
        self._sagemaker = sagemaker
        self._s3 = s3
        self._bucket = bucket
        self._stack = stack
        self._registry = registry
        self._service = service

    @classmethod
    def from_runtime(cls) -> TransformRunner:
        from llmhost import aws, runtime

        return cls(
            sagemaker=aws.client("sagemaker"),
            s3=aws.client("s3"),
            bucket=runtime.jobs_settings().jobs_bucket,
            stack=runtime.stack_name(),
            registry=runtime.registry(),
            service=runtime.serving_service(),
        )

    # ------------------------------------------------------------------- the batch seam

    def start(self, batch: Batch, lines: Sequence[BatchLine]) -> None:
        """One job per model the lines name; idempotent (see the module docstring)."""
        for group, (model, group_lines) in enumerate(_by_model(lines), start=1):
            self.start_group(batch.id, group, model, group_lines)

    def outcomes(self, batch: Batch, lines: Sequence[BatchLine]) -> dict[int, LineOutcome]:
        """Every line of each ended job, and the lines ended before their job; none of a
        job still running."""
        found: dict[int, LineOutcome] = {}
        for group in range(1, len(_by_model(lines)) + 1):
            found.update(self.group_outcomes(batch.id, group))
        return found

    def cancel(self, batch: Batch, lines: Sequence[BatchLine]) -> None:
        """Stop the batch's running jobs; their unanswered lines end ``batch_cancelled``
        once SageMaker reads Stopped (parts it finished first keep their answers)."""
        for group in range(1, len(_by_model(lines)) + 1):
            self.stop(batch.id, group)

    # ------------------------------------------------------------------------ one model

    def start_group(
        self, batch_id: str, group: int, model: str, lines: Sequence[BatchLine]
    ) -> TransformStarted:
        """Start the job for ``model``'s ``lines`` (the batch's ``group``-th model)."""
        name = transform_job_name(batch_id, group)
        layout = TransformLayout(self._bucket, batch_id, group)
        existing = self._describe(name)
        if existing is not None:
            return self._adopted(existing, group, layout)
        try:
            return self._create(name, layout, model, lines)
        except TransformUnavailable as unavailable:
            # The batch goes on: these lines end with why, in its error file.
            rejected = [_rejection(line.line, unavailable) for line in lines]
            document = manifest(
                name=None, model=model, engine="tgi", seq2seq=False, parts_=[], rejected=rejected
            )
            self._put(layout.manifest_key, json.dumps(document).encode(), "application/json")
            return TransformStarted(None, group, 0, len(lines))

    def _create(
        self, name: str, layout: TransformLayout, model: str, lines: Sequence[BatchLine]
    ) -> TransformStarted:
        from llmhost import engines
        from llmhost.errors import DeploymentNotFound
        from llmhost.lifecycle.reconciler import plan_of
        from llmhost.serving.routing import route_for

        try:
            record = self._registry.get(model)
        except DeploymentNotFound as missing:
            raise TransformUnavailable(missing.message) from missing
        if record.resources.model is None:
            raise TransformUnavailable(
                f"deployment '{model}' has no SageMaker model yet ({record.status}); a "
                "transform job runs the deployment's model: wait until it is IN_SERVICE or "
                "SLEEPING, or run the batch with runner 'fanout'"
            )
        plan = plan_of(record)
        instance = transform_instance(record.spec.hosting.kind, plan.instance_type)
        concurrency = transform_concurrency(
            engines.copy_capacity_of(record.spec, plan).concurrency,
            engines.traits(record.spec.engine.name).continuous_batching,
        )
        route = route_for(record)
        records, rejected = self._records(route, lines, payload_limit_mb(concurrency))
        split = parts(records)
        document = manifest(
            name=name if records else None,
            model=route.name,
            engine=route.engine,
            seq2seq=route.chat_template == "flan-t5",
            parts_=split,
            rejected=rejected,
        )
        for number, part in enumerate(split):
            self._put(layout.part_key(number), encode_part(part), "application/jsonlines")
        self._put(layout.manifest_key, json.dumps(document).encode(), "application/json")
        if not records:
            return TransformStarted(None, layout.group, 0, len(rejected))
        request = transform_request(
            name=name,
            model_name=record.resources.model,
            layout=layout,
            instance_type=instance,
            concurrency=concurrency,
            tags=transform_tags(self._stack, model, layout.batch_id),
        )
        try:
            self._sagemaker.create_transform_job(**request)
        except Exception as error:
            code = _code(error)
            if code == "ResourceInUse":
                found = self._describe(name)
                if found is not None:
                    return self._adopted(found, layout.group, layout)
            if code == "ResourceNotFound" or _names_missing(error):
                raise TransformUnavailable(
                    f"deployment '{model}''s SageMaker model {record.resources.model} is gone "
                    "(the reconciler creates it again); run the batch again in a minute, or "
                    "with runner 'fanout'"
                ) from error
            if code == "ResourceLimitExceeded":
                raise TransformUnavailable(
                    f"the account's quota of {instance} for transform job usage is used up; "
                    "ask AWS Service Quotas for more, or run the batch with runner 'fanout'"
                ) from error
            raise _service_error(error, "SageMaker (CreateTransformJob)") from error
        logger.info("transform job %s started: %d lines", name, len(records))
        return TransformStarted(name, layout.group, len(records), len(rejected))

    def _records(
        self, route: Any, lines: Sequence[BatchLine], limit_mb: int
    ) -> tuple[list[LineRecord], list[dict[str, Any]]]:
        from pydantic import ValidationError

        from llmhost.serving.requests import ChatCompletionRequest
        from llmhost.serving.service import sources_of

        records: list[LineRecord] = []
        rejected: list[dict[str, Any]] = []
        for line in lines:
            try:
                request = ChatCompletionRequest.model_validate(line.body)
                prepared = self._service.prepare_offline(route, request)
            except LlmhostError as error:
                rejected.append(_rejection(line.line, error))
                continue
            except ValidationError as error:
                rejected.append(
                    {
                        "line": line.line,
                        "status_code": 400,
                        "code": "invalid_request",
                        "message": str(error)[:500],
                    }
                )
                continue
            too_long = _over_budget(route, prepared)
            if too_long:
                rejected.append(
                    {
                        "line": line.line,
                        "status_code": 422,
                        "code": "prompt_too_long",
                        "message": too_long,
                    }
                )
                continue
            record = LineRecord(
                line=line.line,
                # A chat line answers with a chat.completion, its RAG sources included.
                kind="chat",
                payload=prepared.payload,
                estimated_prompt_tokens=prepared.prompt_tokens(),
                engine_counts_prompt=prepared.chat and prepared.codec.chat_stream_usage,
                sources=sources_of(prepared.rag),
            )
            if payload_bytes(record) > limit_mb * 1024 * 1024:
                rejected.append(
                    {
                        "line": line.line,
                        "status_code": 413,
                        "code": "payload_too_large",
                        "message": f"the request is over the {limit_mb} MB a transform job sends "
                        "per record; shorten it, or run it with runner 'fanout'",
                    }
                )
                continue
            records.append(record)
        return records, rejected

    def _adopted(
        self, described: dict[str, Any], group: int, layout: TransformLayout
    ) -> TransformStarted:
        from llmhost.lifecycle.ownership import STACK_TAG

        name = str(described["TransformJobName"])
        if self._tags(described["TransformJobArn"]).get(STACK_TAG) != self._stack:
            raise TransformUnavailable(
                f"a transform job named {name} exists and is not this stack's; llmhost "
                "leaves it alone: create the batch again (a new id)"
            )
        document = self._manifest(layout) or {}
        count = sum(len(p) for p in document.get("parts", []))
        logger.info("transform job %s existed: adopted", name)
        return TransformStarted(name, group, count, len(document.get("rejected", [])), True)

    def status(self, batch_id: str, group: int = 1) -> str | None:
        """The job's TransformJobStatus, or None if it was never created."""
        described = self._describe(transform_job_name(batch_id, group))
        return None if described is None else str(described["TransformJobStatus"])

    def group_outcomes(self, batch_id: str, group: int) -> dict[int, LineOutcome]:
        """The outcomes of the ``group``-th model's lines that have one (see ``outcomes``)."""
        layout = TransformLayout(self._bucket, batch_id, group)
        document = self._manifest(layout)
        if document is None:
            return {}  # not started
        found = rejected_outcomes(document)
        if not document["parts"]:
            return found
        described = self._describe(str(document["transform_job"]))
        if described is None or described["TransformJobStatus"] not in ENDED:
            return found
        status = str(described["TransformJobStatus"])
        document["failure_reason"] = described.get("FailureReason", "")
        ended = described.get("TransformEndTime")
        document["ended_at"] = int(ended.timestamp()) if ended is not None else 0
        outputs = self._outputs(layout)
        for number in range(len(document["parts"])):
            key = outputs.get(part_name(number) + ".out")
            body = self._get(key) if key is not None else None
            found.update(decode_part(document, number, body, failure_code(status)))
        return found

    def stop(self, batch_id: str, group: int = 1) -> None:
        """Stop the ``group``-th model's job if it still runs."""
        name = transform_job_name(batch_id, group)
        described = self._describe(name)
        if described is None or described["TransformJobStatus"] != "InProgress":
            return
        try:
            self._sagemaker.stop_transform_job(TransformJobName=name)
        except Exception as error:
            if _code(error) == "ValidationException":
                return  # it ended meanwhile
            raise _service_error(error, "SageMaker (StopTransformJob)") from error

    # ---------------------------------------------------------------------------- helpers

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self._sagemaker.describe_transform_job(TransformJobName=name)
            return result
        except Exception as error:
            if _code(error) == "ResourceNotFound" or _names_missing(error):
                return None
            raise _service_error(error, "SageMaker (DescribeTransformJob)") from error

    def _tags(self, arn: str) -> dict[str, str]:
        try:
            tags = self._sagemaker.list_tags(ResourceArn=arn).get("Tags", [])
        except Exception as error:
            raise _service_error(error, "SageMaker (ListTags)") from error
        return {t["Key"]: t["Value"] for t in tags}

    def _manifest(self, layout: TransformLayout) -> dict[str, Any] | None:
        body = self._get(layout.manifest_key)
        return None if body is None else dict(json.loads(body))

    def _outputs(self, layout: TransformLayout) -> dict[str, str]:
        """Output file name -> key: SageMaker nests ``.out`` files under the output path
        by their input's path, so they are matched by name."""
        found: dict[str, str] = {}
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self._bucket, "Prefix": layout.output_prefix}
            if token:
                args["ContinuationToken"] = token
            try:
                page = self._s3.list_objects_v2(**args)
            except Exception as error:
                raise _service_error(error, "the jobs bucket (S3)") from error
            for item in page.get("Contents", []):
                key = str(item["Key"])
                found[key.rsplit("/", 1)[-1]] = key
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return found

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=content_type)
        except Exception as error:
            raise _service_error(error, "the jobs bucket (S3)") from error

    def _get(self, key: str) -> bytes | None:
        try:
            body: bytes = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
            return body
        except Exception as error:
            if _code(error) in ("NoSuchKey", "404"):
                return None
            raise _service_error(error, "the jobs bucket (S3)") from error


def _by_model(lines: Sequence[BatchLine]) -> list[tuple[str, list[BatchLine]]]:
    """The lines grouped by model, models sorted by name (a group's number is its job's)."""
    groups: dict[str, list[BatchLine]] = {}
    for line in sorted(lines, key=lambda item: item.line):
        groups.setdefault(line.model, []).append(line)
    return sorted(groups.items())


def _over_budget(route: Any, prepared: Any) -> str | None:
    """Why the engine would refuse this prompt (its token limits), or None. Checked before
    the job because a refused record costs its whole part its output."""
    prompt = prepared.prompt_tokens()
    if prompt > route.max_input_tokens:
        return (
            f"the prompt has about {prompt} tokens; model '{route.name}' takes at most "
            f"{route.max_input_tokens} input tokens: shorten the messages"
        )
    if prompt + prepared.params.max_new_tokens > route.max_total_tokens:
        return (
            f"the prompt (about {prompt} tokens) and max_tokens "
            f"({prepared.params.max_new_tokens}) pass model '{route.name}''s "
            f"{route.max_total_tokens} tokens in all: lower max_tokens or shorten the messages"
        )
    return None


def _rejection(line: int, error: LlmhostError) -> dict[str, Any]:
    return {"line": line, "status_code": error.status, "code": error.code, "message": error.message}


def _code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _names_missing(error: BaseException) -> bool:
    """SageMaker's ValidationException for a resource that does not exist."""
    message = str(error).lower()
    return _code(error) == "ValidationException" and (
        "could not find" in message or "not found" in message or "does not exist" in message
    )


def _service_error(error: BaseException, what: str) -> LlmhostError:
    from llmhost.aws_faults import fault_error

    fault = fault_error(error, what)
    if fault is not None:
        return fault
    failure = LlmhostError(f"{what} refused llmhost's request; see the function's log")
    failure.log_detail = f"{type(error).__name__}: {error}"
    return failure


register_runner("transform", TransformRunner.from_runtime)
