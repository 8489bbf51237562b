"""Choosing where a request goes: model routes, balancing, breakers, retry budget, slot queues, degradation, health probes."""
