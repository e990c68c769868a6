"""Judges: python functions, an LLM behind a fake OpenAI-compatible server on 127.0.0.1 (never a real
endpoint), and the preference file every judgement lands in."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lorahf.data import load_rows
from lorahf.errors import LorahfError
from lorahf.judge import (LLMJudge, PreferenceFile, PythonPairwiseJudge, PythonScoreJudge, parse_verdict,
                          python_judge)
from lorahf.recipe import LLMJudgeSpec

from tests.conftest import EXAMPLE_DATA


# ------------------------------------------------------------------------------------------- python
def test_python_judges_score_or_compare_by_their_arity(tmp_path):
    module = tmp_path / "judges.py"
    module.write_text("def length(prompt, response):\n    return len(response)\n\n"
                      "def shorter(prompt, a, b):\n    return 'a' if len(a) < len(b) else 'b' if len(b) < len(a) else 'tie'\n"
                      "\ndef bad(prompt, response):\n    return 'great'\n")
    scorer = python_judge("length", f"{module}:length")
    assert isinstance(scorer, PythonScoreJudge)
    assert [j.outcome for j in scorer.compare(["p", "p"], ["long answer", "x"], ["short", "x"])] == ["a", "tie"]
    pairwise = python_judge("shorter", f"{module}:shorter")
    assert isinstance(pairwise, PythonPairwiseJudge)
    assert [j.outcome for j in pairwise.compare(["p"], ["long answer"], ["short"])] == ["b"]
    with pytest.raises(LorahfError, match="returned 'great' for item 0"):
        python_judge("bad", f"{module}:bad").score(["p"], ["r"])
    with pytest.raises(LorahfError, match="no function missing"):
        python_judge("x", f"{module}:missing")


def test_parse_verdict():
    assert parse_verdict("A") == "a"
    assert parse_verdict("Response B is better.") == "b"
    assert parse_verdict("tie") == "tie"
    assert parse_verdict("I cannot decide") is None
    assert parse_verdict("") is None


# ---------------------------------------------------------------------------------- a fake endpoint
class FakeChat(BaseHTTPRequestHandler):
    """POST /v1/chat/completions. Prefers the response with the word 'good'; 'SLOW' in the prompt sleeps past
    the client's timeout, 'GARBAGE' gets a reply with no verdict; `always_a` answers A whatever it is shown."""

    always_a = False
    calls: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        FakeChat.calls.append(text)
        if "SLOW" in text:
            time.sleep(1.5)
        if "GARBAGE" in text:
            reply = "I would rather not say."
        elif FakeChat.always_a:
            reply = "A"
        else:
            first = text.split("Response A:")[1].split("Response B:")[0]
            reply = "A" if "good" in first else "B"
        payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    FakeChat.calls, FakeChat.always_a = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _llm(endpoint, **settings) -> LLMJudge:
    spec = LLMJudgeSpec(base_url=endpoint, model="fake", api_key_env=None, timeout=0.5, max_retries=0, **settings)
    return LLMJudge("llm", spec, seed=0)


def test_llm_judge_asks_both_ways_and_keeps_agreeing_verdicts(endpoint):
    verdicts = _llm(endpoint).compare(["p1", "p2"], ["a good summary", "meh"], ["meh", "a good one"])
    assert [v.outcome for v in verdicts] == ["a", "b"]
    assert len(FakeChat.calls) == 4  # both orders of both items
    FakeChat.always_a = True  # a judge that only ever says "A" has pure position bias: every item is a tie
    assert [v.outcome for v in _llm(endpoint).compare(["p"], ["x"], ["y"])] == ["tie"]


def test_llm_judge_random_order_is_recorded_and_undone(endpoint):
    verdicts = _llm(endpoint, position_bias="random").compare(["p"] * 8, ["good"] * 8, ["bad"] * 8)
    assert [v.outcome for v in verdicts] == ["a"] * 8
    assert {v.note for v in verdicts} == {"shown a first", "shown b first"}  # both orders were drawn
    assert len(FakeChat.calls) == 8


def test_llm_judge_gives_no_verdict_on_a_timeout_or_a_malformed_reply(endpoint):
    verdicts = _llm(endpoint).compare(["SLOW", "GARBAGE", "fine"], ["good", "good", "good"], ["bad", "bad", "bad"])
    assert verdicts[0] is None and verdicts[1] is None and verdicts[2].outcome == "a"


def test_llm_judge_needs_its_key(monkeypatch, endpoint):
    monkeypatch.delenv("LORAHF_TEST_KEY", raising=False)
    spec = LLMJudgeSpec(base_url=endpoint, model="fake", api_key_env="LORAHF_TEST_KEY")
    with pytest.raises(LorahfError, match="LORAHF_TEST_KEY is not set"):
        LLMJudge("llm", spec)


def test_llm_template_must_name_its_fields():
    with pytest.raises(ValueError, match=r"\{b\}"):
        LLMJudgeSpec(base_url="http://127.0.0.1:1/v1", model="m", template="{prompt} {a}")


# -------------------------------------------------------------------------------- preference files
def test_preference_file_appends_resumes_undoes_and_reads_as_reward_data(tmp_path):
    from lorahf.judge import Judgement

    path = tmp_path / "round2.jsonl"
    out = PreferenceFile(path)
    items = [{"prompt": f"p{i}", "a": f"a{i}", "b": f"b{i}", "a_by": "sft", "b_by": "policy"} for i in range(3)]
    out.append(items[0], Judgement("b"), "human")
    out.append(items[1], Judgement("tie"), "human")
    out.append(items[2], Judgement("a"), "human")
    assert out.undo() and not out.has(items[2])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {"prompt": "p0", "chosen": "b0", "rejected": "a0", "tie": False, "judge": "human",
                       "chosen_by": "policy", "rejected_by": "sft"}
    assert rows[1]["tie"] is True and len(rows) == 2
    resumed = PreferenceFile(path)
    assert resumed.has(items[0]) and resumed.has(items[1]) and not resumed.has(items[2])
    assert not resumed.undo()  # nothing appended in this session

    # Round 2: the user's own preferences (their column names) and the judged file, under one `columns:`
    columns = {"prompt": "document", "chosen": "better", "rejected": "worse"}
    both = load_rows([str(EXAMPLE_DATA / "preferences.jsonl"), str(path)], "preference", columns)
    original = load_rows([str(EXAMPLE_DATA / "preferences.jsonl")], "preference", columns)
    assert len(both) == len(original) + 1  # the tie is not a preference
    assert both[-1] == {"prompt": "p0", "chosen": "b0", "rejected": "a0"}


def test_a_broken_preference_file_is_named(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n')
    with pytest.raises(LorahfError, match="line 2 is not a preference row"):
        PreferenceFile(path)
