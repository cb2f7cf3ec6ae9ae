"""The relay benchmark's two services (``python -m benchmarks.relay``): event classes both
know, and the receiving service's latency probe handler."""
