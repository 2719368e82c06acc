"""template.yaml's functions and layers: runtime, architecture, memory and timeouts,
which layers each carries and how they build, and the environment the code reads.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def test_merge_follows_sam_globals_rules() -> None:
    # Given Globals with a layer, an architecture and variables, and a function adding its own
    defaults = {"Layers": ["A"], "Architectures": ["arm64"], "Environment": {"V": {"X": "1"}}}
    function = {"Layers": ["B"], "Architectures": ["x86_64"], "Environment": {"V": {"Y": "2"}}}
    # Then layers add up (global first), architectures are replaced, variables merge
    assert sam.merge(defaults, function) == {
        "Layers": ["A", "B"],
        "Architectures": ["x86_64"],
        "Environment": {"V": {"X": "1", "Y": "2"}},
    }


LWA_LAYER = (
    "arn:${AWS::Partition}:lambda:${AWS::Region}:753240598075:layer:"
    "LambdaAdapterLayerArm64:${LambdaAdapterLayerVersion}"
)


def test_every_function_runs_python313_arm64_with_the_layer(template: dict[str, Any]) -> None:
    functions = sam.functions(template)
    assert set(functions) == sam.DATA_PLANE | sam.CONTROL_PLANE | sam.TRACE_EXPORT
    for name, props in functions.items():
        assert props["Runtime"] == "python3.13", name
        assert props["Architectures"] == ["arm64"], name
        assert props["Tracing"] == "Active", name
        assert {"Ref": "LlmhostLayer"} in props["Layers"], name
        if props["Handler"].endswith(".sh"):
            # The Lambda Web Adapter executes the handler as a program.
            handler_file = sam.ROOT / props["CodeUri"] / props["Handler"]
            assert os.access(handler_file, os.X_OK), f"{name}: {handler_file} is not executable"
        else:
            handler_file = sam.ROOT / props["CodeUri"] / (props["Handler"].split(".")[0] + ".py")
        assert handler_file.is_file(), f"{name}: {handler_file} is missing"
        assert props["LoggingConfig"]["LogGroup"]["Ref"] in template["Resources"], name
    sizes = {name: (props["MemorySize"], props["Timeout"]) for name, props in functions.items()}
    # 29 s is API Gateway's integration timeout; the data plane's memory buys CPU to embed.
    assert sizes == {
        "ApiFunction": (512, 29),
        "ReconcileFunction": (512, 120),
        "ScalingFunction": (512, 30),
        "ServeFunction": (2048, 29),
        "StreamFunction": (2048, {"Ref": "StreamTimeout"}),
        "IngestFunction": (2048, 300),
        # Lambda's longest: the jobs worker runs generations API Gateway would cut at 29 s.
        "JobsFunction": (2048, 900),
        "BatchFunction": (1024, 900),
        "TraceExportFunction": (256, 60),
    }


def test_only_the_functions_that_embed_carry_the_embedding_runtime(
    template: dict[str, Any],
) -> None:
    functions = sam.functions(template)
    layers = {name: props["Layers"] for name, props in functions.items()}
    data_plane = [{"Ref": "LlmhostLayer"}, {"Ref": "EmbeddingLayer"}, {"Ref": "RetrievalLayer"}]
    assert layers["ServeFunction"] == data_plane
    assert layers["IngestFunction"] == data_plane
    assert layers["JobsFunction"] == data_plane
    assert layers["BatchFunction"] == data_plane
    assert layers["StreamFunction"] == [*data_plane, {"Fn::Sub": LWA_LAYER}]
    for name in sam.CONTROL_PLANE:
        # 13 MB instead of 160: the control plane starts fast and never imports them.
        assert layers[name] == [{"Ref": "LlmhostLayer"}], name
    version = template["Parameters"]["LambdaAdapterLayerVersion"]
    assert version["Type"] == "Number" and version["Default"] >= 30


def _layer_requirements(content: Path) -> set[str]:
    return {
        re.split(r"[\[<>=~ ;]", line)[0].lower()
        for line in (content / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_data_plane_layers_build_arm64_from_their_makefiles(template: dict[str, Any]) -> None:
    expected = {
        "EmbeddingLayer": ("layers/embeddings/", {"onnxruntime", "numpy", "tokenizers"}),
        "RetrievalLayer": ("layers/retrieval/", {"qdrant-client", "snowballstemmer"}),
    }
    for name, (content_uri, requirements) in expected.items():
        layer = template["Resources"][name]
        assert layer["Type"] == "AWS::Serverless::LayerVersion", name
        assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
        props = layer["Properties"]
        assert props["ContentUri"] == content_uri, name
        assert props["CompatibleArchitectures"] == ["arm64"], name
        assert props["CompatibleRuntimes"] == ["python3.13"], name
        makefile = (sam.ROOT / content_uri / "Makefile").read_text()
        # SAM runs `make build-<LogicalId>` in the layer's folder.
        assert re.search(rf"^build-{name}:", makefile, re.MULTILINE), name
        assert _layer_requirements(sam.ROOT / content_uri) == requirements, name


def _dry_run(target: str, content: Path, artifacts: Path) -> list[str]:
    make = shutil.which("make")
    assert make is not None, "make runs the layer builds; install it"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(
        [make, "-n", target, f"ARTIFACTS_DIR={artifacts}"],
        cwd=content,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.replace("\\\n", " ").split()


def test_retrieval_layer_leaves_out_what_other_layers_and_the_runtime_provide(
    tmp_path: Path,
) -> None:
    # Given the retrieval layer's build, dry-run
    commands = _dry_run("build-RetrievalLayer", sam.ROOT / "layers/retrieval", tmp_path / "R")
    # Then pip installs cp313 aarch64 wheels into python/ (numpy needs the 2_28 tag)
    platforms = [commands[i + 1] for i, c in enumerate(commands) if c == "--platform"]
    assert platforms == ["manylinux2014_aarch64", "manylinux_2_28_aarch64"]
    assert commands[commands.index("--python-version") + 1] == "3.13"
    assert "--only-binary=:all:" in commands
    assert commands[commands.index("--target") + 1].strip('"') == f"{tmp_path}/R/python"
    # And deletes what the functions' other layers or the runtime already put on sys.path
    removed = set(commands[commands.index("rm", commands.index("--target")) :])
    provided = {"pydantic", "pydantic_core", "typing_extensions", "numpy", "numpy.libs", "urllib3"}
    assert provided | {"anyio", "idna", "h11"} <= removed
    assert {"qdrant_client", "grpc", "httpx", "httpcore", "snowballstemmer"}.isdisjoint(removed)
    # ... which holds only while those layers really ship them (anyio, idna and h11 come
    # with the llmhost layer's HTTP server)
    assert {"pydantic", "starlette", "uvicorn"} <= _layer_requirements(sam.ROOT / "layers/llmhost")
    assert "numpy" in _layer_requirements(sam.ROOT / "layers/embeddings")


def test_embedding_model_dir_is_where_the_layer_puts_the_model(template: dict[str, Any]) -> None:
    # Lambda unpacks every layer into /opt; the embeddings Makefile names the model's folder.
    makefile = (sam.ROOT / "layers/embeddings/Makefile").read_text()
    target = re.search(r"^MODEL_TARGET\s*=\s*\$\(ARTIFACTS_DIR\)/(\S+)$", makefile, re.MULTILINE)
    assert target is not None
    for name in sam.DATA_PLANE:
        variables = sam.functions(template)[name]["Environment"]["Variables"]
        assert variables["EMBEDDING_MODEL_DIR"] == f"/opt/{target.group(1)}", name


def test_layer_builds_the_llmhost_package_for_arm64(template: dict[str, Any]) -> None:
    layer = template["Resources"]["LlmhostLayer"]
    # SAM runs `make build-LlmhostLayer` in ContentUri (checked below with `make -n`).
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    content = sam.ROOT / layer["Properties"]["ContentUri"]
    assert (content / "Makefile").is_file()
    assert (content / "llmhost" / "__init__.py").is_file()
    requirements = (content / "requirements.txt").read_text().lower()
    names = {
        re.split(r"[\[<>=~ ]", line)[0]
        for line in requirements.splitlines()
        if line and line[0] != "#"
    }
    # boto3 is in the Lambda runtime; shipping it would only grow the layer. python-multipart
    # is Starlette's form parser (OpenAI's file uploads).
    assert names == {
        "aws-lambda-powertools",
        "pydantic",
        "starlette",
        "uvicorn",
        "python-multipart",
    }
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]


def test_layer_makefile_installs_arm64_wheels_and_leaves_boto3_to_the_runtime(
    template: dict[str, Any], tmp_path: Path
) -> None:
    # Given the layer's Makefile, dry-run (`make -n` prints the commands, runs none)
    make = shutil.which("make")
    assert make is not None, "make runs the layer builds; install it"
    content = sam.ROOT / template["Resources"]["LlmhostLayer"]["Properties"]["ContentUri"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    artifacts = tmp_path / "LlmhostLayer"
    result = subprocess.run(
        [make, "-n", "build-LlmhostLayer", f"ARTIFACTS_DIR={artifacts}"],
        cwd=content,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    commands = result.stdout.replace("\\\n", " ").split()
    # Then pip installs only cp313 aarch64 wheels into the layer's python/ folder
    assert "pip" in commands and "install" in commands
    assert commands[commands.index("--platform") + 1] == "manylinux2014_aarch64"
    assert commands[commands.index("--python-version") + 1] == "3.13"
    assert commands[commands.index("--implementation") + 1] == "cp"
    assert "--only-binary=:all:" in commands
    assert commands[commands.index("--target") + 1].strip('"') == f"{artifacts}/python"
    # And what the runtime provides is deleted again (aws-xray-sdk pulls in botocore)
    removed = set(commands[commands.index("rm", commands.index("--target")) :])
    assert {"boto3", "botocore", "s3transfer", "urllib3", "dateutil", "six.py"} <= removed
    # And the llmhost package itself is copied in
    assert "llmhost" in commands and f'"{artifacts}/python/"' in commands


def test_environment_variables_the_code_reads(template: dict[str, Any]) -> None:
    functions = sam.functions(template)
    common = {
        "REGISTRY_TABLE_NAME": {"Ref": "RegistryTable"},
        "LLMHOST_STACK_NAME": {"Ref": "AWS::StackName"},
        "POWERTOOLS_METRICS_NAMESPACE": "llmhost",
        "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
        "HISTORY_LIMIT": {"Ref": "HistoryLimit"},
        "PYDANTIC_DISABLE_PLUGINS": "__all__",
        "USAGE_TABLE": {"Ref": "UsageTable"},
        "USAGE_RETENTION_DAYS": {"Ref": "UsageRetentionDays"},
    }
    cap = {"GPU_CAPACITY_CAP": {"Ref": "GpuCapacityCap"}}
    assert functions["ApiFunction"]["Environment"]["Variables"] == {
        **common,
        **cap,
        "POWERTOOLS_SERVICE_NAME": "llmhost-api",
        # the traces routes: the table, and the default window of a listing
        "TRACES_TABLE": {"Ref": "TracesTable"},
        "TRACE_RETENTION_DAYS": {"Ref": "TraceRetentionDays"},
        "SECRETS_PREFIX": {"Ref": "SecretsPrefix"},
    }
    assert functions["ReconcileFunction"]["Environment"]["Variables"] == {
        **common,
        **cap,
        "POWERTOOLS_SERVICE_NAME": "llmhost-reconcile",
        "SAGEMAKER_EXECUTION_ROLE_ARN": {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]},
        "SCHEDULE_GROUP": {"Ref": "ScheduleGroup"},
        "SCALING_FUNCTION_ARN": {"Fn::GetAtt": ["ScalingFunction", "Arn"]},
        "SCHEDULER_ROLE_ARN": {"Fn::GetAtt": ["SchedulerInvokeRole", "Arn"]},
        "SCHEDULE_DEAD_LETTER_ARN": sam.SCALING_DLQ_ARN,
        "DAILY_BUDGET_USD": {"Ref": "DailyBudgetUsd"},
        # where async endpoints put results and announce them
        "JOBS_BUCKET": {"Ref": "JobsBucket"},
        "ASYNC_SUCCESS_TOPIC_ARN": {"Ref": "AsyncSuccessTopic"},
        "ASYNC_ERROR_TOPIC_ARN": {"Ref": "AsyncErrorTopic"},
    }
    assert functions["ScalingFunction"]["Environment"]["Variables"] == {
        **common,
        **cap,
        "POWERTOOLS_SERVICE_NAME": "llmhost-scaling",
        "DAILY_BUDGET_USD": {"Ref": "DailyBudgetUsd"},
    }
    wake = {"SCALING_FUNCTION_NAME": {"Ref": "ScalingFunction"}}
    retrieval = {
        "QDRANT_URL": {"Ref": "QdrantUrl"},
        "QDRANT_API_KEY_SECRET_ARN": {"Ref": "QdrantApiKeySecretArn"},
        "EMBEDDING_BACKEND": {"Ref": "EmbeddingBackend"},
        "EMBEDDING_ENDPOINT_NAME": {"Ref": "EmbeddingEndpointName"},
        "EMBEDDING_INFERENCE_COMPONENT": {"Ref": "EmbeddingInferenceComponent"},
        "EMBEDDING_MODEL_DIR": "/opt/llmhost-embedding",
    }
    assert functions["ServeFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        **wake,
        "POWERTOOLS_SERVICE_NAME": "llmhost-serve",
        "SERVING_TIMEOUT_S": "12",
        "SERVING_MAX_ATTEMPTS": "2",
        "STREAM_URL": {"Fn::Sub": "${StreamFunctionUrl.FunctionUrl}v1"},
        **JOBS_ENV,
        **TRACES_ENV,
    }
    assert functions["StreamFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        **LWA_ENV,
        **wake,
        "POWERTOOLS_SERVICE_NAME": "llmhost-stream",
        **TRACES_ENV,
        "PYTHONPATH": "/opt/python",
        "API_KEYS_SECRET_ARN": {
            "Fn::If": [
                "CreateApiKeysSecret",
                {"Ref": "ApiKeysSecret"},
                {"Ref": "ApiKeysSecretArn"},
            ]
        },
        "SERVING_TIMEOUT_S": "120",
        "SERVING_MAX_ATTEMPTS": "1",
        "STREAM_TIMEOUT_S": {"Ref": "StreamTimeout"},
        "API_KEY_REQUESTS_PER_MINUTE": {"Ref": "StreamRequestsPerMinutePerKey"},
        "API_KEY_BURST": {"Ref": "StreamBurstPerKey"},
        # OpenAI's Files and Batches
        **{k: v for k, v in JOBS_ENV.items() if k != "JOB_RETENTION_DAYS"},
        "BATCH_FUNCTION_NAME": {"Ref": "BatchFunction"},
    }
    assert functions["IngestFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        "POWERTOOLS_SERVICE_NAME": "llmhost-ingest",
    }
    assert functions["JobsFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        **wake,
        **JOBS_ENV,
        "POWERTOOLS_SERVICE_NAME": "llmhost-jobs",
        **TRACES_ENV,
        "SERVING_TIMEOUT_S": "840",
        "SERVING_MAX_ATTEMPTS": "1",
        "JOBS_MAX_RECEIVE_COUNT": "3",
        "BATCH_FUNCTION_NAME": {"Ref": "BatchFunction"},
    }
    assert functions["BatchFunction"]["Environment"]["Variables"] == {
        **common,
        **retrieval,
        **JOBS_ENV,
        "POWERTOOLS_SERVICE_NAME": "llmhost-batch",
    }


# The Jobs API's table, bucket and queue (llmhost.runtime.JobsSettings).
JOBS_ENV = {
    "JOBS_TABLE": {"Ref": "JobsTable"},
    "JOBS_BUCKET": {"Ref": "JobsBucket"},
    "JOBS_QUEUE_URL": {"Ref": "JobsQueue"},
    "JOB_RETENTION_DAYS": {"Ref": "JobRetentionDays"},
}

# Where each serving path records its requests' traces (llmhost.runtime.TraceSettings).
TRACES_ENV = {
    "TRACES_TABLE": {"Ref": "TracesTable"},
    "TRACE_SAMPLE_RATE": {"Ref": "TraceSampleRate"},
    "TRACE_CONTENT": {"Ref": "TraceContent"},
    "TRACE_RETENTION_DAYS": {"Ref": "TraceRetentionDays"},
}

# Lambda Web Adapter 1.x names (the unprefixed READINESS_CHECK_PATH is deprecated); it reads
# AWS_LWA_PORT and falls back to PORT, which llmhost.serving.lambda_http reads too.
LWA_ENV = {
    "AWS_LAMBDA_EXEC_WRAPPER": "/opt/bootstrap",
    "AWS_LWA_INVOKE_MODE": "response_stream",
    "AWS_LWA_READINESS_CHECK_PATH": "/health",
    "PORT": "8080",
    # SnapStart's hooks, relayed to the server (tests/aws/test_template_snapstart.py)
    "AWS_LWA_SNAPSTART_BEFORE_CHECKPOINT_PATH": "/_llmhost/snapstart/before",
    "AWS_LWA_SNAPSTART_AFTER_RESTORE_PATH": "/_llmhost/snapstart/after",
}


def _resolve(value: Any, parameters: dict[str, str]) -> str:
    """A variable's value for the given parameters (Ref and literal only)."""
    if isinstance(value, dict) and "Ref" in value:
        return parameters[value["Ref"]]
    assert isinstance(value, str), value
    return value


