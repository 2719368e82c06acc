"""Scaling: the policy a deployment's ``Scaling`` block becomes, and a replay of it on traces.

``policy`` is pure: a spec in, the Application Auto Scaling and CloudWatch configuration out,
plus the decisions Application Auto Scaling takes with it. ``simulator`` replays request
traces against that same policy; ``traces`` reads the public trace formats.
"""

from llmhost.scaling.policy import ScalingPolicy, policy_from_spec

__all__ = ["ScalingPolicy", "policy_from_spec"]
