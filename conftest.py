"""The test services (servers, workers, databases) for every directory under tests/."""

pytest_plugins = ["tests.plugin"]
