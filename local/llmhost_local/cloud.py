"""The emulated AWS of ``make run`` in one process, and its wiring (``LocalCloud``).

- DynamoDB, IAM, Secrets Manager, Application Auto Scaling and CloudWatch come from a moto
  server started in this process (other tools can talk to it too: its URL is printed).
- SageMaker's control plane comes from the stand-in, which validates each request against
  botocore's service model and runs SageMaker's state machine with compressed durations;
  a second stand-in serves the Application Auto Scaling dimensions moto lacks.
- The wiring AWS does is done here: the registry table has its stream enabled as
  template.yaml says, and a poller reads it through moto's DynamoDB Streams and delivers the
  records to the reconcile handler as Lambda's event source mapping does (batch size, filter
  criteria and partial batch failures from the template; ``llmhost_local.streams``), so every
  registry write - the API's, the scaling hook's, serving's wakes, the reconciler's own -
  reaches the reconciler as in AWS. A SageMaker status change arrives as an EventBridge
  event, and the drift-repair schedule fires every few seconds. The reconcile handler runs
  one invocation at a time, the way a Lambda with reserved concurrency 1 would.
- Scale to zero, time-compressed: a local CloudWatch (``llmhost_local.alarms``) evaluates
  llmhost's alarms against the runtime front's invocation log and delivers their state
  changes to the scaling function, as do serving's wake requests for a model with no copy
  ("zero-demo" shows it: idle, zero copies, a request answered 503 + Retry-After, awake).
- Asynchronous inference (``llmhost_local.async_inference``): the runtime front queues
  InvokeEndpointAsync requests, the async endpoints' instances step the queue, results go
  to moto's S3 and notifications to the two topics in moto's SNS, which delivers them to the
  jobs queue. The backlog metrics feed the local CloudWatch, and an alarm whose action is
  an async endpoint's step policy scales its variant (``llmhost_local.scaling_actions``), so
  a request queued at zero instances brings one up.
- Jobs: the jobs table, bucket, queue and dead-letter queue are made as template.yaml makes
  them (``llmhost_local.queues``), their durations compressed like every other.

``load_handler`` imports a function's handler as Lambda would. ``llmhost_local.runner`` serves
the result over HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from llmhost.clock import CloudClock
from llmhost.lifecycle.ownership import LOCAL_STACK
from llmhost_local import events

if TYPE_CHECKING:
    from llmhost.serving.http_app import AsgiServer

ACCESS_KEY = "llmhost-local"
SECRET_KEY = "llmhost-local-secret"
REGION = "us-east-1"
TABLE = "llmhost-registry"
ROLE_NAME = "llmhost-sagemaker-execution"
TOKEN_SECRET = "llmhost/hf-token"
API_KEYS_SECRET = "llmhost/api-keys"
LOCAL_API_KEY = "llmhost-local-key"
SCHEDULE_GROUP = "llmhost"
ASYNC_SUCCESS_TOPIC = "llmhost-async-success"
ASYNC_ERROR_TOPIC = "llmhost-async-error"
SCHEDULER_ROLE_NAME = "llmhost-scheduler"
# Invocations the local API Gateway runs at once (a Lambda concurrency limit; others wait).
API_CONCURRENCY = 64
# Threads of this process that may call AWS at once, all through the same clients: the
# control API's invocations, the OpenAI server's thread pool (anyio's default, 40 threads)
# and the pollers and workers (a few). Each client keeps that many connections open.
AWS_POOL_CONNECTIONS = API_CONCURRENCY + 40 + 8
# Concurrent pollers of the jobs queue, each one invocation at a time. Lambda's SQS event
# source mapping starts with five concurrent batches (invocations) once messages are there
# and adds up to 300 a minute while the backlog lasts, up to the mapping's
# MaximumConcurrency (template.yaml: 10) ("Configuring scaling behavior for SQS event source
# mappings", AWS Lambda Developer Guide). Here: its starting five, capped by
# MaximumConcurrency; the scaled-up ten would only contend for this machine's two cores
# (every poller, worker, moto and the engine share one process).
JOBS_POLLERS = 5
# The batch function's schedule (template.yaml: BatchSweep).
BATCH_SWEEP_S = 300
BATCH_SWEEP_MIN_S = 5.0
# The batch schedule (template.yaml: BatchSchedule, nightly by default): every 15 minutes of
# the compressed clock here, so a file dropped under scheduled/ runs within seconds.
BATCH_SCHEDULE_S = 900
SCALING_FUNCTION_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:llmhost-scaling"
# What answers the runtime front's invocations: the extractive stand-in (not an LLM) or a real
# model run by llama.cpp (``llmhost_local.llama``).
ENGINE_KINDS = ("extractive", "llama")
DEMO_DEPLOYMENT = {
    "name": "demo",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}
# A model that scales to zero after 5 idle minutes (the shortest a spec allows): at the
# runner's 60x, five seconds without a request.
SCALE_TO_ZERO_DEPLOYMENT = {
    "name": "zero-demo",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "demo-pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 1, "scale_to_zero": True, "idle_minutes": 5},
}


def project_root() -> Path:
    """The checkout holding functions/ (this file lives in local/llmhost_local/)."""
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        if (parent / "functions").is_dir() and (parent / "template.yaml").exists():
            return parent
    raise SystemExit("cannot find the llmhost checkout (functions/ and template.yaml)")


def load_handler(function: str, service: str) -> ModuleType:
    """Import ``functions/<function>/app.py`` as Lambda would, with its service name set."""
    os.environ["POWERTOOLS_SERVICE_NAME"] = service
    path = project_root() / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"llmhost_function_{function}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LocalCloud:
    """Emulated AWS for one process: moto server + SageMaker stand-in + event delivery."""

    def __init__(
        self,
        moto_port: int = 0,
        speed: float = 60.0,
        drift_seconds: float = 5.0,
        engine_url: str | None = None,
        engine_latency_ms: float = 0,
        token_interval_ms: float = 0,
        runtime_url: str | None = None,
        engine_kind: str = "extractive",
    ) -> None:
        if engine_kind not in ENGINE_KINDS:
            raise ValueError(f"engine_kind must be one of {', '.join(ENGINE_KINDS)}")
        self.engine_kind = engine_kind
        self.external_runtime_url = runtime_url
        self.moto_port = moto_port
        self.data_dir = project_root() / ".llmhost"
        # Embedded Qdrant's folder: QDRANT_PATH when set, as in the serve and ingest functions.
        self.qdrant_path = Path(os.environ.get("QDRANT_PATH") or self.data_dir / "qdrant")
        self.engine_url = engine_url
        self.engine_latency_ms = engine_latency_ms
        self.token_interval_ms = token_interval_ms
        self.speed = speed
        self.clock = CloudClock(speed)
        self.drift_seconds = drift_seconds
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._scaling_queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.front: Any = None
        self.async_inference: Any = None
        self.backlog_tracking: Any = None
        self.alarms: Any = None
        self.scaling_module: ModuleType | None = None
        self._stop = threading.Event()
        self._reconcile_lock = threading.Lock()  # one reconcile invocation at a time
        self.stream: Any = None
        self.trace_export: Any = None  # the traces stream's poller, when exporting
        self._statuses: dict[str, str] = {}
        self.reconcile_module: ModuleType | None = None
        self.api_module: ModuleType | None = None
        self.serve_module: ModuleType | None = None
        self.batch_module: ModuleType | None = None
        self._batch_lock = threading.Lock()  # the batch function, one invocation at a time
        self.batch_schedule_runs = 0  # runs of the batch schedule so far
        self.log = lambda line: print(line, flush=True)

    # ----------------------------------------------------------------------------- start

    def start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
        warnings.filterwarnings("ignore", message="No application metrics to publish")

        from moto.moto_api._internal import moto_api_backend

        from llmhost import aws, runtime
        from llmhost_local.standin import AutoScalingStandIn, SageMakerStandIn

        # moto keeps its state per process: a second cloud in one process (tests) starts clean.
        moto_api_backend.reset()
        _serialize_dynamodb_writes()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.moto_port, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "LLMHOST_AWS_ENDPOINT_URL": self.moto_url,
                "LLMHOST_AWS_MAX_POOL_CONNECTIONS": str(AWS_POOL_CONNECTIONS),
                "REGISTRY_TABLE_NAME": TABLE,
                # What template.yaml sets from AWS::StackName: the llmhost:stack tag's value.
                "LLMHOST_STACK_NAME": LOCAL_STACK,
                # SecretsPrefix: the token secrets a spec may name (tagged llmhost:allowed).
                "SECRETS_PREFIX": "llmhost/",
                "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
                "POWERTOOLS_TRACE_DISABLED": "true",
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", "WARNING"),
                "QDRANT_PATH": str(self.qdrant_path),
                # A local request may wait longer than API Gateway's 29 s would allow.
                "SERVING_TIMEOUT_S": os.environ.get("SERVING_TIMEOUT_S", "60"),
                "SERVING_MAX_ATTEMPTS": "1",
            }
        )
        aws.reset()
        runtime.reset()
        # One compressed clock for the stand-ins, the local CloudWatch, the scaling hook and
        # serving: every AWS duration passes ``speed`` times faster for all of them.
        runtime.override(clock=self.clock)
        # A batch is handed to the batch function as the asynchronous invoke would.
        runtime.override(batch_kick=self._kick_batch)
        seconds = self.clock.seconds
        self.standin = SageMakerStandIn(
            region=REGION,
            create_seconds=seconds(600),
            update_seconds=seconds(300),
            delete_seconds=seconds(60),
            ic_create_seconds=seconds(240),
            # Waking a component from zero copies is an update of its copy count.
            ic_update_seconds=seconds(180),
            ic_delete_seconds=seconds(60),
            on_event=self._sagemaker_event,
            # Batch Transform: instances start in minutes, the records go to the local
            # engine, input and output live in moto's S3.
            transform_start_seconds=seconds(300),
            s3=lambda: aws.client("s3"),
            invoke_model=self._transform_container,
            transform_in_background=True,  # the clock thread keeps settling endpoints
        )
        self.autoscaling = AutoScalingStandIn(sagemaker=self.standin, region=REGION)
        self._start_data_plane()
        aws.add_customizer(lambda service, client: self._attach(service, client))
        self._provision()
        self.api_module = load_handler("api", "llmhost-api")
        self.serve_module = load_handler("serve", "llmhost-serve")
        self.reconcile_module = load_handler("reconcile", "llmhost-reconcile")
        self.scaling_module = load_handler("scaling", "llmhost-scaling")
        self._wire_scaling()
        self._workers = [
            threading.Thread(target=self._deliver, name="reconcile-worker", daemon=True),
            threading.Thread(
                target=self.stream.run, args=(self._stop,), name="stream", daemon=True
            ),
            threading.Thread(target=self._deliver_scaling, name="scaling-worker", daemon=True),
            threading.Thread(target=self._clock, name="sagemaker-clock", daemon=True),
            threading.Thread(target=self._async_instances, name="async-inference", daemon=True),
            threading.Thread(target=self._sweep_batches, name="batch-sweep", daemon=True),
        ]
        self._workers += self._jobs_pollers()
        if self.trace_export is not None:  # LLMHOST_OTLP_ENDPOINT: the traces stream's poller
            self._workers.append(
                threading.Thread(
                    target=self.trace_export.run,
                    args=(self._stop,),
                    name="trace-export",
                    daemon=True,
                )
            )
        for worker in self._workers:
            worker.start()

    def _jobs_pollers(self) -> list[threading.Thread]:
        """The jobs function on the jobs queue: pollers as Lambda's event source mapping
        runs them (``llmhost_local.queues``), each invoking its own copy of the handler (an
        execution environment), and the worker's serving service with the jobs function's
        timeout from template.yaml (here every function shares one environment)."""
        from llmhost import aws, runtime
        from llmhost.runtime import build_serving_service
        from llmhost_local.queues import QueuePoller

        worker = self.jobs_source.serving_environment
        runtime.override(
            worker_serving_service=build_serving_service(
                runtime.serving_settings().model_copy(
                    update={
                        "serving_timeout_s": float(worker["SERVING_TIMEOUT_S"]),
                        "serving_max_attempts": int(worker["SERVING_MAX_ATTEMPTS"]),
                    }
                )
            )
        )
        threads = []
        for index in range(min(self.jobs_source.max_concurrency, JOBS_POLLERS)):
            module = load_handler("jobs", "llmhost-jobs")

            def invoke(event: dict[str, Any], module: ModuleType = module) -> dict[str, Any]:
                answer: dict[str, Any] = module.handler(event, events.LambdaContext("llmhost-jobs"))
                return answer

            poller = QueuePoller(
                aws.client("sqs"),
                self.jobs.queue_url,
                self.jobs.queue_arn,
                self.jobs_source,
                invoke,
                region=REGION,
                log=lambda line: self.log(line),
            )
            threads.append(
                threading.Thread(
                    target=poller.run, args=(self._stop,), name=f"jobs-{index}", daemon=True
                )
            )
        return threads

    def _wire_scaling(self) -> None:
        """Serving's wakes and the local CloudWatch's alarm events go to the scaling function."""
        from llmhost import aws, runtime
        from llmhost.serving.wake import CallbackWakeDispatcher
        from llmhost_local.alarms import AlarmEvaluator

        def wake(event: dict[str, Any]) -> None:
            self.log(f"  {event['deployment']}: a request found no copy; waking it")
            self._scaling_queue.put(("serving", event))

        runtime.override(wake_dispatcher=CallbackWakeDispatcher(wake))
        if self.front is not None:  # an external runtime keeps its own invocation counts
            from llmhost_local.scaling_actions import BacklogTargetTracking, StepScalingActions

            # An alarm whose action is an async endpoint's step policy scales its variant.
            actions = StepScalingActions(
                aws.lazy("application-autoscaling"),
                aws.lazy("sagemaker"),
                speed=self.clock.speed,
                log=self.log,
            )
            self.alarms = AlarmEvaluator(
                aws.lazy("cloudwatch"),
                self.front.invocations,
                lambda event: self._scaling_queue.put(("alarm", event)),
                speed=self.clock.speed,
                region=REGION,
                gauge=self.async_inference.gauge,
                act=actions.run,
            )
            # Target tracking on an async endpoint's backlog: to zero on an empty queue.
            self.backlog_tracking = BacklogTargetTracking(
                aws.lazy("application-autoscaling"),
                aws.lazy("sagemaker"),
                self.async_inference.gauge,
                self.async_inference.sample,
                speed=self.clock.speed,
                log=self.log,
            )

    def _start_data_plane(self) -> None:
        """A SageMaker runtime front whose endpoints answer as the stand-in says they exist."""
        from llmhost_local.engine import LocalEngine
        from llmhost_local.runtime_front import RuntimeFront, serve_front

        if self.engine_kind == "llama":
            from llmhost_local.llama import llama_engine

            self.engine = llama_engine(
                latency_ms=self.engine_latency_ms, token_interval_ms=self.token_interval_ms
            )
        else:
            self.engine = LocalEngine(
                latency_ms=self.engine_latency_ms, token_interval_ms=self.token_interval_ms
            )
        if self.external_runtime_url:
            # Someone else plays SageMaker's runtime (a benchmark's separate process).
            self._front_server, self.runtime_url = None, self.external_runtime_url
        else:
            from llmhost import aws
            from llmhost_local.async_inference import AsyncInference

            # Async endpoints: their queue, S3 and SNS from moto, the engine as container.
            self.async_inference = AsyncInference(
                lambda endpoint: self.standin.describe("endpoint", endpoint),
                aws.lazy("s3"),
                aws.lazy("sns"),
                self._async_container,
                region=REGION,
            )
            self.front = RuntimeFront(
                self._route, split_bytes=None, async_inference=self.async_inference
            )
            self._front_server, self.runtime_url = serve_front(self.front, port=0)
        os.environ["LLMHOST_AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] = self.runtime_url

    def _route(self, endpoint: str, component: str | None) -> Any:
        """Where the runtime front sends a request: the engine, or AWS's refusal."""
        from llmhost_local.runtime_state import RouteTarget

        described = self.standin.describe("endpoint", endpoint)
        if described is None:
            return None
        if described["EndpointStatus"] not in {"InService", "Updating"}:
            return RouteTarget.not_ready()
        if component is not None:
            ic = self.standin.describe("inference-component", component)
            if ic is None or ic["EndpointName"] != endpoint:
                return RouteTarget.component_not_found()
            if ic["RuntimeConfig"].get("CurrentCopyCount", 0) == 0:
                return RouteTarget.no_capacity()
        if self.engine_url:
            return RouteTarget.upstream(self.engine_url)
        return RouteTarget.local(self.engine)

    def _transform_container(self, model: str, body: bytes) -> tuple[int, bytes]:
        """A transform job's record, posted to the model's container: the local engine."""
        if self.engine_url:
            import urllib.error
            import urllib.request

            request = urllib.request.Request(
                self.engine_url.rstrip("/") + "/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=600) as reply:
                    return int(reply.status), reply.read()
            except urllib.error.HTTPError as error:
                return int(error.code), error.read()
        answer = self.engine.handle("POST", "/invocations", body)
        return answer.status, answer.body

    def _async_container(
        self, endpoint: str, body: bytes, content_type: str, accept: str
    ) -> tuple[int, str, bytes]:
        """An async endpoint's instance answering one queued request: the local engine."""
        status, reply = self._transform_container(endpoint, body)
        return status, "application/json", reply

    def _async_instances(self) -> None:
        """The async endpoints' instances take queued requests while they run."""
        while not self._stop.wait(0.25):
            if self.async_inference is None:
                continue
            try:
                self.async_inference.step()
            except Exception as error:  # moto stopping under us, say: try next tick
                self.log(f"  async inference failed: {error}")

    def _sagemaker_event(self, event: dict[str, Any]) -> None:
        """EventBridge's rules: endpoint state changes to the reconciler, a transform job's
        end to the batch function (as ``{"batch_id": ...}``, what it advances)."""
        from llmhost.batches.transform import STATE_CHANGE, batch_of_state_change

        if event.get("detail-type") != STATE_CHANGE:
            self._queue.put(("sagemaker", event))
            return
        batch_id = batch_of_state_change(event, LOCAL_STACK)
        if batch_id is None or not (project_root() / "functions" / "batch" / "app.py").exists():
            return
        self._kick_batch(batch_id)

    def _kick_batch(self, batch_id: str) -> None:
        """The batch function, invoked asynchronously with ``{"batch_id"}``."""
        threading.Thread(
            target=self._advance_batch, args=(batch_id,), name="batch-kick", daemon=True
        ).start()

    def _advance_batch(self, batch_id: str) -> None:
        with self._batch_lock:
            if self.batch_module is None:
                self.batch_module = load_handler("batch", "llmhost-batch")
            try:
                self.batch_module.handler(
                    {"batch_id": batch_id}, events.LambdaContext("llmhost-batch")
                )
            except Exception as error:  # Lambda retries; the batch schedule sweeps too
                self.log(f"  batch {batch_id}: advancing it failed: {error}")

    def _attach(self, service: str, client: Any) -> None:
        if service == "sagemaker":
            self.standin.attach(client)
        elif service == "application-autoscaling":
            self.autoscaling.attach(client)

    def _provision(self) -> None:
        """What `sam deploy` creates: the registry table, the execution role, a demo secret."""
        from llmhost import aws
        from llmhost_local.streams import StreamPoller, stream_source

        source = stream_source(project_root() / "template.yaml")
        table = aws.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "name", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "name", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": source.view_type},
        )["TableDescription"]
        self.table_arn = table["TableArn"]
        self.stream = StreamPoller(
            aws.client("dynamodbstreams"),
            table["LatestStreamArn"],
            source,
            self._invoke_reconcile,
            log=lambda line: self.log(line),
            forget=_forget_stream_iterators,
        )
        self.stream.start_at_latest()  # StartingPosition: LATEST, before anything is written
        os.environ["SAGEMAKER_EXECUTION_ROLE_ARN"] = _service_role(ROLE_NAME, "sagemaker")
        # Sleep/wake schedules: EventBridge Scheduler targets the scaling function with a role.
        aws.client("scheduler").create_schedule_group(Name=SCHEDULE_GROUP)
        os.environ.update(
            {
                "SCHEDULE_GROUP": SCHEDULE_GROUP,
                "SCHEDULER_ROLE_ARN": _service_role(SCHEDULER_ROLE_NAME, "scheduler"),
                "SCALING_FUNCTION_ARN": SCALING_FUNCTION_ARN,
            }
        )
        secret = aws.client("secretsmanager").create_secret(
            Name=TOKEN_SECRET,
            SecretString="hf_local_demo_token",
            Tags=[{"Key": "llmhost:allowed", "Value": "true"}],
        )
        self.token_secret_arn = secret["ARN"]
        from llmhost.serving.auth import hash_key

        keys = aws.client("secretsmanager").create_secret(
            Name=API_KEYS_SECRET, SecretString=json.dumps({"local": hash_key(LOCAL_API_KEY)})
        )
        os.environ["API_KEYS_SECRET_ARN"] = keys["ARN"]
        self._provision_jobs()
        self._provision_traces()
        from llmhost_local.usage_table import provision_usage_table

        template = project_root() / "template.yaml"
        os.environ.update(provision_usage_table(aws.client("dynamodb"), template))

    def _provision_traces(self) -> None:
        """The traces table as template.yaml makes it (``llmhost_local.traces``) with the
        functions' TRACE_* settings and, with LLMHOST_OTLP_ENDPOINT set, the trace export
        function on its stream (``llmhost_local.trace_export``)."""
        from llmhost import aws
        from llmhost_local.trace_export import start_trace_export
        from llmhost_local.traces import provision_traces, trace_environment, traces_source

        template = project_root() / "template.yaml"
        source = traces_source(template)
        stream_arn = provision_traces(aws.client("dynamodb"), source)
        os.environ.update(trace_environment(source, dict(os.environ)))
        self.trace_export = start_trace_export(
            template=template,
            stream_arn=stream_arn,
            streams=aws.client("dynamodbstreams"),
            secrets=aws.client("secretsmanager"),
            load_handler=load_handler,
            environ=os.environ,
            log=lambda line: self.log(line),
            forget=_forget_stream_iterators,
        )

    def _provision_jobs(self) -> None:
        """The jobs table, bucket, queue and dead-letter queue (``llmhost_local.queues``)."""
        from llmhost import aws
        from llmhost_local.queues import jobs_source, provision_jobs

        self.jobs_source = jobs_source(project_root() / "template.yaml")
        self.jobs = provision_jobs(
            aws.client("dynamodb"),
            aws.client("s3"),
            aws.client("sqs"),
            self.jobs_source,
            speed=self.clock.speed,
        )
        os.environ.update(self.jobs.environment(self.jobs_source.max_receive_count))
        self.log(f"  jobs queue: {self.jobs.queue_url} (dead letters: {self.jobs.dlq_url})")
        self._provision_async_topics()

    def _provision_async_topics(self) -> None:
        """AsyncSuccessTopic and AsyncErrorTopic, each subscribed by the jobs queue with raw
        delivery off (the worker reads SNS's envelope), as template.yaml makes them."""
        from llmhost import aws

        sns = aws.client("sns")
        topics = {}
        for name, setting in (
            (ASYNC_SUCCESS_TOPIC, "ASYNC_SUCCESS_TOPIC_ARN"),
            (ASYNC_ERROR_TOPIC, "ASYNC_ERROR_TOPIC_ARN"),
        ):
            arn = sns.create_topic(Name=name)["TopicArn"]
            sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=self.jobs.queue_arn)
            topics[setting] = arn
        os.environ.update(topics)

    def create_demo(self, scale_to_zero: bool = True) -> None:
        """A deployment to talk to right away (served by the local engine) and, unless told
        otherwise, one that scales to zero when idle and wakes on a request. With a real
        model (the llama engine, or a TGI server), both name it, with its token limits from
        the engine's ``/info``, as a TGI container's would be configured."""
        from llmhost.errors import LlmhostError

        bodies = [DEMO_DEPLOYMENT, SCALE_TO_ZERO_DEPLOYMENT][: 2 if scale_to_zero else 1]
        for body in bodies:
            spec = self.demo_spec(body)
            try:
                self.create_deployment(spec)
            except LlmhostError as error:
                if spec is body:
                    raise
                # A server's model id a spec cannot name (a local path): the usual demo.
                self.log(f"demo deployment {body['name']}: {error}; using {body['model']}")
                self.create_deployment(body)

    def demo_spec(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` for the engine that answers: unchanged for the extractive stand-in (it
        plays any model); for a real model (the llama engine, or a TGI server at
        ``engine_url``), the model id and token limits its ``/info`` reports."""
        info = self.engine_info()
        if info is None:
            return body
        spec = {
            **body,
            "model": {"kind": "hub", "model_id": info["model_id"]},
            "engine": {
                "name": "tgi",
                "options": {
                    "max_input_tokens": info["max_input_tokens"],
                    "max_total_tokens": info["max_total_tokens"],
                },
            },
        }
        if self.engine_kind == "llama" and not self.engine_url:
            # SmolLM2's model card samples at temperature 0.2, top_p 0.9; its answers are
            # short, and 256 new tokens leave the rest of its budget to the RAG context.
            spec["generation"] = {"max_new_tokens": 256, "temperature": 0.2, "top_p": 0.9}
        return spec

    def engine_info(self) -> dict[str, Any] | None:
        """TGI's ``/info`` of the real model that answers (``model_id``, ``max_input_tokens``,
        ``max_total_tokens``), or None for the extractive stand-in and for a server that
        does not report them (vLLM has no ``/info``). Asked once per stack: a server's
        ``/info`` is read once for both demo deployments."""
        if not hasattr(self, "_engine_info"):
            self._engine_info = self._read_engine_info()
        return self._engine_info

    def _read_engine_info(self) -> dict[str, Any] | None:
        if self.engine_url:
            import urllib.error
            import urllib.request

            try:
                with urllib.request.urlopen(self.engine_url.rstrip("/") + "/info", timeout=5) as r:
                    info = json.loads(r.read())
            except (OSError, ValueError, urllib.error.URLError):
                return None
        elif self.engine_kind == "llama":
            info = self.engine.info()
        else:
            return None
        fields = ("model_id", "max_input_tokens", "max_total_tokens")
        if not isinstance(info, dict) or not all(info.get(f) for f in fields):
            return None
        if not all(isinstance(info[f], int) for f in fields[1:]):
            return None
        return {f: info[f] for f in fields}

    def create_deployment(self, body: dict[str, Any]) -> None:
        """Create a deployment with the API's own operation, and let the reconciler bring
        it up."""
        from llmhost import runtime
        from llmhost.specs import parse_spec

        runtime.deployments().create(parse_spec(body))

    def start_openai_server(self, port: int) -> AsgiServer:
        """The OpenAI-compatible app, as the stream function serves it behind its URL. Per-key
        rate limits are off unless API_KEY_REQUESTS_PER_MINUTE is set (load tests)."""
        from llmhost import runtime
        from llmhost.serving.auth import ApiKeyAuth, hashes_from_secret
        from llmhost.serving.http_app import ServingHttpApp
        from llmhost.serving.http_app import serve as serve_openai
        from llmhost.serving.ratelimit import KeyRateLimiter, RateLimits

        auth = ApiKeyAuth(hashes_from_secret(os.environ["API_KEYS_SECRET_ARN"]))
        limiter = KeyRateLimiter(RateLimits.from_env(default_rate=0))
        app = ServingHttpApp(
            runtime.serving_service,
            auth,
            log=self.log,
            limiter=limiter,
            holds=runtime.hold_policy,
            batches=runtime.batches,
        )
        server = serve_openai(app, port=port)
        threading.Thread(target=server.serve_forever, name="openai", daemon=True).start()
        return server

    # -------------------------------------------------------------------------- events

    def _invoke_reconcile(self, event: dict[str, Any]) -> dict[str, Any]:
        """One invocation of the reconcile handler (the stream poller's and the worker's)."""
        assert self.reconcile_module is not None
        with self._reconcile_lock:
            result: dict[str, Any] = self.reconcile_module.handler(
                event, events.LambdaContext("llmhost-reconcile")
            )
        for item in result.get("reconciled", []):
            self._report(item)
        return result

    def _clock(self) -> None:
        last_sweep = last_tick = time.monotonic()
        while not self._stop.wait(0.25):
            # The guardrails' 5-minute tick (EventBridge Scheduler in AWS): the budget, and
            # the MaxCapacity an overload held while its copies started, given back.
            if time.monotonic() - last_tick >= self.clock.seconds(300):
                last_tick = time.monotonic()
                self._scaling_queue.put(("tick", {"source": "llmhost.budget", "action": "tick"}))
            self.standin.tick()  # emits state-change events through on_event
            if self.alarms is not None:
                try:
                    self.alarms.tick()  # queues alarm state changes for the scaling function
                except Exception as error:  # moto stopping under us, say: try next tick
                    self.log(f"  alarm evaluation failed: {error}")
            if self.backlog_tracking is not None:
                try:
                    self.backlog_tracking.tick()
                except Exception as error:  # an endpoint deleted under us, say: next tick
                    self.log(f"  backlog target tracking failed: {error}")
            if time.monotonic() - last_sweep >= self.drift_seconds:
                last_sweep = time.monotonic()
                self._queue.put(("schedule", events.schedule_event()))

    def _sweep_batches(self) -> None:
        """The batch function's schedules (compressed): the sweep (every 5 minutes in AWS)
        advances every open batch, so one a crash left behind finishes; the batch schedule
        (nightly in AWS, every ``BATCH_SCHEDULE_S`` here) starts a batch for each new file
        under ``scheduled/`` in the jobs bucket."""
        last_schedule = time.monotonic()
        # At least BATCH_SWEEP_MIN_S apart: a sweep reads every open batch's lines and jobs,
        # and at 600x one every 0.5 s would take the CPU the jobs worker needs.
        while not self._stop.wait(max(self.clock.seconds(BATCH_SWEEP_S), BATCH_SWEEP_MIN_S)):
            event: dict[str, Any] = {}
            if time.monotonic() - last_schedule >= self.clock.seconds(BATCH_SCHEDULE_S):
                last_schedule = time.monotonic()
                event = {"source": "llmhost.batch-schedule", "action": "start-scheduled"}
            with self._batch_lock:
                if self.batch_module is None:
                    self.batch_module = load_handler("batch", "llmhost-batch")
                try:
                    result = self.batch_module.handler(event, events.LambdaContext("llmhost-batch"))
                except Exception as error:  # moto stopping under us, say: try next time
                    self.log(f"  batch sweep failed: {error}")
                    continue
            if event:
                self.batch_schedule_runs += 1
            for key, batch_id in result.get("scheduled", {}).get("started", {}).items():
                self.log(f"  batch schedule: {key} started as {batch_id}")

    def _deliver(self) -> None:
        assert self.reconcile_module is not None
        while not self._stop.is_set():
            try:
                source, event = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._invoke_reconcile(event)
            except Exception as error:  # the real platform would retry; so does the schedule
                self.log(f"  reconcile ({source}) failed: {error}")

    def _deliver_scaling(self) -> None:
        """The scaling function's invocations: one at a time, in arrival order."""
        assert self.scaling_module is not None
        while not self._stop.is_set():
            try:
                source, event = self._scaling_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if source == "alarm":
                self._report_alarm(event)
            context = events.LambdaContext("llmhost-scaling")
            try:
                result = self.scaling_module.handler(event, context)
            except Exception as error:  # an async invoke: Lambda would retry, then DLQ
                self.log(f"  scaling ({source}) failed: {error}")
                continue
            name = result.get("deployment") or event.get("deployment")
            if result.get("handled") and name:
                decision = str(result.get("decision", ""))
                if decision and not decision.startswith("Alarm "):  # not a bare transition
                    self.log(f"  {name}: scaling hook decided {decision}")

    def _report_alarm(self, event: dict[str, Any]) -> None:
        detail = event["detail"]
        alarm, state = str(detail["alarmName"]), detail["state"]["value"]
        change = f"{detail['previousState']['value']} -> {state}"
        for kind, why in (
            ("idle", {"ALARM": "no requests for its idle minutes", "OK": "requests again"}),
            ("no-capacity", {"ALARM": "a request found no copy", "OK": "no more refusals"}),
            ("overload", {"ALARM": "engines refusing requests", "OK": "demand served"}),
            ("underload", {"ALARM": "copies quiet for 15 minutes", "OK": "busy again"}),
        ):
            if alarm.endswith(f"-{kind}"):
                name = alarm.removeprefix("llmhost-").removesuffix(f"-{kind}")
                self.log(f"  {name}: {why.get(state, state)} ({kind} alarm {change})")
                return
        self.log(f"  alarm {alarm}: {change}")

    def _report(self, item: dict[str, Any]) -> None:
        from llmhost import runtime

        name, status = item["name"], item["status"]
        if self._statuses.get(name) == status and not item["steps"]:
            return
        self._statuses[name] = status
        try:
            reason = runtime.registry().get(name).status_reason
        except Exception:
            reason = ""
        steps = f" [{', '.join(item['steps'])}]" if item["steps"] else ""
        self.log(f"  {name}: {status}{' - ' + reason if reason else ''}{steps}")

    def stop(self) -> None:
        self._stop.set()
        for worker in getattr(self, "_workers", []):
            # Let a handler in flight finish before moto goes away under it.
            worker.join(timeout=5)
        if self._front_server is not None:
            self._front_server.shutdown()
        self._moto.stop()
        from llmhost import runtime

        runtime.close_store()  # embedded Qdrant: before the interpreter's exit, quietly


def _forget_stream_iterators(iterators: list[str]) -> None:
    """Drop shard iterators the stream poller is done with from this process's moto, which
    keeps every one it hands out (four polls a second would grow it by ~40 MB an hour)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodbstreams.models import dynamodbstreams_backends

    store = dynamodbstreams_backends[DEFAULT_ACCOUNT_ID][REGION].shard_iterators
    for iterator in iterators:
        store.pop(iterator, None)


def _service_role(name: str, service: str) -> str:
    """An IAM role ``service``.amazonaws.com may assume, as the stack creates it; its ARN."""
    from llmhost import aws

    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": f"{service}.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = aws.client("iam").create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    return str(role["Role"]["Arn"])


_DYNAMODB_WRITES = threading.RLock()


def _serialize_dynamodb_writes() -> None:
    """One DynamoDB write at a time in moto (once per process). moto's TransactWriteItems
    deep-copies every table to roll back, and a write from another thread during that copy
    fails the transaction with a 500 ("dictionary changed size during iteration"); DynamoDB
    itself isolates them."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        method = getattr(DynamoDBBackend, name)
        if getattr(method, "_llmhost_serialized", False):
            continue

        def serialized(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            with _DYNAMODB_WRITES:
                return _method(*args, **kwargs)

        serialized._llmhost_serialized = True  # type: ignore[attr-defined]
        setattr(DynamoDBBackend, name, serialized)
