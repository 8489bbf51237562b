"""Choosing where a request goes: model routes, balancing, breakers, retry budget, verdicts on failures, slot queues, degradation, health probes."""
