"""``convmem chat`` in a real pseudo-terminal, and ``convmem conversations``.

The chat runs as a user runs it, ``python -m convmem chat`` under ``pexpect``, against a loopback
OpenAI-compatible server (tests/_chat_server.py) and, in one test, the local llama.cpp model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from _chat_server import ChatServer

from convmem.chat import Settings, make_strategy, parse_option
from convmem.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "\r\n> "


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["CONVMEM_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TERM"] = "dumb"
    return env


def _spawn(server: ChatServer, home: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "convmem", "chat", "--base-url", server.base_url, "--api-key", "test", *args],
        env=_env(home),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    child.expect("> ")
    return child


def _say(child: pexpect.spawn, text: str, expect: str) -> str:
    child.sendline(text)
    child.expect(expect)
    seen = str(child.before) + str(child.after)
    child.expect("> ")
    return seen + str(child.before)


def _quit(child: pexpect.spawn) -> None:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def _conversations(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convmem", "conversations", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_streams_saves_and_resumes_in_a_new_process(server: ChatServer, home: Path) -> None:
    child = _spawn(server, home, "-s", "Be brief.")
    _say(child, "hello there", "You said: hello there")
    _say(child, "second message", "You said: second message")
    _quit(child)
    # The last request carried the first turn: memory, not a fresh chat.
    roles = [m["role"] for m in server.requests[-1]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]

    child = _spawn(server, home, "-c")
    out = _say(child, "/history", "second message")
    assert "hello there" in out
    _say(child, "third", "You said: third")
    _quit(child)
    assert len(server.requests[-1]["messages"]) == 6  # system, two turns, the new message

    listed = _conversations(home, "list")
    assert listed.returncode == 0, listed.stderr
    assert "\t3\t" in listed.stdout and "hello there" in listed.stdout


def test_ctrl_c_stops_the_reply_commits_nothing_and_the_chat_goes_on(
    server: ChatServer, home: Path
) -> None:
    child = _spawn(server, home)
    _say(child, "first", "You said: first")
    child.sendline("slow please")
    child.expect("word word")
    child.sendintr()
    child.expect(r"\[stopped: nothing was saved\]")
    child.expect("> ")
    out = _say(child, "/history", r"\[0\] assistant")
    assert "slow please" not in out
    _say(child, "after the interrupt", "You said: after the interrupt")
    # Ctrl-C at the prompt clears the line; the chat is still there.
    child.sendintr()
    child.expect("Ctrl-D or /exit to leave")
    _say(child, "still here", "You said: still here")
    last = server.requests[-1]["messages"]
    assert [m.get("content") for m in last if m["role"] == "user"] == [
        "first",
        "after the interrupt",
        "still here",
    ]
    _quit(child)


def test_every_slash_command(server: ChatServer, home: Path, tmp_path: Path) -> None:
    child = _spawn(server, home, "--strategy", "truncate", "-o", "temperature", "0.3")
    assert "/plan" in _say(child, "/help", "/multi")
    _say(child, "one", "You said: one")
    assert server.requests[-1]["temperature"] == 0.3
    _say(child, "two", "You said: two")
    assert "recent" in _say(child, "/plan", "ContextPlan")
    assert "summariser: 0 calls" in _say(child, "/usage", "calls:")
    assert "[1] user: two" in _say(child, "/history", "two")
    assert "one" in _say(child, "/search one", "one")
    out = _say(child, "/undo", "undone: now in conversation")
    assert "(1 turns)" in out
    assert "two" not in _say(child, "/history", r"\[0\] assistant")
    _say(child, "/retry", "You said: one")
    assert "[0] user: one" in _say(child, "/history", r"\[0\] assistant")
    _say(child, "/fork", "forked ")
    _say(child, "/system You are a pirate.", "system prompt set")
    _say(child, "arr", "You said: arr")
    assert server.requests[-1]["messages"][0] == {"role": "system", "content": "You are a pirate."}
    _say(child, "/model gpt-4o", "model: gpt-4o")
    _say(child, "next", "You said: next")
    assert server.requests[-1]["model"] == "gpt-4o"
    _say(child, "/strategy nonsense", "unknown strategy")
    _say(child, "/strategy truncate", "strategy: truncate")
    saved = tmp_path / "out.json"
    _say(child, f"/save {saved}", "saved")
    data = json.loads(saved.read_text())
    assert data["model"] == "gpt-4o"
    child.sendline("/multi")
    child.expect(r"\.\.\. ")
    child.sendline("line one")
    child.expect(r"\.\.\. ")
    child.sendline("line two")
    child.expect(r"\.\.\. ")
    child.sendline("/end")
    child.expect("You said: line one")
    child.expect("> ")
    assert server.requests[-1]["messages"][-1]["content"] == "line one\nline two"
    _say(child, "/clear", "new conversation")
    assert len(_say(child, "/history", r"\(no turns yet\)")) > 0
    _say(child, "/nope", "unknown command")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_conversations_command(server: ChatServer, home: Path) -> None:
    child = _spawn(server, home, "--cid", "trip-1")
    _say(child, "I like green tea", "You said: I like green tea")
    _quit(child)
    shown = _conversations(home, "show", "trip-1")
    assert shown.returncode == 0 and "green tea" in shown.stdout
    found = _conversations(home, "search", "tea")
    assert found.returncode == 0 and found.stdout.startswith("trip-1\t[0]\t")
    exported = json.loads(_conversations(home, "export", "trip-1").stdout)
    assert exported["conversation_id"] == "trip-1"
    assert _conversations(home, "delete", "trip-1").returncode == 0
    missing = _conversations(home, "show", "trip-1")
    assert missing.returncode == 2 and "no conversation 'trip-1'" in missing.stderr


def test_bad_arguments_fail_before_any_model_starts(home: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "convmem", "chat", "--budget", "-5"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--budget must be a positive number" in done.stderr
    assert "starting the local model" not in done.stdout


def test_options_and_strategies() -> None:
    assert parse_option("temperature", "0.2") == ("temperature", 0.2)
    assert parse_option("stop", "END") == ("stop", "END")
    assert parse_option("extra_body", '{"enable_thinking": true}') == (
        "extra_body",
        {"enable_thinking": True},
    )
    with pytest.raises(UsageError, match="argument name"):
        parse_option("bad key", "1")
    with pytest.raises(UsageError, match="unknown strategy"):
        make_strategy("magic", None)
    assert type(make_strategy("truncate", 500)).__name__ == "Truncate"
    assert Settings().strategy == "summary"


@pytest.mark.llama
def test_chat_on_the_local_model_with_no_key(home: Path) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "convmem", "chat", "-o", "max_tokens", "16"],
        env=_env(home),
        encoding="utf-8",
        timeout=180,
    )
    child.expect("starting the local model")
    child.expect("> ")
    child.sendline("Say hello.")
    child.expect(r"\[\d+ prompt \+ \d+ tokens")
    child.expect("> ")
    _quit(child)
