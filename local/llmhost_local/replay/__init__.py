"""The trace replay: request traces and synthetic scenarios against a deployment's scaling
policy, with Application Auto Scaling's mechanics simulated (``autoscaling``)."""
