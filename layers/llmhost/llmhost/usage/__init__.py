"""Usage and cost: per-request cost estimates, usage counters per hour, deployment and
caller, request metrics, and the capacity history cost is integrated over."""
