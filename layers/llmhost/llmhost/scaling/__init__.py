"""Scaling: the policy a deployment's ``Scaling`` block becomes, and what acts on it in AWS.

``policy`` is pure: a spec in, the Application Auto Scaling and CloudWatch configuration out,
plus the decisions llmhost's scaling hook takes with it. The replay of request traces against
that same policy lives outside the product, in ``llmhost_local.replay``.

Nothing is imported here: the scaling and API functions import ``capacity_guard`` or ``hook``
at cold start, and ``policy`` only when a decision needs it.
"""
