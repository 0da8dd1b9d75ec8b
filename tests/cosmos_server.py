"""Transitional: bench/run.py and bench/delete_cost.py still import the Cosmos DB test server
from here. Delete this file once they import it from `bench.services` (the bench-split work)."""

from agentstore_cli.launch import start_cosmos_server

__all__ = ["start_cosmos_server"]
