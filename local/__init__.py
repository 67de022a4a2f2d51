"""The local AWS emulation: a moto server that executes the synthesized state machine,
runs the Lambda handlers in process, and hands SSM commands to the sandbox agent.

Test and demo support, not product code.
"""
