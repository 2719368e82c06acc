"""Every validation error a request can produce reads as plain words, never as pydantic's.

Hypothesis mutates valid requests (wrong types, unknown kinds, bad strings, extra fields)
and the messages that come back must be free of pydantic's vocabulary.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from llmhost.serving.requests import ChatCompletionRequest, RagRequest
from llmhost.specs import DeploymentPatch, DeploymentSpec, issues_from_validation_error

VALID: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (
        DeploymentSpec,
        {
            "name": "llama3-8b",
            "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
            "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
            "engine": {"name": "tgi", "version": "3.0"},
            "scaling": {"min_capacity": 1, "max_capacity": 2, "schedules": []},
            "tags": {"team": "a"},
        },
    ),
    (DeploymentPatch, {"hosting": {"kind": "shared", "pool": "gpu-pool"}}),
    (
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop": ["x"],
            "rag": {"collection": "docs"},
        },
    ),
    (RagRequest, {"query": "q", "model": "m", "collection": "docs", "k": 3}),
]
JARGON = (
    "Input should",
    "String should",
    "Value error",
    "Field required",
    "Extra inputs",
    "Input tag",
    "kind()",
    "function-after",
    "^[",
    "should have at",
    "should be",
    "unable to parse",
)
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False),
    st.text(max_size=70),
    st.sampled_from(["", "-x", "a_b", "ml.g5", "1.2.3.4", "gpu", "image_url", "a" * 80]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just({"kind": "nope"}),
    st.just({"type": "image_url"}),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _mutate(data: dict[str, Any], path: tuple[Any, ...], new: Any, extra: bool) -> Any:
    copy = json.loads(json.dumps(data))
    target = copy
    for key in path[:-1]:
        target = target[key]
    if extra and isinstance(target, dict):
        target["unknown_field"] = new
    else:
        target[path[-1]] = new
    return copy


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_validation_message_speaks_pydantic(data: st.DataObject) -> None:
    model, valid = data.draw(st.sampled_from(VALID))
    path = data.draw(st.sampled_from(_paths(valid)))
    mutated = _mutate(valid, path, data.draw(ODD), data.draw(st.booleans()))
    try:
        model.model_validate(mutated)
    except ValidationError as error:
        issues = issues_from_validation_error(error)
        assert issues
        for issue in issues:
            assert not any(word in issue.message for word in JARGON), (mutated, issue)
            # the field is the path the client wrote: no union tags, no "body"
            assert "content-parts" not in issue.field and not issue.field.startswith("body.")
