"""`agentstore erase` and `agentstore prune` against a real PostgreSQL database."""

from __future__ import annotations

from tests.cli.conftest import Cli, open_store


def test_erase_asks_reports_counts_and_erases(run: Cli, pg_url: str) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    with open_store(config) as store:
        for n in range(3):
            store.save_state("agent-x", f"s{n}", {"n": n})
        store.save_task("agent-x", "t", {"status": "done"})
        store.save_state("agent-y", "s", {"keep": True})
        for n in range(4):
            store.save_conversation("conv", {"n": n})
        store.save_transactions("case", [{"id": "a"}, {"id": "b"}])

        declined = run(["erase", "--agent", "agent-x"], config, input="n\n")
        assert declined.exit_code == 1 and "Aborted" in declined.stderr
        assert store.list_states("agent-x") == ["s0", "s1", "s2"], "declining changes nothing"

        done = run(["erase", "--agent", "agent-x"], config, input="y\n")
        assert done.exit_code == 0, done.stderr
        assert "erased 3 state(s) and 1 task(s) of agent 'agent-x'" in done.stdout
        assert store.list_states("agent-x") == [] and store.list_tasks("agent-x") == []
        assert store.get_state("agent-y", "s") == {"keep": True}

        conv = run(["erase", "--conversation", "conv", "--yes"], config)
        assert "erased 4 message(s)" in conv.stdout and store.get_conversation_history("conv") == []
        case = run(["erase", "--case", "case", "-y"], config)
        assert "erased 2 transaction(s)" in case.stdout and store.get_transactions("case") == []


def test_erase_needs_exactly_one_target(run: Cli, pg_url: str) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url}
    assert run(["erase", "--yes"], config).exit_code == 2
    both = run(["erase", "--agent", "a", "--case", "c", "--yes"], config)
    assert both.exit_code == 2 and "exactly one" in both.stderr
    bad = run(["erase", "--agent", "", "--yes"], config)
    assert bad.exit_code == 1 and "agent_id must not be empty" in bad.stderr


def test_prune_dry_run_counts_and_prune_removes(run: Cli, pg_url: str) -> None:
    config = {"POSTGRES_CONNECTION_STRING": pg_url, "AGENTSTORE_RETAIN_MESSAGES": "2"}
    with open_store(config) as store:
        for n in range(5):
            store.save_conversation("long", {"n": n})
        dry = run(["prune", "--dry-run"], config)
        assert dry.exit_code == 0, dry.stderr
        assert "conversations:over_count: would remove 3" in dry.stdout
        assert len(store.get_conversation_history("long")) == 5
        done = run(["prune"], config)
        assert "conversations:over_count: removed 3" in done.stdout
        assert store.get_conversation_history("long") == [{"n": 3}, {"n": 4}]
