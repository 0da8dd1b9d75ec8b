"""The `agentstore` command line: export, import, migrate, health, stats and dlq."""
