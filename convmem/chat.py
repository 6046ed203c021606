"""``convmem chat`` and ``convmem conversations``: a terminal chat over the public API.

Everything here is what a user could write with :class:`~convmem.Conversation` and a
:mod:`convmem.stores` store: the REPL streams with :meth:`Conversation.stream`, saves every
committed turn in a SQLite store (``--db``), and reads it back with ``-c``/``--cid``.

* Ctrl-C while a reply streams stops the reply and commits nothing; the chat goes on.
  Ctrl-C at the prompt clears the line. Ctrl-D or ``/exit`` leaves.
* The history is append-only, so ``/undo``, ``/retry`` and ``/fork`` move the chat to a fork
  of the conversation (a new id); the original stays in the store, untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .conversations import data_home, default_db, open_store, preview, shorten, write_atomic
from .errors import ConvmemError, UsageError

STRATEGIES = ("truncate", "summary", "recall", "pipeline")
DEFAULT_STRATEGY = "summary"
DEFAULT_MODEL = "gpt-4o-mini"

HELP = """\
commands:
  /plan            what the last call sent, section by section
  /usage           tokens and cost so far (summariser apart)
  /history         the conversation so far
  /search WORDS    search every saved conversation
  /undo            drop the last turn (moves to a fork without it)
  /retry           ask the last message again (moves to a fork without its reply)
  /fork            continue in a copy of this conversation
  /clear           start a new conversation
  /system TEXT     set the system prompt of this conversation
  /model NAME      switch model
  /strategy NAME   switch strategy: truncate, summary, recall or pipeline
  /save FILE       write this conversation as JSON
  /multi ... /end  enter several lines as one message
  /help            this list
  /exit            leave (or Ctrl-D)
Ctrl-C stops a reply without saving it."""


def parse_option(key: str, value: str) -> tuple[str, Any]:
    """``-o KEY VALUE``: the value as JSON when it parses (``0.2``, ``true``, ``{"a": 1}``),
    else as a string."""
    if not key.isidentifier():
        raise UsageError(f"-o KEY must be an argument name like temperature, got {key!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def make_strategy(name: str, budget: int | None) -> Any:
    """The strategy ``--strategy NAME`` stands for, with ``--budget`` capping the prompt."""
    from .strategies import Pipeline, RollingSummary, Truncate, VectorRecall

    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if budget is not None and budget <= 0:
        raise UsageError(f"--budget must be a positive number of tokens, got {budget}")
    truncate = Truncate(max_tokens=budget)
    if name == "truncate":
        return truncate
    if name == "summary":
        return Pipeline(RollingSummary(), truncate)
    if name == "recall":
        return Pipeline(VectorRecall(), truncate)
    return Pipeline(RollingSummary(), VectorRecall(), truncate)


@dataclass
class Settings:
    """What ``convmem chat`` was asked for."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    system: str | None = None
    strategy: str = DEFAULT_STRATEGY
    budget: int | None = None
    context_window: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    db: Path = field(default_factory=default_db)
    cid: str | None = None
    resume_last: bool = False


@contextmanager
def open_client(settings: Settings, out: TextIO) -> Iterator[tuple[Any, str, str]]:
    """The client, the model and a one-line description of where replies come from.

    With no API key (``--api-key`` or ``OPENAI_API_KEY``) and no ``--base-url``, the local
    llama.cpp model is started (and said so): the chat works offline on a fresh machine.
    """
    import openai

    key = settings.api_key or os.environ.get("OPENAI_API_KEY")
    base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL")
    if key or base_url:
        client = openai.OpenAI(api_key=key or "not-needed", base_url=base_url)
        model = settings.model or os.environ.get("CONVMEM_MODEL") or DEFAULT_MODEL
        yield client, model, base_url or "api.openai.com"
        return
    from .localserver import LocalModelServer

    print(
        "No API key and no --base-url: starting the local model "
        "(llama.cpp, SmolLM2-135M-Instruct, offline) ...",
        file=out,
        flush=True,
    )
    with LocalModelServer() as server:
        from .pricing import set_price

        set_price(server.model, 0, 0, 0)  # our own process on this machine: no bill
        yield server.client(), settings.model or server.model, f"local llama.cpp ({server.model})"


