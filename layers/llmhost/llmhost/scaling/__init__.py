"""Scaling: the policy a deployment's ``Scaling`` block becomes, and a replay of it on traces.

``policy`` is pure: a spec in, the Application Auto Scaling and CloudWatch configuration out,
plus the decisions Application Auto Scaling takes with it. ``simulator`` replays request
traces against that same policy; ``traces`` reads the public trace formats.

Nothing is imported here: the scaling and API functions import ``capacity_guard`` or ``hook``
at cold start, and ``policy`` only when a decision needs it.
"""
