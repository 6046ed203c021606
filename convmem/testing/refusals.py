"""What the real chat-completions API refuses with HTTP 400, in its own words.

The fake server checks every request with :func:`check_request` (unless built with
``validate=False``): a body that is not a JSON object, empty ``messages``, and the tool-call
pairing rule (a ``tool`` message must answer a ``tool_calls`` id of the assistant message before
it, and every such id must be answered before the next other message).
"""

from __future__ import annotations

from typing import Any


def check_request(body: Any, *, messages: bool) -> str | None:
    """What the real API would refuse with HTTP 400, in its own words; None if fine."""
    if not isinstance(body, dict):
        return "FakeChatServer: the request body is not a JSON object"
    if not messages:
        return None
    sent = body.get("messages")
    if not isinstance(sent, list) or not sent:
        return "[] is too short - 'messages'"
    open_ids: list[str] = []
    for i, message in enumerate(sent):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_ids:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    f"preceeding message with 'tool_calls'. (messages[{i}], "
                    f"tool_call_id={call_id!r})"
                )
            open_ids.remove(call_id)
            continue
        if open_ids:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(open_ids)}"
            )
        if role == "assistant":
            open_ids = [str(tc.get("id")) for tc in message.get("tool_calls") or ()]
    if open_ids:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_ids)}"
        )
    return None


__all__ = ["check_request"]
