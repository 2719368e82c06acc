"""SageMaker control-plane rules and state for the stand-in: what exists, what may happen next.

``SageMakerControlPlane`` takes decoded request dicts (the operation's input shape, with
``datetime`` timestamps) and returns API-shaped result dicts; it knows nothing of HTTP,
JSON or botocore (``wire.py`` does). It models what moto does not: inference components,
``UpdateEndpoint``, every instance type, and SageMaker's asynchronous state machine.

Transitional states (``Creating``, ``Updating``, ``Deleting``) end when the clock passes
their deadline; every public method first applies the transitions that are due, so a
describe is always current. Errors SageMaker itself would return are ``SageMakerError``
with the AWS error code and message. Where the real message is known it is reproduced
verbatim (see the constants below); where it is not, the message is ours but the code and
the condition match SageMaker's behaviour.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from llmhost_local.standin.errors import AwsServiceError, page_offset, page_token

Clock = Callable[[], float]
EventSink = Callable[[dict[str, Any]], None]
FailureKind = Literal["endpoint", "inference-component"]
ResourceKind = Literal["model", "endpoint-config", "endpoint", "inference-component"]
Request = dict[str, Any]
Result = dict[str, Any]

VALIDATION = "ValidationException"
LIMIT_EXCEEDED = "ResourceLimitExceeded"

# Verbatim SageMaker messages, as seen in real error reports (ARNs lower-case the name):
#   CreateX on an existing name, DescribeX/DeleteX/UpdateX on a missing one, and
#   UpdateEndpoint/DeleteEndpoint while the endpoint is Creating or Updating.
_ALREADY_EXISTS = 'Cannot create already existing {kind} "{arn}".'
_NOT_FOUND = 'Could not find {kind} "{arn}".'
_IN_PROGRESS = 'Cannot update in-progress endpoint "{arn}".'
_QUOTA = (
    "The account-level service limit '{instance_type} for endpoint usage' is {limit} "
    "Instances, with current utilization of {used} Instances and a request delta of "
    "{delta} Instances. Please use AWS Service Quotas to request an increase for this "
    "quota. If AWS Service Quotas is not available, contact AWS support to request an "
    "increase for this quota."
)

_EVENT_DETAIL_TYPE = "SageMaker Endpoint State Change"
_DEFAULT_PAGE_SIZE = 10
_BUSY_ENDPOINT = frozenset({"Creating", "Updating", "Deleting", "SystemUpdating"})


class SageMakerError(AwsServiceError):
    """An error SageMaker itself returns."""


def _invalid(message: str) -> SageMakerError:
    return SageMakerError(VALIDATION, message)


@dataclass
class _Model:
    name: str
    arn: str
    request: Request
    created: float
    tags: dict[str, str]


@dataclass
class _EndpointConfig:
    name: str
    arn: str
    request: Request
    created: float
    tags: dict[str, str]

    @property
    def variants(self) -> list[dict[str, Any]]:
        return list(self.request["ProductionVariants"])

    @property
    def is_async(self) -> bool:
        return "AsyncInferenceConfig" in self.request

    @property
    def hosts_inference_components(self) -> bool:
        return all("ModelName" not in v for v in self.variants)


@dataclass
class _Endpoint:
    name: str
    arn: str
    config: _EndpointConfig  # a snapshot: deleting the config leaves the endpoint running
    status: str
    created: float
    modified: float
    tags: dict[str, str]
    failure_reason: str | None = None
    deadline: float | None = None
    pending_failure: str | None = None
    pending_config: _EndpointConfig | None = None
    pending_since: float | None = None
    # UpdateEndpointWeightsAndCapacities: instance counts by variant that override the
    # config's (applied when the update settles; a new config starts from its own again).
    instance_counts: dict[str, int] = field(default_factory=dict)
    pending_counts: dict[str, int] | None = None


@dataclass
class _InferenceComponent:
    name: str
    arn: str
    endpoint: _Endpoint
    variant_name: str
    specification: dict[str, Any]
    desired_copies: int
    current_copies: int
    status: str
    created: float
    modified: float
    tags: dict[str, str]
    failure_reason: str | None = None
    deadline: float | None = None
    pending_failure: str | None = None
    pending_specification: dict[str, Any] | None = None
    pending_copies: int | None = None


@dataclass
class Durations:
    """Seconds each transitional state lasts before the resource settles."""

    create: float = 600.0
    update: float = 300.0
    delete: float = 60.0
    ic_create: float = 240.0
    ic_update: float = 180.0
    ic_delete: float = 60.0


@dataclass
class _Collections:
    models: dict[str, _Model] = field(default_factory=dict)
    configs: dict[str, _EndpointConfig] = field(default_factory=dict)
    endpoints: dict[str, _Endpoint] = field(default_factory=dict)
    components: dict[str, _InferenceComponent] = field(default_factory=dict)


class SageMakerControlPlane:
    """Models, endpoint configs, endpoints and inference components of one account and region.

    Thread-safe: every public method holds one lock while it reads or changes state, and
    hands endpoint events to ``on_event`` only after releasing it, so a callback may call
    back into the plane. ``instance_quotas`` maps an instance type to its account quota
    "<type> for endpoint usage" (unlisted types are unlimited).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        region: str,
        account_id: str,
        durations: Durations,
        instance_quotas: Mapping[str, int] | None = None,
        on_event: EventSink | None = None,
        transforms: Any = None,
    ) -> None:
        self._clock = clock
        self._region = region
        self._account = account_id
        self._durations = durations
        self._quotas = dict(instance_quotas or {})
        self._on_event = on_event
        self._lock = threading.RLock()
        self._state = _Collections()
        self._failures: dict[tuple[str, str], str] = {}
        self._outbox: list[dict[str, Any]] = []
        # Batch Transform jobs (``transform_jobs.TransformJobs``): their own rules and lock.
        self.transforms = transforms

    # ---- transform jobs (rules in transform_jobs) -------------------------------------

    def create_transform_job(self, request: Request) -> Result:
        return dict(self._transform_jobs().create_transform_job(request))

    def describe_transform_job(self, request: Request) -> Result:
        return dict(self._transform_jobs().describe_transform_job(request))

    def stop_transform_job(self, request: Request) -> Result:
        return dict(self._transform_jobs().stop_transform_job(request))

    def list_transform_jobs(self, request: Request) -> Result:
        return dict(self._transform_jobs().list_transform_jobs(request))

    def model_exists(self, name: str) -> bool:
        with self._transaction():
            return name.lower() in self._state.models

    def _transform_jobs(self) -> Any:
        if self.transforms is None:
            raise NotImplementedError("this control plane was built without transform jobs")
        return self.transforms

    # ---- test and runner controls -------------------------------------------------

    def tick(self) -> list[dict[str, Any]]:
        """Settle every resource whose transitional state has elapsed; return the events."""
        with self._transaction() as events:
            pass
        return events

    def fail_next(self, kind: FailureKind, name: str, reason: str) -> None:
        """Make the next create or update of that resource fail, after its full duration."""
        if kind not in ("endpoint", "inference-component"):
            raise ValueError(f"kind must be 'endpoint' or 'inference-component', not {kind!r}")
        with self._transaction():
            self._failures[(kind, name.lower())] = reason

    def resources(self) -> dict[str, set[str]]:
        """Names of everything that exists now (a resource still Deleting exists)."""
        with self._transaction():
            s = self._state
            return {
                "models": {m.name for m in s.models.values()},
                "endpoint_configs": {c.name for c in s.configs.values()},
                "endpoints": {e.name for e in s.endpoints.values()},
                "inference_components": {c.name for c in s.components.values()},
            }

    def describe(self, kind: ResourceKind, name: str) -> Result | None:
        """What the matching Describe operation would return, or None if it does not exist."""
        describers: dict[str, tuple[Callable[[Request], Result], str]] = {
            "model": (self.describe_model, "ModelName"),
            "endpoint-config": (self.describe_endpoint_config, "EndpointConfigName"),
            "endpoint": (self.describe_endpoint, "EndpointName"),
            "inference-component": (self.describe_inference_component, "InferenceComponentName"),
        }
        if kind not in describers:
            raise ValueError(f"kind must be one of {sorted(describers)}, not {kind!r}")
        operation, key = describers[kind]
        try:
            return operation({key: name})
        except SageMakerError:
            return None

    # ---- models ----------------------------------------------------------------------

    def create_model(self, request: Request) -> Result:
        with self._transaction():
            name = request["ModelName"]
            arn = self._arn("model", name)
            if name.lower() in self._state.models:
                raise _invalid(_ALREADY_EXISTS.format(kind="model", arn=arn))
            containers = _model_containers(request)
            if not request.get("ExecutionRoleArn") and not all(
                "ModelPackageName" in c for c in containers
            ):
                raise _invalid(
                    "ExecutionRoleArn is required unless every container is a model package."
                )
            self._state.models[name.lower()] = _Model(
                name=name,
                arn=arn,
                request=_without(request, "Tags"),
                created=self._clock(),
                tags=_tag_dict(request.get("Tags", [])),
            )
            return {"ModelArn": arn}

    def describe_model(self, request: Request) -> Result:
        with self._transaction():
            model = self._model(request["ModelName"])
            return {
                "EnableNetworkIsolation": False,
                **copy.deepcopy(model.request),
                "ModelArn": model.arn,
                "CreationTime": _utc(model.created),
            }

    def delete_model(self, request: Request) -> Result:
        # SageMaker lets a model go while endpoints still run it: they keep serving.
        with self._transaction():
            model = self._model(request["ModelName"])
            del self._state.models[model.name.lower()]
            return {}

    def list_models(self, request: Request) -> Result:
        with self._transaction():
            summaries = [
                {"ModelName": m.name, "ModelArn": m.arn, "CreationTime": _utc(m.created)}
                for m in self._state.models.values()
            ]
            page, token = _page(summaries, request, name_key="ModelName")
            return _with_token({"Models": page}, token)

    # ---- endpoint configs -------------------------------------------------------------

    def create_endpoint_config(self, request: Request) -> Result:
        with self._transaction():
            name = request["EndpointConfigName"]
            arn = self._arn("endpoint-config", name)
            if name.lower() in self._state.configs:
                raise _invalid(_ALREADY_EXISTS.format(kind="endpoint configuration", arn=arn))
            self._check_variants(request)
            self._state.configs[name.lower()] = _EndpointConfig(
                name=name,
                arn=arn,
                request=_without(request, "Tags"),
                created=self._clock(),
                tags=_tag_dict(request.get("Tags", [])),
            )
            return {"EndpointConfigArn": arn}

    def describe_endpoint_config(self, request: Request) -> Result:
        with self._transaction():
            config = self._config(request["EndpointConfigName"])
            return {
                **copy.deepcopy(config.request),
                "EndpointConfigArn": config.arn,
                "CreationTime": _utc(config.created),
            }

    def delete_endpoint_config(self, request: Request) -> Result:
        # Allowed while an endpoint uses it: the endpoint keeps running on its snapshot.
        with self._transaction():
            config = self._config(request["EndpointConfigName"])
            del self._state.configs[config.name.lower()]
            return {}

    def list_endpoint_configs(self, request: Request) -> Result:
        with self._transaction():
            summaries = [
                {
                    "EndpointConfigName": c.name,
                    "EndpointConfigArn": c.arn,
                    "CreationTime": _utc(c.created),
                }
                for c in self._state.configs.values()
            ]
            page, token = _page(summaries, request, name_key="EndpointConfigName")
            return _with_token({"EndpointConfigs": page}, token)

    # ---- endpoints -------------------------------------------------------------------

    def create_endpoint(self, request: Request) -> Result:
        with self._transaction():
            name = request["EndpointName"]
            arn = self._arn("endpoint", name)
            if name.lower() in self._state.endpoints:
                raise _invalid(_ALREADY_EXISTS.format(kind="endpoint", arn=arn))
            config = self._deployable_config(request["EndpointConfigName"])
            self._check_quota(config)
            now = self._clock()
            endpoint = _Endpoint(
                name=name,
                arn=arn,
                config=config,
                status="Creating",
                created=now,
                modified=now,
                tags=_tag_dict(request.get("Tags", [])),
                deadline=now + self._durations.create,
                pending_failure=self._failures.pop(("endpoint", name.lower()), None),
            )
            self._state.endpoints[name.lower()] = endpoint
            self._emit(endpoint, now)
            return {"EndpointArn": arn}

    def describe_endpoint(self, request: Request) -> Result:
        with self._transaction():
            return self._endpoint_description(self._endpoint(request["EndpointName"]))

    def update_endpoint(self, request: Request) -> Result:
        with self._transaction():
            endpoint = self._endpoint(request["EndpointName"])
            if endpoint.status in _BUSY_ENDPOINT:
                raise _invalid(_IN_PROGRESS.format(arn=endpoint.arn))
            if endpoint.status != "InService":
                raise _invalid(
                    f'Cannot update endpoint "{endpoint.arn}" in status {endpoint.status}; '
                    "delete it and create it again."
                )
            config = self._deployable_config(request["EndpointConfigName"])
            if self._components_on(endpoint) and not config.hosts_inference_components:
                raise _invalid(
                    f'Endpoint "{endpoint.arn}" hosts inference components; endpoint '
                    f'configuration "{config.arn}" has variants with a ModelName and cannot '
                    "host them."
                )
            self._check_quota(config)
            endpoint.pending_config = config
            endpoint.pending_since = self._start_update(endpoint)
            return {"EndpointArn": endpoint.arn}

    def update_endpoint_weights_and_capacities(self, request: Request) -> Result:
        with self._transaction():
            endpoint = self._endpoint(request["EndpointName"])
            if endpoint.status in _BUSY_ENDPOINT:
                raise _invalid(_IN_PROGRESS.format(arn=endpoint.arn))
            if endpoint.status != "InService":
                raise _invalid(
                    f'Cannot update endpoint "{endpoint.arn}" in status {endpoint.status}.'
                )
            variants = {v["VariantName"]: v for v in endpoint.config.variants}
            counts: dict[str, int] = {}
            for wanted in request["DesiredWeightsAndCapacities"]:
                name = wanted["VariantName"]
                if name not in variants:
                    raise _invalid(
                        f'The variant name "{name}" is not present in endpoint "{endpoint.arn}".'
                    )
                if "ServerlessConfig" in variants[name] and "DesiredInstanceCount" in wanted:
                    raise _invalid(
                        f'Variant "{name}" is serverless: it has no instance count to set.'
                    )
                if wanted.get("DesiredInstanceCount") == 0 and not endpoint.config.is_async:
                    # Only asynchronous endpoints scale their instances to zero
                    # (docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html).
                    raise _invalid(
                        f'Variant "{name}" of endpoint "{endpoint.arn}" cannot have 0 '
                        "instances: only asynchronous inference endpoints scale to zero."
                    )
                if "DesiredInstanceCount" in wanted:
                    counts[name] = wanted["DesiredInstanceCount"]
            endpoint.pending_counts = counts
            self._start_update(endpoint)
            return {"EndpointArn": endpoint.arn}

    def _start_update(self, endpoint: _Endpoint) -> float:
        """Put ``endpoint`` in Updating until its update deadline (with any failure injected
        for it) and announce it; returns when (its pending change is set by the caller)."""
        now = self._clock()
        endpoint.status = "Updating"
        endpoint.modified = now
        endpoint.failure_reason = None
        endpoint.deadline = now + self._durations.update
        endpoint.pending_failure = self._failures.pop(("endpoint", endpoint.name.lower()), None)
        self._emit(endpoint, now)
        return now

    def delete_endpoint(self, request: Request) -> Result:
        with self._transaction():
            endpoint = self._endpoint(request["EndpointName"])
            if endpoint.status in _BUSY_ENDPOINT:
                raise _invalid(_IN_PROGRESS.format(arn=endpoint.arn))
            components = sorted(c.name for c in self._components_on(endpoint))
            if components:
                raise _invalid(
                    f'Cannot delete endpoint "{endpoint.arn}" while inference components are '
                    f"deployed on it ({', '.join(components)}); delete them first."
                )
            now = self._clock()
            endpoint.status = "Deleting"
            endpoint.modified = now
            endpoint.deadline = now + self._durations.delete
            self._emit(endpoint, now)
            return {}

    def list_endpoints(self, request: Request) -> Result:
        with self._transaction():
            summaries = [
                {
                    "EndpointName": e.name,
                    "EndpointArn": e.arn,
                    "CreationTime": _utc(e.created),
                    "LastModifiedTime": _utc(e.modified),
                    "EndpointStatus": e.status,
                }
                for e in self._state.endpoints.values()
                if request.get("StatusEquals") in (None, e.status)
            ]
            page, token = _page(
                summaries, request, name_key="EndpointName", status_key="EndpointStatus"
            )
            return _with_token({"Endpoints": page}, token)

    # ---- inference components --------------------------------------------------------

    def create_inference_component(self, request: Request) -> Result:
        with self._transaction():
            name = request["InferenceComponentName"]
            arn = self._arn("inference-component", name)
            if name.lower() in self._state.components:
                raise _invalid(_ALREADY_EXISTS.format(kind="inference component", arn=arn))
            endpoint = self._endpoint(request["EndpointName"])
            if endpoint.status != "InService":
                raise _invalid(
                    f'Endpoint "{endpoint.arn}" is {endpoint.status}; inference components '
                    "can only be created on an InService endpoint."
                )
            if not endpoint.config.hosts_inference_components:
                raise _invalid(
                    f'Endpoint "{endpoint.arn}" was created from an endpoint configuration '
                    "whose variants name a model; inference components need variants "
                    "without ModelName."
                )
            variant = self._component_variant(endpoint, request.get("VariantName"))
            specification = self._component_specification(request)
            if "RuntimeConfig" not in request:
                raise _invalid("RuntimeConfig is required for an inference component.")
            now = self._clock()
            self._state.components[name.lower()] = _InferenceComponent(
                name=name,
                arn=arn,
                endpoint=endpoint,
                variant_name=variant,
                specification=specification,
                desired_copies=request["RuntimeConfig"]["CopyCount"],
                current_copies=0,
                status="Creating",
                created=now,
                modified=now,
                tags=_tag_dict(request.get("Tags", [])),
                deadline=now + self._durations.ic_create,
                pending_failure=self._failures.pop(("inference-component", name.lower()), None),
            )
            return {"InferenceComponentArn": arn}

    def describe_inference_component(self, request: Request) -> Result:
        with self._transaction():
            component = self._component(request["InferenceComponentName"])
            result: Result = {
                "InferenceComponentName": component.name,
                "InferenceComponentArn": component.arn,
                "EndpointName": component.endpoint.name,
                "EndpointArn": component.endpoint.arn,
                "VariantName": component.variant_name,
                "Specification": _specification_summary(component.specification, component),
                "RuntimeConfig": {
                    "DesiredCopyCount": component.desired_copies,
                    "CurrentCopyCount": component.current_copies,
                },
                "CreationTime": _utc(component.created),
                "LastModifiedTime": _utc(component.modified),
                "InferenceComponentStatus": component.status,
            }
            if component.failure_reason:
                result["FailureReason"] = component.failure_reason
            return result

    def update_inference_component(self, request: Request) -> Result:
        with self._transaction():
            component = self._component(request["InferenceComponentName"])
            self._check_component_settled(component, "update")
            if "Specification" not in request and "RuntimeConfig" not in request:
                raise _invalid(
                    "UpdateInferenceComponent needs a Specification or a RuntimeConfig to change."
                )
            specification = (
                self._component_specification(request) if "Specification" in request else None
            )
            copies = request["RuntimeConfig"]["CopyCount"] if "RuntimeConfig" in request else None
            self._start_component_update(component, specification, copies)
            return {"InferenceComponentArn": component.arn}

    def update_inference_component_runtime_config(self, request: Request) -> Result:
        with self._transaction():
            component = self._component(request["InferenceComponentName"])
            self._check_component_settled(component, "update")
            copies = request["DesiredRuntimeConfig"]["CopyCount"]
            self._start_component_update(component, None, copies)
            return {"InferenceComponentArn": component.arn}

    def delete_inference_component(self, request: Request) -> Result:
        with self._transaction():
            component = self._component(request["InferenceComponentName"])
            if component.status == "Deleting":
                raise _invalid(
                    f'Inference component "{component.arn}" is already being deleted '
                    "(DELETE_IN_PROGRESS)."
                )
            self._check_component_settled(component, "delete")
            now = self._clock()
            component.status = "Deleting"
            component.modified = now
            component.deadline = now + self._durations.ic_delete
            return {}

    def list_inference_components(self, request: Request) -> Result:
        with self._transaction():
            wanted = {
                "endpoint": request.get("EndpointNameEquals"),
                "variant": request.get("VariantNameEquals"),
                "status": request.get("StatusEquals"),
            }
            summaries = [
                {
                    "InferenceComponentName": c.name,
                    "InferenceComponentArn": c.arn,
                    "EndpointName": c.endpoint.name,
                    "EndpointArn": c.endpoint.arn,
                    "VariantName": c.variant_name,
                    "InferenceComponentStatus": c.status,
                    "CreationTime": _utc(c.created),
                    "LastModifiedTime": _utc(c.modified),
                }
                for c in self._state.components.values()
                if wanted["endpoint"] in (None, c.endpoint.name)
                and wanted["variant"] in (None, c.variant_name)
                and wanted["status"] in (None, c.status)
            ]
            page, token = _page(
                summaries,
                request,
                name_key="InferenceComponentName",
                status_key="InferenceComponentStatus",
            )
            return _with_token({"InferenceComponents": page}, token)

    # ---- tags ------------------------------------------------------------------------

    def add_tags(self, request: Request) -> Result:
        with self._transaction():
            tags = self._tags_of(request["ResourceArn"])
            merged = {**tags, **_tag_dict(request["Tags"])}
            if len(merged) > 50:
                raise _invalid(f'Resource "{request["ResourceArn"]}" would have more than 50 tags.')
            tags.update(merged)
            return {"Tags": copy.deepcopy(request["Tags"])}

    def list_tags(self, request: Request) -> Result:
        with self._transaction():
            tags = [
                {"Key": k, "Value": v} for k, v in self._tags_of(request["ResourceArn"]).items()
            ]
            start = _offset(request.get("NextToken"))
            size = request.get("MaxResults", 50)
            result: Result = {"Tags": tags[start : start + size]}
            if start + size < len(tags):
                result["NextToken"] = page_token(start + size)
            return result

    def delete_tags(self, request: Request) -> Result:
        with self._transaction():
            tags = self._tags_of(request["ResourceArn"])
            for key in request["TagKeys"]:
                tags.pop(key, None)
            return {}

    # ---- rules -----------------------------------------------------------------------

    def _check_variants(self, request: Request) -> None:
        variants = request["ProductionVariants"]
        names = [v["VariantName"] for v in variants]
        if len(set(names)) != len(names):
            raise _invalid("VariantName must be unique within ProductionVariants.")
        hosts_components = ["ModelName" not in v for v in variants]
        if any(hosts_components) and not all(hosts_components):
            raise _invalid(
                "Either every production variant names a model or none does (a variant "
                "without ModelName hosts inference components)."
            )
        for i, variant in enumerate(variants):
            where = f"ProductionVariants[{i}] ({variant['VariantName']})"
            serverless = "ServerlessConfig" in variant
            sized = "InstanceType" in variant or "InstancePools" in variant
            if serverless and (sized or "InitialInstanceCount" in variant):
                raise _invalid(
                    f"{where}: ServerlessConfig cannot be combined with InstanceType or "
                    "InitialInstanceCount."
                )
            if not serverless and not (sized and "InitialInstanceCount" in variant):
                raise _invalid(
                    f"{where}: InstanceType and InitialInstanceCount are required unless "
                    "ServerlessConfig is given."
                )
            if "ModelName" in variant:
                self._model(variant["ModelName"])
            else:
                if serverless:
                    raise _invalid(f"{where}: a serverless variant must name a model.")
                if not request.get("ExecutionRoleArn"):
                    raise _invalid(
                        f"{where}: ExecutionRoleArn is required on an endpoint configuration "
                        "whose variants host inference components (no ModelName)."
                    )
            _check_managed_scaling(where, variant)
        if "AsyncInferenceConfig" in request:
            _check_async(request)

    def _deployable_config(self, config_name: str) -> _EndpointConfig:
        config = self._config(config_name)
        for variant in config.variants:
            if "ModelName" in variant:
                self._model(variant["ModelName"])
        return copy.deepcopy(config)

    def _check_quota(self, config: _EndpointConfig) -> None:
        # Blue/green: an update provisions the new fleet beside the old one, so the request
        # delta is the whole new fleet while the old fleet still counts as used.
        for instance_type, delta in _instances(config).items():
            limit = self._quotas.get(instance_type)
            if limit is None:
                continue
            used = sum(
                _instances(e.config).get(instance_type, 0)
                for e in self._state.endpoints.values()
                if e.status != "Failed"
            )
            if used + delta > limit:
                raise SageMakerError(
                    LIMIT_EXCEEDED,
                    _QUOTA.format(instance_type=instance_type, limit=limit, used=used, delta=delta),
                )

    def _component_variant(self, endpoint: _Endpoint, variant_name: str | None) -> str:
        names = [v["VariantName"] for v in endpoint.config.variants]
        if variant_name is None:
            if len(names) != 1:
                raise _invalid(
                    f'Endpoint "{endpoint.arn}" has {len(names)} variants; name one in VariantName.'
                )
            return names[0]
        if variant_name not in names:
            raise _invalid(f'Endpoint "{endpoint.arn}" has no variant "{variant_name}".')
        return variant_name

    def _component_specification(self, request: Request) -> dict[str, Any]:
        if "Specifications" in request:
            raise NotImplementedError(
                "the SageMaker stand-in models a single Specification per inference component, "
                "not Specifications (multiple instance pools)"
            )
        specification = request.get("Specification")
        if specification is None:
            raise _invalid("Specification is required for an inference component.")
        if "BaseInferenceComponentName" in specification:
            raise NotImplementedError(
                "the SageMaker stand-in does not model adapter inference components "
                "(Specification.BaseInferenceComponentName)"
            )
        if "ModelName" not in specification and "Container" not in specification:
            raise _invalid("Specification needs a ModelName or a Container.")
        if "ModelName" in specification:
            self._model(specification["ModelName"])
        if "ComputeResourceRequirements" not in specification:
            raise _invalid("Specification.ComputeResourceRequirements is required.")
        return copy.deepcopy(specification)

    def _check_component_settled(self, component: _InferenceComponent, action: str) -> None:
        if component.status in ("Creating", "Updating", "Deleting"):
            raise _invalid(
                f'Cannot {action} inference component "{component.arn}" while it is in '
                f"{component.status} status; retry when it is InService or Failed."
            )
        if action == "update" and component.status != "InService":
            raise _invalid(
                f'Cannot update inference component "{component.arn}" in status '
                f"{component.status}; delete it and create it again."
            )

    def _start_component_update(
        self,
        component: _InferenceComponent,
        specification: dict[str, Any] | None,
        copies: int | None,
    ) -> None:
        now = self._clock()
        component.status = "Updating"
        component.modified = now
        component.failure_reason = None
        component.pending_specification = specification
        component.pending_copies = copies
        component.deadline = now + self._durations.ic_update
        component.pending_failure = self._failures.pop(
            ("inference-component", component.name.lower()), None
        )

    # ---- transitions -----------------------------------------------------------------

    def _advance(self) -> None:
        now = self._clock()
        transitional: list[_Endpoint | _InferenceComponent] = [
            *self._state.endpoints.values(),
            *self._state.components.values(),
        ]
        due = [
            (r.deadline, i, r)
            for i, r in enumerate(transitional)
            if r.deadline is not None and r.deadline <= now
        ]
        # Oldest deadline first, so events come out in the order things happened.
        for deadline, _, resource in sorted(due, key=lambda d: (d[0], d[1])):
            if isinstance(resource, _Endpoint):
                self._settle_endpoint(resource, deadline)
            else:
                self._settle_component(resource, deadline)

    def _settle_endpoint(self, endpoint: _Endpoint, at: float) -> None:
        endpoint.deadline = None
        failure, endpoint.pending_failure = endpoint.pending_failure, None
        if endpoint.status == "Deleting":
            del self._state.endpoints[endpoint.name.lower()]
            return
        if endpoint.status == "Creating":
            endpoint.status = "Failed" if failure else "InService"
        elif endpoint.status == "Updating":
            # A failed update rolls back: the endpoint keeps serving its old config.
            if not failure and endpoint.pending_config is not None:
                endpoint.config = endpoint.pending_config
                endpoint.instance_counts = {}
            if not failure and endpoint.pending_counts is not None:
                endpoint.instance_counts.update(endpoint.pending_counts)
            endpoint.status = "InService"
        endpoint.failure_reason = failure
        endpoint.pending_config = None
        endpoint.pending_since = None
        endpoint.pending_counts = None
        endpoint.modified = at
        self._emit(endpoint, at)

    def _settle_component(self, component: _InferenceComponent, at: float) -> None:
        component.deadline = None
        failure, component.pending_failure = component.pending_failure, None
        if component.status == "Deleting":
            del self._state.components[component.name.lower()]
            return
        if component.status == "Creating":
            component.status = "Failed" if failure else "InService"
            component.current_copies = 0 if failure else component.desired_copies
        elif component.status == "Updating":
            if not failure:
                if component.pending_specification is not None:
                    component.specification = component.pending_specification
                if component.pending_copies is not None:
                    component.desired_copies = component.pending_copies
                    component.current_copies = component.pending_copies
            component.status = "InService"
        component.failure_reason = failure
        component.pending_specification = None
        component.pending_copies = None
        component.modified = at

    # ---- events ----------------------------------------------------------------------

    def _emit(self, endpoint: _Endpoint, at: float) -> None:
        """Queue a "SageMaker Endpoint State Change" event shaped like SageMaker's own."""
        detail: dict[str, Any] = {
            "EndpointName": endpoint.name,
            "EndpointArn": endpoint.arn,
            "EndpointConfigName": endpoint.config.name,
            "ProductionVariants": [
                {
                    "VariantName": v["VariantName"],
                    "DesiredWeight": float(v.get("InitialVariantWeight", 1.0)),
                    "DesiredInstanceCount": float(v.get("InitialInstanceCount", 0)),
                }
                for v in endpoint.config.variants
            ],
            "EndpointStatus": _event_status(endpoint.status),
            "CreationTime": endpoint.created * 1000.0,
            "LastModifiedTime": endpoint.modified * 1000.0,
            "Tags": dict(endpoint.tags),
        }
        if endpoint.failure_reason:
            detail["FailureReason"] = endpoint.failure_reason
        self._outbox.append(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": _EVENT_DETAIL_TYPE,
                "source": "aws.sagemaker",
                "account": self._account,
                "time": _utc(at).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": self._region,
                "resources": [endpoint.arn],
                "detail": detail,
            }
        )

    @contextmanager
    def _transaction(self) -> Iterator[list[dict[str, Any]]]:
        """Hold the lock, settle due transitions, then deliver queued events unlocked."""
        emitted: list[dict[str, Any]] = []
        try:
            with self._lock:
                try:
                    self._advance()
                    yield emitted
                finally:
                    emitted.extend(self._outbox)
                    self._outbox.clear()
        finally:
            if self._on_event is not None:
                for event in emitted:
                    self._on_event(copy.deepcopy(event))

    # ---- lookups and views -----------------------------------------------------------

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{self._region}:{self._account}:{kind}/{name.lower()}"

    def _model(self, name: str) -> _Model:
        model = self._state.models.get(name.lower())
        if model is None:
            raise _invalid(_NOT_FOUND.format(kind="model", arn=self._arn("model", name)))
        return model

    def _config(self, name: str) -> _EndpointConfig:
        config = self._state.configs.get(name.lower())
        if config is None:
            arn = self._arn("endpoint-config", name)
            raise _invalid(_NOT_FOUND.format(kind="endpoint configuration", arn=arn))
        return config

    def _endpoint(self, name: str) -> _Endpoint:
        endpoint = self._state.endpoints.get(name.lower())
        if endpoint is None:
            raise _invalid(_NOT_FOUND.format(kind="endpoint", arn=self._arn("endpoint", name)))
        return endpoint

    def _component(self, name: str) -> _InferenceComponent:
        component = self._state.components.get(name.lower())
        if component is None:
            arn = self._arn("inference-component", name)
            raise _invalid(_NOT_FOUND.format(kind="inference component", arn=arn))
        return component

    def _components_on(self, endpoint: _Endpoint) -> list[_InferenceComponent]:
        return [c for c in self._state.components.values() if c.endpoint is endpoint]

    def _tags_of(self, arn: str) -> dict[str, str]:
        s = self._state
        taggable: list[_Model | _EndpointConfig | _Endpoint | _InferenceComponent] = [
            *s.models.values(),
            *s.configs.values(),
            *s.endpoints.values(),
            *s.components.values(),
        ]
        for resource in taggable:
            if resource.arn == arn:
                return resource.tags
        transform_tags = self.transforms.tags_of(arn) if self.transforms is not None else None
        if transform_tags is not None:
            return transform_tags  # live: AddTags and DeleteTags change them
        kind = arn.split(":", 5)[-1].split("/", 1)[0]
        label = {"endpoint-config": "endpoint configuration"}.get(kind, kind.replace("-", " "))
        raise _invalid(_NOT_FOUND.format(kind=label, arn=arn))

    def _endpoint_description(self, endpoint: _Endpoint) -> Result:
        settled = endpoint.status in ("InService", "Updating", "Deleting")
        result: Result = {
            "EndpointName": endpoint.name,
            "EndpointArn": endpoint.arn,
            "EndpointConfigName": endpoint.config.name,
            "ProductionVariants": [
                self._variant_summary(v, endpoint, settled) for v in endpoint.config.variants
            ],
            "EndpointStatus": endpoint.status,
            "CreationTime": _utc(endpoint.created),
            "LastModifiedTime": _utc(endpoint.modified),
        }
        if endpoint.failure_reason:
            result["FailureReason"] = endpoint.failure_reason
        if endpoint.config.is_async:
            result["AsyncInferenceConfig"] = copy.deepcopy(
                endpoint.config.request["AsyncInferenceConfig"]
            )
        if endpoint.pending_config is not None and endpoint.pending_since is not None:
            result["PendingDeploymentSummary"] = {
                "EndpointConfigName": endpoint.pending_config.name,
                "ProductionVariants": [
                    {
                        "VariantName": v["VariantName"],
                        **_desired(v),
                        **({"InstanceType": v["InstanceType"]} if "InstanceType" in v else {}),
                    }
                    for v in endpoint.pending_config.variants
                ],
                "StartTime": _utc(endpoint.pending_since),
            }
        return result

    def _variant_summary(
        self, variant: dict[str, Any], endpoint: _Endpoint, settled: bool
    ) -> dict[str, Any]:
        name = variant["VariantName"]
        summary: dict[str, Any] = {"VariantName": name, **_desired(variant)}
        current = summary.get("DesiredInstanceCount")
        if "DesiredInstanceCount" in summary:
            current = endpoint.instance_counts.get(name, current)
            pending = endpoint.pending_counts or {}
            summary["DesiredInstanceCount"] = pending.get(name, current)
        if settled:
            if "ServerlessConfig" in variant:
                summary["CurrentServerlessConfig"] = copy.deepcopy(variant["ServerlessConfig"])
            else:
                summary["CurrentWeight"] = summary["DesiredWeight"]
                summary["CurrentInstanceCount"] = current
            model = self._state.models.get(variant.get("ModelName", "").lower())
            image = _primary_image(model.request) if model else None
            if image:
                summary["DeployedImages"] = [_deployed_image(image, endpoint.created)]
        for key in ("ManagedInstanceScaling", "RoutingConfig"):
            if key in variant:
                summary[key] = copy.deepcopy(variant[key])
        return summary


