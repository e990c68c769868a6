"""Labelling without a browser: which item each tab gets, the labels file, undo, restart, agreement, the items a run
folder gives, and the web server's token and answers (the page itself: test_label_page.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from rich.console import Console

from lorahf import cli
from lorahf.errors import LorahfError
from lorahf.label import Conflict, Item, Labels, items_from_run, prepare

RECIPE = """name: {name}
output_dir: {out}
model:
  name: models/none
stages: [sft]
sft:
  data:
    files: x.jsonl
"""


def items(n: int) -> list[Item]:
    return [Item(f"prompt {i}", f"answer a{i}", f"answer b{i}", "policy", "sft") for i in range(n)]


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_choices_are_rows_in_order_with_the_side_that_was_shown(tmp_path):
    path = tmp_path / "labels.jsonl"
    labels = Labels(items(6), path, "test pairs")
    chosen = []
    for choice in ("left", "right", "tie", "left"):
        shown = labels.next("ana", "tab1")
        labels.choose("ana", "tab1", shown["item"], choice)
        tie = shown["prompt"].replace("prompt ", "answer a")  # a tie keeps a's answer as chosen
        chosen.append({"left": shown["left"], "right": shown["right"], "tie": tie}[choice])
    written = rows(path)
    assert [r["chosen"] for r in written] == chosen  # what the person picked, whichever side it was on
    assert [r["prompt"] for r in written] == ["prompt 0", "prompt 1", "prompt 2", "prompt 3"]
    assert [r["tie"] for r in written] == [False, False, True, False]
    assert {r["chosen_by"] for r in written if not r["tie"]} <= {"policy", "sft"}
    assert all(r["annotator"] == "ana" and r["source"] == "test pairs" and r["time"] for r in written)
    # random sides: over 40 items each answer is on the left at times
    many = Labels(items(40), tmp_path / "other.jsonl")
    assert 5 < sum(many.next("ana", str(i))["left"].startswith("answer a") for i in range(40)) < 35


def test_two_tabs_and_two_annotators_never_share_an_item(tmp_path):
    labels = Labels(items(3), tmp_path / "l.jsonl")
    first, second = labels.next("ana", "tab1"), labels.next("ana", "tab2")
    third = labels.next("ben", "tab3")
    assert len({first["item"], second["item"], third["item"]}) == 3
    assert labels.next("ben", "tab4") is None  # every item is held
    assert labels.next("ana", "tab1") == first  # a reload gets its item back
    with pytest.raises(Conflict):
        labels.choose("ben", "tab3", first["item"], "left")  # held by another tab
    labels.release("tab1")
    assert labels.next("ben", "tab4")["item"] == first["item"]


def test_a_lease_runs_out(tmp_path):
    now = [0.0]
    labels = Labels(items(1), tmp_path / "l.jsonl", lease_s=10, clock=lambda: now[0])
    held = labels.next("ana", "tab1")
    assert labels.next("ben", "tab2") is None
    now[0] = 11
    assert labels.next("ben", "tab2")["item"] == held["item"]


def test_undo_takes_the_annotators_last_choice_out_and_shows_it_again(tmp_path):
    path = tmp_path / "l.jsonl"
    labels = Labels(items(4), path)
    for who, tab in (("ana", "t1"), ("ben", "t2"), ("ana", "t1")):
        labels.choose(who, tab, labels.next(who, tab)["item"], "left")
    last_of_ana = rows(path)[2]
    shown = labels.undo("ana", "t1")
    assert shown["item"] == last_of_ana["item"]
    assert [r["annotator"] for r in rows(path)] == ["ana", "ben"]  # ben's choice after it stays
    assert labels.next("ana", "t1") == shown
    labels.choose("ana", "t1", shown["item"], "right")
    assert len(rows(path)) == 3 and labels.progress("ana")["mine"] == 2
    assert Labels(items(4), path).undo("carl", "t9") is None  # nothing of carl's to undo


def test_a_restart_goes_on_where_it_stopped(tmp_path):
    path = tmp_path / "l.jsonl"
    labels = Labels(items(5), path)
    for _ in range(2):
        labels.choose("ana", "t1", labels.next("ana", "t1")["item"], "left")
    again = Labels(items(5), path)
    assert again.progress("ana") | {"annotators": ["ana"]} == again.progress("ana")
    assert again.progress()["labelled"] == 2
    assert again.next("ana", "t7")["prompt"] == "prompt 2"
    assert again.undo("ana", "t7")["prompt"] == "prompt 1"  # undo reaches across the restart


def test_a_cut_last_line_is_dropped_and_a_bad_one_named(tmp_path):
    path = tmp_path / "l.jsonl"
    labels = Labels(items(3), path)
    labels.choose("ana", "t", labels.next("ana", "t")["item"], "left")
    path.write_text(path.read_text() + '{"prompt": "prompt 1", "cho')  # killed while writing
    assert Labels(items(3), path).progress()["labelled"] == 1
    assert path.read_text().endswith("}\n")
    path.write_text('not json\n' + path.read_text())
    with pytest.raises(LorahfError, match="line 1 is not a label row"):
        Labels(items(3), path)


def test_skip_passes_the_item_to_someone_else(tmp_path):
    labels = Labels(items(2), tmp_path / "l.jsonl")
    first = labels.next("ana", "t1")
    labels.skip("ana", "t1", first["item"])
    assert labels.next("ana", "t1")["item"] != first["item"]
    assert labels.next("ben", "t2")["item"] == first["item"]


def test_several_annotators_per_item_and_their_agreement(tmp_path):
    labels = Labels(items(2), tmp_path / "l.jsonl", per_item=2)
    for who in ("ana", "ben"):
        for _ in range(2):
            shown = labels.next(who, who)
            side = "left" if shown["left"].startswith("answer a") else "right"  # both prefer policy's answer...
            if who == "ben" and shown["prompt"] == "prompt 1":
                side = "tie"  # ...except ben on the second item
            labels.choose(who, who, shown["item"], side)
    assert labels.next("carl", "c") is None  # two labels each: done
    found = labels.progress("ana")
    assert (found["labelled"], found["total"], found["mine"], found["shared_items"]) == (4, 4, 2, 2)
    assert found["agreement"] == 0.5
    with pytest.raises(Conflict):
        labels.choose("ana", "x", items(2)[0].id, "left")  # ana labelled it already


def test_the_labels_file_is_preference_data_the_reward_stage_reads(tmp_path):
    from lorahf.data import load_rows

    path = tmp_path / "l.jsonl"
    labels = Labels(items(3), path)
    for choice in ("left", "tie", "right"):
        labels.choose("ana", "t", labels.next("ana", "t")["item"], choice)
    loaded = load_rows([str(path)], "preference")
    assert len(loaded) == 2 and set(loaded.column_names) == {"prompt", "chosen", "rejected"}  # the tie left out


def write_run(root, name="run", evaluate=None, sft=None):
    run = root / name
    (run / "samples").mkdir(parents=True)
    (run / "recipe.yaml").write_text(RECIPE.format(name=name, out=root))
    for stage, found in (("evaluate", evaluate), ("sft", sft)):
        if found is not None:
            (run / "samples" / f"{stage}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in found))
    return run


def test_items_from_evaluate_sft_samples_or_a_one_line_refusal(tmp_path):
    run = write_run(tmp_path, evaluate=[
        {"prompt": "p1", "reference": "r1", "sft": "same", "policy": "same", "reward.sft": 0.1, "reward.policy": 0.1},
        {"prompt": "p2", "reference": "r2", "sft": "s2", "policy": "p2 answer", "reward.sft": 0.1,
         "reward.policy": 0.3}])
    found, source = items_from_run(run)
    assert [(i.prompt, i.a_by, i.b_by, i.a, i.b) for i in found] == [("p2", "policy", "sft", "p2 answer", "s2")]
    assert source == "evaluate.jsonl: policy vs sft"
    assert [i.b for i in items_from_run(run, "sft", "reference")[0]] == ["r1", "r2"]
    with pytest.raises(LorahfError, match="cannot compare policy with dpo"):
        items_from_run(run, "policy", "dpo")

    only_sft = write_run(tmp_path, "only-sft", evaluate=[{"prompt": "p", "reference": "r", "sft": "s"}])
    assert [(i.a_by, i.b_by) for i in items_from_run(only_sft)[0]] == [("sft", "reference")]
    samples = write_run(tmp_path, "sft-samples", sft=[{"prompt": "p", "response": "s", "reference": "r"}])
    assert [(i.a, i.b) for i in items_from_run(samples)[0]] == [("s", "r")]
    alike = write_run(tmp_path, "alike", evaluate=[{"prompt": "p", "sft": "x", "policy": "x"}])
    with pytest.raises(LorahfError, match="answered every prompt alike"):
        items_from_run(alike)

    empty = write_run(tmp_path, "empty")
    result = label_command(str(empty), "--no-open")
    assert result.exit_code == 1
    assert result.output.splitlines()[0] == f"error: {empty}: no answers to label (no samples/evaluate.jsonl or " \
                                            "samples/sft.jsonl)"
    assert "Traceback" not in result.output


def test_prepare_names_the_labels_file_inside_the_run(tmp_path):
    run = write_run(tmp_path, evaluate=[{"prompt": "p", "sft": "a", "policy": "b"}])
    assert prepare(run).path == run / "labels" / "policy-vs-sft.jsonl"
    for bad in ("../outside", "a/b", ".hidden", "x.items"):
        with pytest.raises(LorahfError, match="--name"):
            prepare(run, name=bad)


def label_command(*args):
    cli.console, cli.errors = Console(width=200, color_system=None), Console(stderr=True, width=200, color_system=None)
    return CliRunner().invoke(cli.main, ["label", *args])


# ------------------------------------------------------------------------------------------ the server
@pytest.fixture
def server(tmp_path):
    from lorahf.web import Server

    started = Server(tmp_path, Labels(items(3), tmp_path / "labels" / "l.jsonl", "pairs")).start()
    yield started
    started.stop()


def ask(server, path, body=None, token=None, method=None):
    url = f"http://127.0.0.1:{server.port}/{path}"
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method)
    if token is not False:
        request.add_header("X-Lorahf-Token", token or server.token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_every_request_needs_the_token(server):
    for path in ("", "static/label.js", "api/next?annotator=a&tab=t", "report", "nothing/here"):
        assert ask(server, path, token=False)[0] == 403
        assert ask(server, path, token="wrong" + server.token)[0] == 403
    status, page, headers = ask(server, "")
    assert status == 200 and "lorahf" in page
    assert "script-src 'self'" in headers["content-security-policy"] and headers["referrer-policy"] == "no-referrer"
    assert ask(server, f"?token={server.token}", token=False)[0] == 200  # the printed address carries it
    assert ask(server, "static/..%2F__init__.py")[0] == 404
    assert server.address.startswith(f"http://127.0.0.1:{server.port}/?token=")


def test_the_api_labels_and_undoes(server, tmp_path):
    who = {"annotator": "ana", "tab": "t1"}
    status, body, _ = ask(server, "api/next?annotator=ana&tab=t1")
    shown = json.loads(body)
    assert status == 200 and shown["progress"]["total"] == 3 and shown["file"].endswith("labels/l.jsonl")
    status, body, _ = ask(server, "api/choose", {**who, "item": shown["item"]["item"], "choice": "left"})
    after = json.loads(body)
    assert status == 200 and after["progress"]["labelled"] == 1 and after["item"]["item"] != shown["item"]["item"]
    assert ask(server, "api/choose", {**who, "item": shown["item"]["item"], "choice": "left"})[0] == 409  # twice
    assert ask(server, "api/choose", {**who, "item": after["item"]["item"], "choice": "sideways"})[0] == 400
    assert ask(server, "api/choose", {"item": after["item"]["item"], "choice": "left"})[0] == 400  # nobody
    undone = json.loads(ask(server, "api/undo", who)[1])
    assert undone["item"]["item"] == shown["item"]["item"] and undone["progress"]["labelled"] == 0
    assert (tmp_path / "labels" / "l.jsonl").read_text() == ""


def test_without_the_web_extra_one_line_says_what_to_install(monkeypatch):
    from lorahf.web import need_web

    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as if not installed
    with pytest.raises(LorahfError, match="needs uvicorn, which is not installed") as error:
        need_web()
    assert error.value.hint == "pip install 'lorahf[web]'"


def test_label_serves_a_run_with_only_sft_answers_and_stops_on_ctrl_c(tmp_path):
    from annotator import label_all, serving

    run = write_run(tmp_path, sft=[{"prompt": f"p{i}", "response": f"s{i}", "reference": f"r{i}"} for i in range(3)])
    base, token, stop = serving("label", str(run), cwd=tmp_path)
    assert label_all(base, token, lambda prompt, left, right: "a" if left.startswith("r") else "b") == 3
    printed = " ".join(stop().split())
    assert "3 pairs (sft.jsonl: sft vs reference)" in printed and "3 of 3 labelled in" in printed
    rows = [json.loads(line) for line in (run / "labels" / "sft-vs-reference.jsonl").read_text().splitlines()]
    assert [r["chosen_by"] for r in rows] == ["reference"] * 3


def test_report_serve_shows_the_report_page(tmp_path):
    from annotator import serving

    run = write_run(tmp_path, evaluate=[])
    base, token, stop = serving("report", str(run), "--serve", cwd=tmp_path)
    assert urllib.request.urlopen(f"{base}/report?token={token}", timeout=10).status == 200
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(f"{base}/report", timeout=10)
    stop()