def test_serving_settings_accept_what_the_template_sets(template: dict[str, Any]) -> None:
    from llmhost.rag.embeddings.settings import EmbeddingSettings
    from llmhost.runtime import ServingSettings, TraceSettings

    defaults = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    parameters = {
        **defaults,
        "RegistryTable": "llmhost-RegistryTable-1ABC",
        "AWS::StackName": "llmhost",
        "QdrantUrl": "https://xyz.eu-central-1-0.aws.cloud.qdrant.io:6333",
        "ScalingFunction": "llmhost-ScalingFunction-1ABC",
        "JobsTable": "llmhost-JobsTable-1ABC",
        "JobsBucket": "llmhost-jobsbucket-1abc",
        "JobsQueue": "https://sqs.us-east-1.amazonaws.com/123456789012/llmhost-JobsQueue-1ABC",
        "BatchFunction": "llmhost-BatchFunction-1ABC",
        "UsageTable": "llmhost-UsageTable-1ABC",
        "TracesTable": "llmhost-TracesTable-1ABC",
    }
    functions = sam.functions(template)
    for name in sam.DATA_PLANE:
        variables = functions[name]["Environment"]["Variables"]
        env = {
            key: _resolve(value, parameters)
            for key, value in variables.items()
            if key not in {"STREAM_URL", "API_KEYS_SECRET_ARN"}
        }
        # The embedder's settings validate with the defaults (onnx, no endpoint) ...
        embedding = EmbeddingSettings.from_env(env)
        assert embedding.embedding_backend == "onnx", name
        assert str(embedding.model_dir(env)) == "/opt/llmhost-embedding", name
        if name in {"IngestFunction", "BatchFunction"}:
            continue
        # ... and so do the serving settings, with the timeouts each path needs.
        settings = ServingSettings.model_validate(
            {
                key.lower(): value
                for key, value in env.items()
                if key.lower() in ServingSettings.model_fields
            }
        )
        timeouts = {"ServeFunction": 12.0, "StreamFunction": 120.0, "JobsFunction": 840.0}
        assert settings.serving_timeout_s == timeouts[name]
        # ... and the trace settings, with the stack's defaults.
        traces = TraceSettings.model_validate(
            {k.lower(): v for k, v in env.items() if k.lower() in TraceSettings.model_fields}
        )
        assert traces.traces_table and traces.trace_content == "redacted", name
        assert (traces.trace_sample_rate, traces.trace_retention_days) == (1.0, 30), name
    # Two serve attempts fit in API Gateway's 29 s with room for retrieval.
    serve = functions["ServeFunction"]["Environment"]["Variables"]
    assert float(serve["SERVING_TIMEOUT_S"]) * int(serve["SERVING_MAX_ATTEMPTS"]) < 29