# ---- pure helpers ------------------------------------------------------------------------


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _event_status(status: str) -> str:
    """SageMaker's events spell statuses in upper snake case: InService -> IN_SERVICE."""
    out = "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(status))
    return out.upper()


def _without(request: Request, *keys: str) -> Request:
    return {k: copy.deepcopy(v) for k, v in request.items() if k not in keys}


def _tag_dict(tags: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


def _model_containers(request: Request) -> list[dict[str, Any]]:
    if "PrimaryContainer" in request and request.get("Containers"):
        raise _invalid("Specify either PrimaryContainer or Containers, not both.")
    containers = (
        [request["PrimaryContainer"]]
        if "PrimaryContainer" in request
        else list(request.get("Containers", []))
    )
    if not containers:
        raise _invalid("A model needs a PrimaryContainer or at least one of Containers.")
    for i, container in enumerate(containers):
        if "Image" not in container and "ModelPackageName" not in container:
            raise _invalid(f"Container {i}: Image or ModelPackageName is required.")
    return containers


def _primary_image(model_request: Request) -> str | None:
    containers = _model_containers(model_request)
    image = containers[0].get("Image")
    return str(image) if image else None


def _deployed_image(image: str, at: float) -> dict[str, Any]:
    digest = uuid.uuid5(uuid.NAMESPACE_URL, image).hex * 2
    return {
        "SpecifiedImage": image,
        "ResolvedImage": f"{image.split(':')[0]}@sha256:{digest}",
        "ResolutionTime": _utc(at),
    }


def _specification_summary(
    specification: dict[str, Any], component: _InferenceComponent
) -> dict[str, Any]:
    summary = {k: copy.deepcopy(v) for k, v in specification.items() if k != "Container"}
    container = specification.get("Container")
    if container is not None:
        summary["Container"] = {k: copy.deepcopy(v) for k, v in container.items() if k != "Image"}
        if "Image" in container:
            summary["Container"]["DeployedImage"] = _deployed_image(
                container["Image"], component.created
            )
    return summary


def _desired(variant: dict[str, Any]) -> dict[str, Any]:
    if "ServerlessConfig" in variant:
        return {"DesiredServerlessConfig": copy.deepcopy(variant["ServerlessConfig"])}
    return {
        "DesiredWeight": float(variant.get("InitialVariantWeight", 1.0)),
        "DesiredInstanceCount": variant["InitialInstanceCount"],
    }


def _check_async(request: Request) -> None:
    """An asynchronous endpoint's config: instance variants that name a model (async
    inference runs neither on serverless variants nor inference components:
    docs.aws.amazon.com/sagemaker/latest/dg/async-inference.html), a result path, and
    the response included only in a topic that exists. The messages are ours; the
    conditions SageMaker's."""
    config = request["AsyncInferenceConfig"]
    for i, variant in enumerate(request["ProductionVariants"]):
        if "ServerlessConfig" in variant or "ModelName" not in variant:
            raise _invalid(
                f"ProductionVariants[{i}] ({variant['VariantName']}): AsyncInferenceConfig "
                "needs instance-based variants that name a model (no ServerlessConfig, no "
                "inference components)."
            )
    output = config.get("OutputConfig") or {}
    if not output.get("S3OutputPath"):
        raise _invalid("AsyncInferenceConfig.OutputConfig.S3OutputPath is required.")
    notification = output.get("NotificationConfig") or {}
    topics = {
        "SUCCESS_NOTIFICATION_TOPIC": "SuccessTopic",
        "ERROR_NOTIFICATION_TOPIC": "ErrorTopic",
    }
    for included in notification.get("IncludeInferenceResponseIn", []):
        if not notification.get(topics[included]):
            raise _invalid(
                f"IncludeInferenceResponseIn names {included} but NotificationConfig has no "
                f"{topics[included]}."
            )


def _check_managed_scaling(where: str, variant: dict[str, Any]) -> None:
    scaling = variant.get("ManagedInstanceScaling")
    if not scaling:
        return
    low, high = scaling.get("MinInstanceCount"), scaling.get("MaxInstanceCount")
    if low is not None and high is not None and low > high:
        raise _invalid(
            f"{where}: ManagedInstanceScaling.MinInstanceCount ({low}) exceeds "
            f"MaxInstanceCount ({high})."
        )
    if low == 0 and "ModelName" in variant:
        raise _invalid(
            f"{where}: ManagedInstanceScaling.MinInstanceCount 0 is only allowed on a variant "
            "that hosts inference components (no ModelName)."
        )


def _instances(config: _EndpointConfig) -> dict[str, int]:
    counts: dict[str, int] = {}
    for variant in config.variants:
        if "InstanceType" in variant:
            t = variant["InstanceType"]
            counts[t] = counts.get(t, 0) + int(variant.get("InitialInstanceCount", 0))
    return counts


def _page(
    summaries: list[dict[str, Any]],
    request: Request,
    *,
    name_key: str,
    status_key: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Filter, sort and cut one page the way SageMaker's List* operations do."""
    rows = [s for s in summaries if _passes_filters(s, request, name_key)]
    sort_by = request.get("SortBy", "CreationTime")
    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "Name": lambda s: s[name_key],
        "CreationTime": lambda s: (s["CreationTime"], s[name_key]),
    }
    if status_key is not None:
        keys["Status"] = lambda s: (s[status_key], s[name_key])
    rows.sort(key=keys[sort_by], reverse=request.get("SortOrder", "Descending") == "Descending")
    start = _offset(request.get("NextToken"))
    size = request.get("MaxResults", _DEFAULT_PAGE_SIZE)
    page = rows[start : start + size]
    return page, (page_token(start + size) if start + size < len(rows) else None)


def _passes_filters(summary: dict[str, Any], request: Request, name_key: str) -> bool:
    if (
        "NameContains" in request
        and request["NameContains"].lower() not in summary[name_key].lower()
    ):
        return False
    bounds = {
        "CreationTimeBefore": ("CreationTime", lambda t, b: t < b),
        "CreationTimeAfter": ("CreationTime", lambda t, b: t > b),
        "LastModifiedTimeBefore": ("LastModifiedTime", lambda t, b: t < b),
        "LastModifiedTimeAfter": ("LastModifiedTime", lambda t, b: t > b),
    }
    for param, (key, holds) in bounds.items():
        if param in request and key in summary and not holds(summary[key], request[param]):
            return False
    return True


def _offset(token: str | None) -> int:
    try:
        return page_offset(token)
    except ValueError as err:
        raise _invalid(f"Invalid pagination token: {token}") from err


def _with_token(result: Result, token: str | None) -> Result:
    if token is not None:
        result["NextToken"] = token
    return result
