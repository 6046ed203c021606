"""How far convmem's token estimate is from the server's own count, before and after calibration.

Runs the real llama.cpp server (convmem.localserver, SmolLM2-135M) and, for three kinds of
conversation (English chat, Chinese chat, Python code), compares the prompt tokens the server
counts (its chat template applied with ``/apply-template``, then ``/tokenize``) with:

- **before**: what convmem estimated before this work on a first call: plain tiktoken
  (``cl100k_base``), no correction;
- **family default**: the per-family default counter for the model name (SmolLM2's CJK rate),
  no server contact;
- **after**: what a conversation now uses at its first call: the counter built from the
  server's tokenizer (``/tokenize`` on two probe texts) and the correction learnt from its first
  prompt (system and first message) counted on the server; the whole conversation is measured.

Usage::

    python benchmarks/bench_token_estimates.py [--data PATH_TO_LOCOMO_JSON]

The English conversation is taken from LoCoMo when ``--data`` is given (read by path, never
copied), else from a built-in chat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from convmem import providers
from convmem.localserver import LocalModelServer
from convmem.tokens import TiktokenCounter, TokenCounter, UsageCalibrator, default_counter

CHINESE = [
    "我叫小明，住在杭州西湖区，每天早上七点起床，先喝一杯热水再出门跑步。",
    "我的猫叫米索，是一只橘猫，今年三岁了，最喜欢在阳台上晒太阳睡觉。",
    "我在一家医院做护士，上班时间是早上八点半到下午五点，周三值夜班。",
    "我姐姐安娜住在北京朝阳区，她是一名小学老师，教三年级的数学课。",
    "上周末我们全家去了千岛湖，坐船游湖，还吃了当地有名的鱼头汤。",
    "我正在学习弹钢琴，老师说我的左手还不够灵活，需要每天多练半小时。",
]
ENGLISH = [
    "Hey! I finally finished the garden shed this weekend, it took three Saturdays.",
    "That's great news. Did you end up using the cedar planks or the pine ones?",
    "Cedar, in the end. It costs more but it won't rot, and it smells wonderful.",
    "Smart choice. Are you going to paint it or leave the wood natural?",
    "Natural for now. My daughter wants to paint flowers on the door though.",
    "Ha, that sounds lovely. Send me a picture when it's done!",
]


def _code_messages() -> list[dict[str, str]]:
    source = (Path(__file__).parent.parent / "convmem" / "strategy.py").read_text()
    chunks = [source[i : i + 900] for i in range(0, 5400, 900)]
    out = []
    for i, chunk in enumerate(chunks):
        role = "user" if i % 2 == 0 else "assistant"
        out.append({"role": role, "content": f"```python\n{chunk}\n```"})
    return out


def _chat(lines: list[str], repeat: int = 4) -> list[dict[str, str]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": line}
        for i, line in enumerate(lines * repeat)
    ]


def _locomo(path: str, n: int = 24) -> list[dict[str, str]]:
    data = json.loads(Path(path).read_text())
    session = data[0]["conversation"]["session_1"][:n]
    speaker_a = data[0]["conversation"]["speaker_a"]
    return [
        {"role": "user" if t["speaker"] == speaker_a else "assistant", "content": t["text"]}
        for t in session
    ]


def _estimate(counter: TokenCounter, messages: list[dict[str, str]]) -> int:
    return sum(counter.count_message(m) for m in messages) + counter.reply_priming


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="LoCoMo JSON for the English conversation")
    args = parser.parse_args(argv)
    system = {"role": "system", "content": "You are a helpful assistant."}
    cases = {
        "English chat": [system, *(_locomo(args.data) if args.data else _chat(ENGLISH))],
        "Chinese chat": [system, *_chat(CHINESE)],
        "Python code": [system, *_code_messages()],
    }
    model = "smollm2-135m"
    with LocalModelServer() as server:
        client = server.client()
        providers.forget_servers()
        info = providers.discover(client, model)
        assert info.tokenizer is not None, "the server's tokenize endpoint did not answer"
        from convmem.tokens.families import FamilyCounter

        after = FamilyCounter(
            model,
            cjk_per_char=info.tokenizer.cjk_per_char,
            latin_ratio=info.tokenizer.latin_ratio,
            source="server",
        )
        before = TiktokenCounter(encoding="cl100k_base")
        family = default_counter(model)
        print(
            f"server: llama.cpp, {info.window}; tokenizer vs cl100k: "
            f"{info.tokenizer.latin_ratio:.2f}x on Latin text, "
            f"{info.tokenizer.cjk_per_char:.2f} tokens per CJK character"
        )
        print(
            f"{'conversation':<14} {'server':>7} {'before':>14} {'family default':>16} "
            f"{'after':>14}"
        )
        rows: list[dict[str, Any]] = []
        for name, messages in cases.items():
            truth = providers.count_prompt(client, model, messages)
            assert truth is not None
            # What a conversation does before its first call: the first prompt (system and
            # first message) counted on the server calibrates the estimate.
            calibrator = UsageCalibrator()
            first = messages[:2]
            counted = providers.count_prompt(client, model, first)
            assert counted is not None
            calibrator.observe(model, _estimate(after, first), counted)
            est_before = _estimate(before, messages)
            est_family = _estimate(family, messages)
            est_after = calibrator.corrected(model, _estimate(after, messages))

            def cell(est: int, truth: int = truth) -> str:
                return f"{est:>6} ({100 * (est - truth) / truth:+5.1f}%)"

            print(
                f"{name:<14} {truth:>7} {cell(est_before):>14} {cell(est_family):>16} "
                f"{cell(est_after):>14}"
            )
            rows.append(
                {
                    "case": name,
                    "server": truth,
                    "before": est_before,
                    "family": est_family,
                    "after": est_after,
                }
            )
    json.dump(rows, sys.stderr)
    print(file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
