"""What a conversation learns from its server: the window, the token counts, refused calls.

The conversation classes mix :class:`_ServerFacts` in. Its pure parts decide (is the window
known? what does an overflow error teach? may the call be retried?); the two small I/O
methods, :meth:`_consult_server` and :meth:`_aconsult_server`, ask the server through
:mod:`convmem.providers` before a call. The server is the truth: a window it reports wins
over the table, its token counts correct the estimates, and a context-length HTTP 400 makes
convmem learn (the server's window and count when its body states them, a conservative
correction otherwise), rebuild the context and retry **once**; the next call starts from
what was learnt, so the same 400 does not come back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from . import providers
from .errors import ContextOverflowError, UnknownModelError, UsageError
from .models import WindowInfo, resolve_window
from .plan import ContextPlan, Note, RefusedAttempt
from .tokens import FamilyCounter, TokenCounter, default_counter

if TYPE_CHECKING:
    from .history import History
    from .strategy import Strategy
    from .tokens import UsageCalibrator

#: How many recent messages are sent to a server's tokenize endpoint to calibrate the
#: counter before the first call (with the system prompt and the new message).
CALIBRATION_MESSAGES = 24

#: Share of the window kept free for the spread of estimates on servers whose tokenizer is
#: not tiktoken (see ``_ServerFacts._count_margin``).
COUNT_MARGIN = 0.03


class _ServerFacts:
    """Window, counter and overflow state of a conversation, and how each is learnt."""

    client: Any
    model: str
    strategy: Strategy
    counter: TokenCounter
    context_window: int
    reply_reserve: int
    calibrator: UsageCalibrator
    history: History
    send_reasoning: bool

    def _init_window(
        self,
        context_window: int | Literal["server"] | None,
        reply_reserve: int | None,
        counter: TokenCounter | None,
    ) -> None:
        """Resolves the window from the caller or the table; else the server is asked later."""
        from ._check import positive_int

        if reply_reserve is not None:
            positive_int("reply_reserve", reply_reserve)
        self._reply_reserve_arg = reply_reserve
        self._counter_given = counter is not None
        self._server: providers.ServerInfo | None = None
        self._server_counted = False
        self._max_prompt: int | None = None
        self._refused_once = False
        self.window: WindowInfo | None
        if context_window == "server":
            self._ask_server = True
            self.window = None
        else:
            if isinstance(context_window, str):
                raise UsageError(
                    f'context_window must be a positive int or "server", got {context_window!r}'
                )
            self.window = resolve_window(self.model, context_window)
            self._ask_server = self.window is None
        self.counter = counter if counter is not None else default_counter(self.model)
        self.context_window = 0
        self.reply_reserve = 0
        if self.window is not None:
            self._set_window(self.window)

    def _set_window(self, window: WindowInfo) -> None:
        from .conversation_core import default_reply_reserve

        reserve = self._reply_reserve_arg
        if reserve is not None and not (0 < reserve < window.tokens):
            raise UsageError(
                f"reply_reserve must be between 1 and the context window "
                f"({window.tokens}, {window.source}), got {reserve}"
            )
        self.window = window
        self.context_window = window.tokens
        self.reply_reserve = reserve or default_reply_reserve(window.tokens)

    @property
    def window_known(self) -> bool:
        """Whether the window is known yet (an :class:`AsyncConversation` asks the server at
        its first call when neither the caller nor the table knows it)."""
        return self.window is not None and not self._ask_server

    # -- asking the server (the only I/O here, written twice) ------------------------------------
    def _wants_server(self) -> bool:
        """Whether the server still has something to tell: the window when it is unknown,
        else its tokenizer when convmem counts with its default counter. OpenAI's own API is
        not asked for the latter (tiktoken is its tokenizer, and its model list has no
        windows)."""
        if self._ask_server:
            return True
        if self._server is not None or self._counter_given:
            return False
        return "api.openai.com" not in str(getattr(self.client, "base_url", ""))

    def _consult_server(self, pending: Sequence[Mapping[str, Any]] = ()) -> None:
        """Before a call: asks the server what is still unknown (blocking client)."""
        if self._wants_server():
            self._apply_server(providers.discover(self.client, self.model))
        if self._count_due():
            counted = providers.count_prompt(self.client, self.model, self._sample(pending))
            self._apply_count(pending, counted)

    async def _aconsult_server(self, pending: Sequence[Mapping[str, Any]] = ()) -> None:
        """Before a call: asks the server what is still unknown (``AsyncOpenAI`` client)."""
        if self._wants_server():
            self._apply_server(await providers.adiscover(self.client, self.model))
        if self._count_due():
            sample = self._sample(pending)
            self._apply_count(
                pending, await providers.acount_prompt(self.client, self.model, sample)
            )

    # -- pure parts ---------------------------------------------------------------------------
    def _apply_server(self, info: providers.ServerInfo) -> None:
        self._server = info
        if self._ask_server:
            if info.window is None:
                raise UnknownModelError(self.model)
            self._ask_server = False
            self._set_window(info.window)
        elif (
            info.window is not None
            and self.window is not None
            and self.window.source == "table"
            and info.window.tokens != self.window.tokens
        ):
            # The table holds published figures; the server says what it actually serves
            # (vLLM's --max-model-len, llama.cpp's --ctx-size, Ollama's num_ctx).
            self._set_window(info.window)
        if info.tokenizer is not None and not self._counter_given:
            self.counter = FamilyCounter(
                self.model,
                cjk_per_char=info.tokenizer.cjk_per_char,
                latin_ratio=info.tokenizer.latin_ratio,
                source="server",
            )

    def _count_due(self) -> bool:
        return (
            not self._server_counted
            and self._server is not None
            and self._server.can_tokenize
            and self.calibrator.samples(self.model) == 0
        )

    def _sample(self, pending: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The messages counted on the server: system, the newest history, the new message."""
        from .messages import to_wire

        messages: list[dict[str, Any]] = []
        system = self.history.system
        if system is not None:
            messages.append(to_wire(system, send_reasoning=self.send_reasoning))
        recent: list[dict[str, Any]] = []
        for turn in reversed(self.history.turn_list()):
            recent[:0] = turn.wire_messages(send_reasoning=self.send_reasoning)
            if len(recent) >= CALIBRATION_MESSAGES:
                break
        messages.extend(recent[-CALIBRATION_MESSAGES:] if len(recent) > 1 else recent)
        messages.extend(to_wire(m, send_reasoning=self.send_reasoning) for m in pending)
        # A sample must start at a user message for some chat templates.
        while len(messages) > 1 and messages[0].get("role") not in ("system", "user"):
            messages.pop(0)
        if system is not None:
            while len(messages) > 2 and messages[1].get("role") != "user":
                messages.pop(1)
        return messages

    def _apply_count(self, pending: Sequence[Mapping[str, Any]], counted: int | None) -> None:
        self._server_counted = True
        if not counted:
            return
        sample = self._sample(pending)
        estimated = sum(self.counter.count_message(m) for m in sample) + self.counter.reply_priming
        self.calibrator.observe(self.model, estimated, counted)

    def _overflow(self, refused: list[RefusedAttempt], plan: ContextPlan, exc: Exception) -> bool:
        """Learns from a call the server refused.

        Returns:
            True when ``exc`` was a context-length error and the call should be rebuilt and
            retried; False when it is another error (the caller re-raises it).

        Raises:
            ContextOverflowError: (from ``exc``) this call was already retried once.
        """
        overflow = providers.overflow_from_exception(exc)
        if overflow is None:
            return False
        self._refused_once = True
        before_window, before_ratio = self.context_window, self.calibrator.ratio(self.model)
        learnt: list[str] = []
        if overflow.context_window is not None and overflow.context_window != self.context_window:
            self._reply_reserve_arg = None
            self._set_window(
                WindowInfo(overflow.context_window, "learnt", f"{overflow.provider} overflow error")
            )
            learnt.append(f"window {before_window} -> {overflow.context_window}")
        if overflow.max_prompt_tokens is not None:
            self._max_prompt = overflow.max_prompt_tokens
            learnt.append(f"input limit {overflow.max_prompt_tokens}")
        limit = overflow.prompt_limit or (before_window - plan.reply_reserve)
        ratio = self.calibrator.observe_overflow(
            self.model, plan.estimated_tokens, server_tokens=overflow.prompt_tokens, limit=limit
        )
        if ratio != before_ratio:
            learnt.append(f"token ratio {before_ratio:.3f} -> {ratio:.3f}")
        self._share_window(overflow)
        attempt = RefusedAttempt(
            provider=overflow.provider,
            message=overflow.message,
            estimated_tokens=plan.estimated_tokens,
            corrected_tokens=plan.corrected_tokens,
            budget=plan.budget,
            context_window=before_window,
            server_context_window=overflow.context_window,
            server_prompt_tokens=overflow.prompt_tokens,
            learnt=", ".join(learnt) or "nothing new",
        )
        refused.append(attempt)
        if len(refused) > 1:
            raise ContextOverflowError(
                f"the server refused the prompt twice ({overflow.provider}: "
                f"{overflow.describe()}), even after convmem learnt from the first refusal",
                needed=overflow.prompt_tokens or plan.corrected_tokens,
                budget=overflow.prompt_limit or plan.budget,
                context_window=overflow.context_window or self.context_window,
                plan=plan,
            ) from exc
        return True

    def _share_window(self, overflow: providers.Overflow) -> None:
        """A window learnt from an error also serves later conversations with this server."""
        if overflow.context_window is None or self._server is None:
            return
        if self._server.window is None or self._server.window.tokens != overflow.context_window:
            self._server.window = WindowInfo(
                overflow.context_window, "learnt", f"{overflow.provider} overflow error"
            )

    def _count_margin(self, window: int, reply_reserve: int) -> int:
        """Tokens kept free for the spread of an estimate that is not the model's own count.

        On a self-hosted server (vLLM, llama.cpp, Ollama), and after any refusal, convmem's
        count is a calibrated estimate of another tokenizer, off by a percent or two from one
        prompt to the next (more where summaries and recalled text mix languages): a budget
        filled to the last token would be refused now and then. :data:`COUNT_MARGIN` of the
        window (at least 8 tokens) is kept free, counted with the reply's room in the plan.
        """
        kind = self._server.kind if self._server is not None else "openai-compatible"
        if kind == "openai-compatible" and not self._refused_once:
            return 0
        room = window - reply_reserve
        return min(max(8, math.ceil(window * COUNT_MARGIN)), max(0, room // 4))

    def _effective_window(self, reply_reserve: int) -> int:
        """The window budgets use: the learnt input limit (DashScope's) caps the prompt."""
        if self._max_prompt is not None:
            return min(self.context_window, self._max_prompt + reply_reserve)
        return self.context_window

    def _mark_plan(self, plan: ContextPlan, refused: Sequence[RefusedAttempt]) -> ContextPlan:
        """Says on the plan where its window came from, and which attempts were refused."""
        if self.window is not None:
            plan.window_source = str(self.window)
        if refused:
            plan.refused = list(refused)
            for attempt in refused:
                text = (
                    f"the server refused an earlier attempt ({attempt.describe()}); "
                    f"learnt {attempt.learnt}; rebuilt and retried"
                )
                plan.notes.append(Note("server_refused", {**attempt.to_dict(), "text": text}))
        return plan

    def _overflow_error(
        self, error: ContextOverflowError, refused: Sequence[RefusedAttempt]
    ) -> ContextOverflowError:
        """A strategy that cannot shrink after a refusal: the error carries the server's numbers."""
        last = refused[-1]
        reason = str(error).split(": needs ~", 1)[0]
        new = ContextOverflowError(
            f"the server refused the prompt ({last.describe()}) and "
            f"{type(self.strategy).__name__} cannot send less ({reason})",
            needed=last.server_prompt_tokens or error.needed,
            budget=error.budget,
            context_window=last.server_context_window or error.context_window,
            plan=error.plan,
        )
        new.refused = list(refused)  # type: ignore[attr-defined]
        return new


__all__ = ["CALIBRATION_MESSAGES", "COUNT_MARGIN"]
