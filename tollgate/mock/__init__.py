"""The mock upstream: an OpenAI-compatible provider with fault injection, for the demo, the tests and the benchmarks."""
