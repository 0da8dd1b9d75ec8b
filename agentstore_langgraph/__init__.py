"""LangGraph checkpointer on agentstore: `from agentstore_langgraph import AgentStoreSaver`.

Needs the `langgraph` extra: `pip install "agentstore[langgraph]"`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pending import StaleReadError
    from .saver import AgentStoreSaver

__all__ = ["AgentStoreSaver", "StaleReadError"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import agentstore_langgraph` names the extra when it is missing.
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import pending, saver
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("langgraph", "langchain_core"):
            raise ModuleNotFoundError(
                f"{name} needs LangGraph: pip install 'agentstore[langgraph]' ({exc})"
            ) from exc
        raise
    return getattr(saver if name == "AgentStoreSaver" else pending, name)
