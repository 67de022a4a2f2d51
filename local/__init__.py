"""The local AWS emulation: a moto server that executes the synthesized state machine,
runs the Lambda handlers in process, and hands SSM commands to the sandbox agent.

The local cloud that `make demo`, the tests and the benchmarks run on (local/README.md).
"""
