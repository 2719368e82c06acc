"""What Application Auto Scaling does with a deployment's policy when an alarm fires, for the
trace replay: the target tracking formula, cooldowns, min/max clamping, the step adjustments,
a scheduled action's new MinCapacity, and llmhost's idle and wake hooks as the replay takes them.

Pure, values in and values out: a ``ScalingState`` and a datapoint in, the next state out. The
policy itself, the state and the decisions llmhost's scaling hook also takes in AWS (overload,
underload) are the product's (``llmhost.scaling.policy``), so the policy that is benchmarked is
the policy that is deployed.

Sources for AWS's behaviour: target tracking,
https://docs.aws.amazon.com/autoscaling/application/userguide/target-tracking-scaling-policy-overview.html
(scale out in proportion to the metric; scale in only when the metric is well below the target;
cooldowns); step scaling,
https://docs.aws.amazon.com/autoscaling/application/userguide/step-scaling-policy-overview.html
(adjustments by the size of the alarm's breach) and
https://docs.aws.amazon.com/autoscaling/application/APIReference/API_StepScalingPolicyConfiguration.html
(during the cooldown, capacity added by the scale-out that started it counts as part of the
next one's).
"""

from __future__ import annotations

import math

from llmhost.scaling.policy import WAKE_COOLDOWN_S, ScalingPolicy, ScalingState


def target_tracking_capacity(capacity: int, metric: float, target: float) -> int:
    """ceil(capacity x metric / target): the capacity that brings the metric to the target.

    A tiny tolerance keeps float noise (4.0000000001) from adding a whole copy.
    """
    if capacity <= 0 or metric <= 0:
        return 0
    return math.ceil(capacity * metric / target - 1e-9)


def scale_out(
    policy: ScalingPolicy,
    state: ScalingState,
    now: float,
    metric: float,
    in_service: int | None = None,
) -> ScalingState:
    """The target tracking policy's high alarm is in ALARM with ``metric`` as its datapoint.

    Capacity only grows. Outside a cooldown the new capacity is computed from the current
    desired capacity; inside one, from the capacity before the initiating scale-out, and it
    applies only if larger than what that activity already asked for. With ``in_service``
    (the metric's own denominator) the capacity is computed from the copies in service
    instead: AWS does not document which of the two its formula uses, so the replay can run
    either (``Mechanics.tracking_capacity``).
    """
    tracking = policy.target_tracking
    cooling = now < state.scale_out_until
    base = state.scale_out_base if cooling else state.desired
    if in_service is not None:
        base = in_service
    wanted = policy.clamp(target_tracking_capacity(base, metric, tracking.target_value))
    if wanted <= state.desired:
        return state
    if cooling:
        return state.changed(now, wanted, "target-tracking-out")
    return state.changed(
        now,
        wanted,
        "target-tracking-out",
        scale_out_until=now + tracking.scale_out_cooldown_s,
        scale_out_base=state.desired,
    )


def scale_in(policy: ScalingPolicy, state: ScalingState, now: float, metric: float) -> ScalingState:
    """The low alarm is in ALARM (the metric stayed well below target for the whole window).

    Removes only what keeps the metric at or under the target, never below min_capacity, and
    not during either cooldown (a scale-out still settling is not undone).
    """
    tracking = policy.target_tracking
    if tracking.disable_scale_in or now < state.scale_in_until or now < state.scale_out_until:
        return state
    wanted = policy.clamp(target_tracking_capacity(state.desired, metric, tracking.target_value))
    if wanted >= state.desired:
        return state
    return state.changed(
        now,
        wanted,
        "target-tracking-in",
        scale_in_until=now + tracking.scale_in_cooldown_s,
    )


def step(policy: ScalingPolicy, state: ScalingState, now: float, metric: float) -> ScalingState:
    """The scale-from-zero step policy's alarm is in ALARM with ``metric`` aggregated.

    Scale-out only. Inside the policy's cooldown the adjustment applies to the capacity
    before the activity that started it, and only if that asks for more (capacity still
    starting is not asked for twice)."""
    wake = policy.scale_from_zero
    if wake is None:
        return state
    adjustment = wake.adjustment_for(metric)
    if adjustment is None:
        return state
    if wake.adjustment_type == "ExactCapacity":
        wanted = policy.clamp(adjustment)
        return state if wanted == state.desired else state.changed(now, wanted, "step")
    cooling = now < state.step_until
    base = state.step_base if cooling else state.desired
    wanted = policy.clamp(base + adjustment)
    if wanted <= state.desired:
        return state
    woken = {"woken_at": now} if state.desired == 0 else {}
    if cooling:
        return state.changed(now, wanted, "step", **woken)
    return state.changed(
        now,
        wanted,
        "step",
        step_until=now + wake.cooldown_s,
        step_base=state.desired,
        **woken,
    )


def floor(policy: ScalingPolicy, state: ScalingState, now: float) -> ScalingState:
    """A scheduled action raised MinCapacity above desired capacity: AWS scales to it."""
    if state.desired >= policy.min_capacity:
        return state
    return state.changed(now, policy.min_capacity, "scheduled")


def idle(policy: ScalingPolicy, state: ScalingState, now: float) -> ScalingState:
    """The idle alarm fired: llmhost's hook takes the deployment to zero (or to sleep).

    Ignored while a wake is under way and for the idle window after it: the request that
    woke the model is often the only one for minutes, and the copy serving it takes longer
    to start than the shortest idle window, so without this the hook would put the model
    back to sleep before it ever answered.
    """
    alarm = policy.idle_alarm
    if alarm is None or state.desired == 0:
        return state
    if now < state.woken_at + WAKE_COOLDOWN_S + alarm.period_s * alarm.evaluation_periods:
        return state
    return state.changed(now, 0, "idle")


def wake(policy: ScalingPolicy, state: ScalingState, now: float) -> ScalingState:
    """A request found no copy: llmhost's hook asks for one at once, without the alarm's delay."""
    if state.desired > 0:
        return state
    return state.changed(now, max(1, policy.min_capacity), "wake", woken_at=now)
