"""The README's list of validation limits names every limit the code enforces."""

from __future__ import annotations

from storage.ids import MAX_ID_CHARS
from storage.ops import MAX_TRANSACTIONS_PER_SAVE
from storage.payload import MAX_DEPTH, MAX_PAYLOAD_BYTES

from .files import ROOT


def test_readme_lists_every_validation_limit() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    start = text.index("Every bad input")
    limits = text[start : text.index("raises `storage.ValidationError`", start)]
    for phrase in (
        f"ids over {MAX_ID_CHARS} characters",
        f"payloads over {MAX_PAYLOAD_BYTES:,} bytes",
        f"nested over {MAX_DEPTH} levels",
        f"more than {MAX_TRANSACTIONS_PER_SAVE:,} transactions in one `save_transactions`",
        "ids in one `delete_transactions`",
    ):
        assert phrase in limits, f"README's validation limits miss {phrase!r}: {limits}"