def test_stream_function_streams_through_an_api_key_function_url(
    template: dict[str, Any],
) -> None:
    stream = sam.functions(template)["StreamFunction"]
    assert stream["Handler"] == "run.sh"
    assert stream["FunctionUrlConfig"] == {"AuthType": "NONE", "InvokeMode": "RESPONSE_STREAM"}
    variables = stream["Environment"]["Variables"]
    assert {key: variables.get(key) for key in LWA_ENV} == LWA_ENV
    # The URL is open, so the server must have its keys (it refuses to start without them).
    assert variables["API_KEYS_SECRET_ARN"]
    script = (sam.ROOT / stream["CodeUri"] / "run.sh").read_text()
    assert "llmhost.serving.lambda_http" in script
    # Its timeout is a parameter long enough for slow generations, within Lambda's 900 s.
    timeout = template["Parameters"]["StreamTimeout"]
    assert 30 <= timeout["MinValue"] <= timeout["Default"] <= timeout["MaxValue"] <= 900
    # The serve function points stream: true requests at the same URL the stack outputs.
    serve = sam.functions(template)["ServeFunction"]["Environment"]["Variables"]
    assert serve["STREAM_URL"] == template["Outputs"]["StreamUrl"]["Value"]


def test_every_function_logs_to_a_group_with_retention(template: dict[str, Any]) -> None:
    for name, props in sam.functions(template).items():
        group = template["Resources"][props["LoggingConfig"]["LogGroup"]["Ref"]]
        assert group["Type"] == "AWS::Logs::LogGroup", name
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
