"""``convmem conversations``, and what the chat command and it share: where the store lives.

``convmem conversations list|show ID|search WORDS|export ID|delete ID`` reads the same SQLite
store as ``convmem chat`` (``--db``, default :func:`default_db`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import UsageError


def data_home() -> Path:
    """Where the chat keeps its database and line history: ``$CONVMEM_HOME``, else
    ``$XDG_DATA_HOME/convmem``, else ``~/.local/share/convmem``."""
    if os.environ.get("CONVMEM_HOME"):
        return Path(os.environ["CONVMEM_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "convmem"


def default_db() -> Path:
    return data_home() / "chats.db"


def open_store(db: Path) -> Any:
    from .stores import SQLiteStore

    db.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(str(db))


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def preview(message: Any, width: int) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(
            str(p.get("text", f"[{p.get('type')}]")) for p in content if isinstance(p, dict)
        )
    if content is None and message.get("tool_calls"):
        content = "calls " + ", ".join(
            str(c.get("function", {}).get("name")) for c in message["tool_calls"]
        )
    return shorten(str(content or ""), width)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_conversations(action: str, args: Sequence[str], db: Path, out: TextIO | None = None) -> int:
    """``convmem conversations list|show ID|search WORDS|export ID|delete ID``."""
    out = out or sys.stdout
    if not db.exists():
        raise UsageError(f"no conversations yet: {db} does not exist (start one: convmem chat)")
    store = open_store(db)
    try:
        if action == "list":
            return _list(store, out)
        if not args:
            raise UsageError(f"convmem conversations {action} needs an argument")
        if action == "search":
            hits = store.search(" ".join(args))
            for hit in hits:
                text = shorten(hit.text, 100)
                print(f"{hit.conversation_id}\t[{hit.turn_id}]\t{hit.role}\t{text}", file=out)
            return 0 if hits else 1
        saved = store.load(args[0])
        if saved is None:
            raise UsageError(f"no conversation {args[0]!r} in {db}")
        if action == "show":
            print(f"{saved.id} · {saved.model} · {len(saved.turns)} turns", file=out)
            if saved.system:
                print(f"system: {preview(saved.system, 200)}", file=out)
            for turn in saved.turns:
                for message in turn.messages:
                    print(f"[{turn.id}] {message.get('role')}: {preview(message, 500)}", file=out)
            return 0
        if action == "export":
            print(_export(saved), file=out)
            return 0
        if action == "delete":
            store.delete(saved.id)
            print(f"deleted {saved.id}", file=out)
            return 0
        raise UsageError(f"unknown action {action!r}")
    finally:
        store.close()


def _list(store: Any, out: TextIO) -> int:
    from .pricing import cost

    rows = store.list()
    if not rows:
        print("no conversations", file=out)
        return 0
    print("id\tupdated\tmodel\tturns\ttokens\tcost\ttitle", file=out)
    for row in rows:
        saved = store.load(row.id)
        usage = (saved.usage if saved is not None else {}) or {}
        price = cost(
            row.model,
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            int(usage.get("cached_tokens", 0)),
        )
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.updated_at))
        shown = "—" if price is None else f"${price:.4f}"
        print(
            f"{row.id}\t{when}\t{row.model}\t{row.turns}\t{row.tokens}\t{shown}\t"
            f"{shorten(row.title, 50)}",
            file=out,
        )
    return 0


def _export(saved: Any) -> str:
    from .history import History

    history = History(saved.system)
    for turn in saved.turns:
        history.append(turn.messages)
    data = history.to_dict()
    data["conversation_id"] = saved.id
    data["model"] = saved.model
    return json.dumps(data, ensure_ascii=False, indent=2)
