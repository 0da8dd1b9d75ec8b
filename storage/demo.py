"""`make demo` until the queue pipeline lands: a direct storage round trip on local PostgreSQL."""

from __future__ import annotations

import os
import time

from storage import create_storage_client


def main() -> None:
    os.environ.setdefault(
        "POSTGRES_CONNECTION_STRING", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with create_storage_client() as store:
        print(f"store: {store!r}")
        started = time.perf_counter()
        store.save_state("demo-agent", "plan", {"step": 1, "goal": "review case 42"})
        store.save_task("demo-agent", "task-1", {"status": "done"})
        store.save_conversation("demo-conv", {"role": "user", "content": "hello"})
        store.save_transactions("case-42", [{"id": "t1", "amount": 12.5}])
        print("state:", store.get_state("demo-agent", "plan"))
        print("task:", store.get_task("demo-agent", "task-1"))
        print("history:", store.get_conversation_history("demo-conv", limit=3))
        print("transactions:", store.get_transactions("case-42"))
        print(f"done in {(time.perf_counter() - started) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