class Chat:
    """One interactive session: a conversation in a store, and the commands that act on it.

    Args:
        client: An ``openai.OpenAI`` client.
        store: A :mod:`convmem.stores` store the turns are saved in.
        settings: Model, strategy, budget, system prompt, ``-o`` options.
        model: The model to call.
        out: Where to write (the terminal).
        conversation_id: The conversation to continue; None starts a new one.
    """

    def __init__(
        self,
        client: Any,
        store: Any,
        settings: Settings,
        model: str,
        out: TextIO,
        conversation_id: str | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.model = model
        self.out = out
        self.color = (
            out.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ
        )
        self.strategy_name = settings.strategy
        self.conv = self._open(conversation_id or _new_id(), system=settings.system)

    # -- the conversation ---------------------------------------------------------------------
    def _open(self, cid: str, *, system: Any = None) -> Any:
        from .conversation import Conversation

        return Conversation(
            self.client,
            model=self.model,
            system=system,
            strategy=make_strategy(self.strategy_name, self.settings.budget),
            context_window=self.settings.context_window,
            store=self.store,
            conversation_id=cid,
        )

    def _switch(self, cid: str, *, system: Any = None) -> None:
        old = self.conv
        self.conv = self._open(cid, system=system)
        with suppress(Exception):
            old.close()

    @property
    def cid(self) -> str:
        return str(self.conv.conversation_id)

    # -- the loop -----------------------------------------------------------------------------
    def run(self, read: Callable[[str], str] = input) -> int:
        """Reads and answers messages until Ctrl-D or ``/exit``."""
        self.say(
            f"convmem chat · {self.model} · strategy {self.strategy_name} · conversation "
            f"{self.cid} ({len(self.conv.turns)} turns) · /help for commands, Ctrl-D to leave"
        )
        while True:
            try:
                line = read("> ")
            except EOFError:
                self.say("")
                return 0
            except KeyboardInterrupt:
                self.say("^C (Ctrl-D or /exit to leave)")
                continue
            text = line.strip()
            if not text:
                continue
            try:
                if text.startswith("/") and not text.startswith("//"):
                    if self.command(text, read) == "exit":
                        return 0
                else:
                    self.send(text.removeprefix("/"))
            except KeyboardInterrupt:
                self.say("^C")
            except (ConvmemError, OSError) as exc:
                self.say(f"error: {exc}")
            except Exception as exc:
                if not type(exc).__module__.startswith("openai"):
                    raise
                self.say(f"error: {type(exc).__name__}: {exc}")

    def send(self, text: Any) -> bool:
        """Streams the reply to ``text``. Ctrl-C stops it and saves nothing.

        Returns:
            Whether the turn was committed.
        """
        from .events import ReasoningDelta, StreamEnd, TextDelta

        events = self.conv.stream(text, **self.settings.options)
        thinking = False
        try:
            for event in events:
                if isinstance(event, ReasoningDelta):
                    if not thinking:
                        self.write(self.dim("[thinking] "))
                        thinking = True
                    self.write(self.dim(event.text))
                elif isinstance(event, TextDelta):
                    if thinking:
                        self.write("\n")
                        thinking = False
                    self.write(event.text)
                elif isinstance(event, StreamEnd):
                    self.write("\n")
                    self.say(self.dim(self._status(event)))
                    return True
        except KeyboardInterrupt:
            self.write("\n")
            self.say(self.dim("[stopped: nothing was saved]"))
            return False
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        return False

    def _status(self, end: Any) -> str:
        from .pricing import cost

        usage = end.completion.usage
        parts = [f"{end.latency:.1f} s"]
        if usage is not None:
            parts.insert(0, f"{usage.prompt_tokens} prompt + {usage.completion_tokens} tokens")
            details = getattr(usage, "prompt_tokens_details", None)
            cached = int(getattr(details, "cached_tokens", 0) or 0)
            price = cost(self.model, usage.prompt_tokens, usage.completion_tokens, cached)
            if price is not None:
                parts.append(f"${price:.5f}")
        return "[" + " · ".join(parts) + "]"

    # -- commands -----------------------------------------------------------------------------
    def command(self, text: str, read: Callable[[str], str]) -> str | None:
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        handler = _COMMANDS.get(name)
        if handler is None:
            self.say(f"unknown command {name}; /help lists them")
            return None
        return handler(self, arg, read)

    def cmd_help(self, arg: str, read: Callable[[str], str]) -> None:
        self.say(HELP)

    def cmd_exit(self, arg: str, read: Callable[[str], str]) -> str:
        return "exit"

    def cmd_plan(self, arg: str, read: Callable[[str], str]) -> None:
        plan = self.conv.last_plan
        self.say(str(plan) if plan is not None else "no call yet in this session")

    def cmd_usage(self, arg: str, read: Callable[[str], str]) -> None:
        self.say(usage_text(self.conv.usage, self.model))

    def cmd_history(self, arg: str, read: Callable[[str], str]) -> None:
        if not self.conv.turns:
            self.say("(no turns yet)")
        for turn in self.conv.turns:
            for message in turn.messages:
                self.say(f"[{turn.id}] {message.get('role')}: {preview(message, 200)}")

    def cmd_search(self, arg: str, read: Callable[[str], str]) -> None:
        if not arg:
            self.say("usage: /search WORDS")
            return
        hits = self.store.search(arg)
        if not hits:
            self.say("no match")
        for hit in hits[:20]:
            self.say(f"{hit.conversation_id} [{hit.turn_id}] {hit.role}: {shorten(hit.text, 100)}")

    def cmd_undo(self, arg: str, read: Callable[[str], str]) -> None:
        turns = self.conv.turns
        if not turns:
            self.say("nothing to undo")
            return
        self._fork_before_last()
        self.say(f"undone: now in conversation {self.cid} ({len(self.conv.turns)} turns)")

    def cmd_retry(self, arg: str, read: Callable[[str], str]) -> None:
        turns = self.conv.turns
        if not turns:
            self.say("nothing to retry")
            return
        message = dict(turns[-1].messages[0])
        self._fork_before_last()
        self.say(f"retrying in conversation {self.cid}: {preview(message, 60)}")
        self.send(message)

    def _fork_before_last(self) -> None:
        turns = self.conv.turns
        system = self.conv.system
        if len(turns) > 1:
            new = self.store.fork(self.cid, at_turn=turns[-2].id)
            self._switch(new)
        else:
            self._switch(_new_id(), system=system)

    def cmd_fork(self, arg: str, read: Callable[[str], str]) -> None:
        old = self.cid
        if self.conv.turns:
            self._switch(self.store.fork(old, new_id=arg or None))
        else:
            self._switch(arg or _new_id(), system=self.conv.system)
        self.say(f"forked {old} -> {self.cid}")

    def cmd_clear(self, arg: str, read: Callable[[str], str]) -> None:
        self._switch(_new_id(), system=self.conv.system)
        self.say(f"new conversation {self.cid}")

    def cmd_system(self, arg: str, read: Callable[[str], str]) -> None:
        if not arg:
            system = self.conv.system
            self.say(f"system: {system.get('content') if system else '(none)'}")
            return
        self._switch(self.cid, system=arg)  # the store keeps the new prompt for this id
        self.say("system prompt set")

    def cmd_model(self, arg: str, read: Callable[[str], str]) -> None:
        if not arg:
            self.say(f"model: {self.model}")
            return
        previous = self.model
        self.model = arg
        try:
            self._switch(self.cid)
        except ConvmemError:
            self.model = previous
            raise
        self.say(f"model: {self.model}")

    def cmd_strategy(self, arg: str, read: Callable[[str], str]) -> None:
        if not arg:
            self.say(f"strategy: {self.strategy_name} (choose from {', '.join(STRATEGIES)})")
            return
        make_strategy(arg, self.settings.budget)  # a bad name fails before anything changes
        self.strategy_name = arg
        self._switch(self.cid)
        self.say(f"strategy: {arg}")

    def cmd_save(self, arg: str, read: Callable[[str], str]) -> None:
        if not arg:
            self.say("usage: /save FILE")
            return
        write_atomic(Path(arg).expanduser(), self.conv.to_json(indent=2))
        self.say(f"saved {len(self.conv.turns)} turns to {arg}")

    def cmd_multi(self, arg: str, read: Callable[[str], str]) -> None:
        lines: list[str] = []
        while True:
            line = read("... ")
            if line.strip() == "/end":
                break
            lines.append(line)
        if any(line.strip() for line in lines):
            self.send("\n".join(lines))

    # -- output -------------------------------------------------------------------------------
    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def say(self, text: str) -> None:
        self.write(text + "\n")

    def dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self.color else text


_COMMANDS: dict[str, Callable[[Chat, str, Callable[[str], str]], str | None]] = {
    "/help": Chat.cmd_help,
    "/exit": Chat.cmd_exit,
    "/quit": Chat.cmd_exit,
    "/plan": Chat.cmd_plan,
    "/usage": Chat.cmd_usage,
    "/history": Chat.cmd_history,
    "/search": Chat.cmd_search,
    "/undo": Chat.cmd_undo,
    "/retry": Chat.cmd_retry,
    "/fork": Chat.cmd_fork,
    "/clear": Chat.cmd_clear,
    "/system": Chat.cmd_system,
    "/model": Chat.cmd_model,
    "/strategy": Chat.cmd_strategy,
    "/save": Chat.cmd_save,
    "/multi": Chat.cmd_multi,
}


def usage_text(usage: Any, model: str) -> str:
    """``/usage``: the conversation's tokens and cost, the summariser's apart."""
    from .pricing import cost

    lines = [
        f"calls:      {usage.calls} ({usage.prompt_tokens} prompt, {usage.cached_tokens} of them "
        f"cached, {usage.completion_tokens} completion tokens)",
        f"summariser: {usage.summary_calls} calls ({usage.summary_prompt_tokens} prompt, "
        f"{usage.summary_completion_tokens} completion tokens)",
    ]
    total = getattr(usage, "cost", None)
    summary = getattr(usage, "summary_cost", None)
    if total is None and not hasattr(usage, "cost"):
        # A Usage without its own cost: price its totals at this model's rates.
        calls = cost(model, usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        summary = cost(model, usage.summary_prompt_tokens, usage.summary_completion_tokens)
        total = None if calls is None or summary is None else calls + summary
    if total is None:
        lines.append(f"cost:       unknown (no price for {model}; see convmem.pricing)")
    else:
        apart = f" (summariser ${summary:.5f})" if summary is not None else ""
        lines.append(f"cost:       ${total:.5f}{apart}")
    return "\n".join(lines)


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


@contextmanager
def _line_history(path: Path) -> Iterator[None]:
    """Readline line editing, with the lines typed kept across sessions in ``path``."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input()
        yield
        return
    with suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(1000)
    try:
        yield
    finally:
        with suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def run_chat(settings: Settings, out: TextIO | None = None) -> int:
    """``convmem chat``: the REPL until Ctrl-D or ``/exit``."""
    out = out or sys.stdout
    store = open_store(settings.db)
    with ExitStack() as stack:
        stack.callback(store.close)
        cid = settings.cid
        if settings.resume_last:
            latest = store.list(limit=1)
            if not latest:
                raise UsageError(f"-c: no saved conversation in {settings.db}")
            cid = latest[0].id
        if cid is not None and settings.cid is not None and store.head(cid) is None:
            print(f"new conversation {cid}", file=out)
        client, model, where = stack.enter_context(open_client(settings, out))
        if cid is not None and settings.model is None:
            saved = store.load(cid)
            if saved is not None and saved.model:
                model = saved.model
        print(f"replies from {where}; saving to {settings.db}", file=out)
        chat = Chat(client, store, settings, model, out, conversation_id=cid)
        stack.callback(chat.conv.close)
        stack.enter_context(_line_history(data_home() / "chat_history"))
        if sys.stdin.isatty() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # Started with SIGINT ignored (from a background job or nohup), Python installs no
            # KeyboardInterrupt handler, and Ctrl-C could not stop a reply on this terminal.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return chat.run()
    return 0  # pragma: no cover - ExitStack does not swallow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``convmem chat`` options."""
    parser.add_argument(
        "-m", "--model", help=f"model name (default {DEFAULT_MODEL}, or the local one)"
    )
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (else $OPENAI_BASE_URL)")
    parser.add_argument("--api-key", help="API key (else $OPENAI_API_KEY)")
    parser.add_argument("-s", "--system", help="system prompt of a new conversation")
    parser.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY)
    parser.add_argument("--budget", type=int, help="most prompt tokens a call may send")
    parser.add_argument("--context-window", type=int, help="the model's window, if not known")
    parser.add_argument(
        "-o",
        "--option",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a create() argument, e.g. -o temperature 0.2 (JSON values)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-c",
        "--continue",
        dest="resume_last",
        action="store_true",
        help="continue the most recent conversation",
    )
    group.add_argument("--cid", help="continue (or start) the conversation with this id")
    parser.add_argument("--db", type=Path, help=f"the SQLite store (default {default_db()})")


def settings_from(args: argparse.Namespace) -> Settings:
    options = dict(parse_option(k, v) for k, v in args.option)
    make_strategy(args.strategy, args.budget)  # a bad budget fails before any model starts
    return Settings(
        model=args.model,
        base_url=args.base_url,
        api_key=args.api_key,
        system=args.system,
        strategy=args.strategy,
        budget=args.budget,
        context_window=args.context_window,
        options=options,
        db=args.db or default_db(),
        cid=args.cid,
        resume_last=args.resume_last,
    )
