"""A hypothesis state machine: random appends, tool calls, summaries, forks, resumes and deletes
against an in-memory model. The store must always read back exactly the model, and never a tool
call without its reply (except in the head turn, while its replies are awaited).
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from convmem.errors import ConflictError
from convmem.history import Summary
from convmem.messages import open_tool_call_ids
from convmem.stores import Head

_ids = itertools.count()


def _user(n: int) -> dict[str, Any]:
    return {"role": "user", "content": f"question {n}"}


def _call(cid: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": cid, "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }


class StoreMachine(RuleBasedStateMachine):
    spec: Any = None  # set per test: how to open the store under test

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"m{next(_ids)}-"
        self.store = self.spec.open()
        self.model: dict[str, dict[str, Any]] = {}
        self.n = 0

    def teardown(self) -> None:
        self.store.close()

    def _cid(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.model)))

    def _head(self, cid: str) -> Head:
        turns = self.model[cid]["turns"]
        return Head(len(turns) - 1, len(turns[-1])) if turns else Head()

    def _open(self, cid: str) -> bool:
        turns = self.model.get(cid, {}).get("turns")
        return bool(turns) and bool(open_tool_call_ids(turns[-1]))

    @rule(name=st.sampled_from(["a", "b"]), tool=st.booleans(), answer_now=st.booleans())
    def append_turn(self, name: str, tool: bool, answer_now: bool) -> None:
        cid = self.prefix + name
        if self._open(cid):
            return  # the head turn awaits tool replies; see answer()
        self.n += 1
        msgs = [_user(self.n)]
        if tool:
            msgs.append(_call(f"call{self.n}"))
            if answer_now:
                msgs += [
                    {"role": "tool", "tool_call_id": f"call{self.n}", "content": "42"},
                    {"role": "assistant", "content": f"answer {self.n}"},
                ]
        else:
            msgs.append({"role": "assistant", "content": f"answer {self.n}"})
        entry = self.model.setdefault(cid, {"turns": [], "summaries": []})
        commit = self.store.append(cid, msgs, expected_head=self._head(cid), on_conflict="raise")
        entry["turns"].append(msgs)
        assert commit.head == self._head(cid) and not commit.conflict

    @precondition(lambda self: any(self._open(c) for c in self.model))
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(sorted(c for c in self.model if self._open(c))))
        (call_id,) = open_tool_call_ids(self.model[cid]["turns"][-1])
        msgs = [
            {"role": "tool", "tool_call_id": call_id, "content": "done"},
            {"role": "assistant", "content": "answered"},
        ]
        self.store.append(cid, msgs, expected_head=self._head(cid), on_conflict="raise")
        self.model[cid]["turns"][-1] = self.model[cid]["turns"][-1] + msgs

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), back=st.integers(1, 3))
    def stale_write_is_refused(self, data: st.DataObject, back: int) -> None:
        cid = self._cid(data)
        head = self._head(cid)
        stale = Head(head.turn_id - back, 1)
        if self._open(cid) or head.turn_id < 0:
            return
        with pytest.raises(ConflictError):
            self.store.append(cid, [_user(0)], expected_head=stale, on_conflict="raise")

    @precondition(lambda self: any(self.model[c]["turns"] for c in self.model))
    @rule(data=st.data(), stale=st.booleans())
    def summarise(self, data: st.DataObject, stale: bool) -> None:
        cid = data.draw(st.sampled_from(sorted(c for c in self.model if self.model[c]["turns"])))
        entry = self.model[cid]
        through = data.draw(st.integers(0, len(entry["turns"]) - 1))
        covers = tuple(range(through + 1))
        seen = len(entry["summaries"]) - (1 if stale and entry["summaries"] else 0)
        ok = self.store.add_summary(
            cid,
            Summary(f"s{through}", covers),
            expected_summaries=seen,
            expected_head=self._head(cid),
        )
        assert ok == (seen == len(entry["summaries"]))
        if ok:
            entry["summaries"].append(covers)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        cid = self._cid(data)
        turns = self.model[cid]["turns"]
        at = data.draw(st.integers(-1, len(turns) - 1))
        new = self.store.fork(cid, at_turn=at, new_id=f"{self.prefix}f{next(_ids)}")
        self.model[new] = {
            "turns": [list(t) for t in turns[: at + 1]],
            "summaries": [c for c in self.model[cid]["summaries"] if max(c) <= at],
        }

    @rule()
    def resume(self) -> None:
        self.store.close()
        self.store = self.spec.open()

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        cid = self._cid(data)
        assert self.store.delete(cid)
        del self.model[cid]

    @invariant()
    def store_reads_back_the_model(self) -> None:
        for cid, entry in self.model.items():
            loaded = self.store.load(cid)
            assert loaded is not None
            got = [list(t.messages) for t in loaded.turns]
            assert got == entry["turns"]
            assert [t.id for t in loaded.turns] == list(range(len(got)))
            assert [s.covers for s in loaded.summaries] == entry["summaries"]
            for turn in loaded.turns[:-1]:
                assert not open_tool_call_ids(turn.messages)  # no orphaned tool call
        listed = {c.id for c in self.store.list() if c.id.startswith(self.prefix)}
        assert listed == set(self.model)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_store_against_a_model(kind: str, request: pytest.FixtureRequest) -> None:
    from _pg import StoreSpec, _pg_spec

    if kind == "sqlite":
        spec = StoreSpec("sqlite", str(Path(tempfile.mkdtemp()) / "model.db"))
    else:
        spec = _pg_spec(request.getfixturevalue("pg_server"))
    machine = type("Machine", (StoreMachine,), {"spec": spec})
    runner = machine.TestCase
    runner.settings = settings(
        max_examples=12 if kind == "sqlite" else 5,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    runner().runTest()
