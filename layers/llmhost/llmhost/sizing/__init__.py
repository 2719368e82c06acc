"""How much memory a model needs, which instance it fits on, its token limits and cost (pure).

- ``fit``: memory and fit arithmetic (weights, KV cache, runtime; the cheapest instance a
  model fits on).
- ``plan``: the plan for a valid spec (``Plan``: instance, GPUs, token limits, cost).
- ``issues``: why a spec cannot run as written, worded for the user (``capacity_issues``).

Models missing from ``llmhost.catalog`` are not sized: nothing is assumed about them.
"""
