"""deploy-model: the command line of the deployment orchestrator (starts and follows executions)."""
