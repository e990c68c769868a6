"""The labelling page in a real browser (headless Chromium from Debian's packages, driven by selenium through the
system's chromedriver: nothing is downloaded). Keys, undo, a reload in the middle, a second annotator, and a prompt
that tries to run a script."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lorahf.label import Item, Labels
from lorahf.web import Server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
PAYLOAD = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"><b>bold?</b>'


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (.ci/run installs Debian's chromium-driver)")
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # selenium never fetches a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def items(n: int) -> list[Item]:
    found = [Item(f"Report {i}: the match ended {i}-{i + 1}.", f"Left or right answer {i}, the first.",
                  f"Left or right answer {i}, the second.", "policy", "sft") for i in range(n)]
    found[2] = Item(f"A prompt with markup: {PAYLOAD}", f"An answer with markup: {PAYLOAD}", "plain", "policy", "sft")
    return found


def text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 10, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def sign_in(driver, address: str, name: str) -> None:
    driver.get(address)
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get(address)
    wait_for(driver, lambda d: d.find_element("id", "signin-name").is_displayed(), "the name form")
    driver.find_element("id", "signin-name").send_keys(name + "\n")
    wait_for(driver, lambda d: d.find_element("id", "work").is_displayed(), "the first pair")


def test_label_twenty_pairs_with_keys_undo_and_a_reload(browser, tmp_path):
    path = tmp_path / "labels" / "policy-vs-sft.jsonl"
    server = Server(tmp_path, Labels(items(30), path, "evaluate.jsonl: policy vs sft")).start()
    try:
        sign_in(browser, server.address, "ana")
        made: list[tuple[str, str]] = []  # (prompt, chosen answer), the choices in force, in order
        step = 0
        while len(made) < 20:
            step += 1
            prompt = text(browser, "prompt")
            key = "123"[step % 3]
            chosen = {"1": text(browser, "left-text"), "2": text(browser, "right-text"), "3": None}[key]
            press(browser, key)
            wait_for(browser, lambda d: text(d, "count").startswith(f"{len(made) + 1} of 30"), f"label {step} saved")
            made.append((prompt, chosen))
            if len(made) == 7 and step == 7:  # undo the 7th: it is shown again, and chosen anew below
                press(browser, "u")
                wait_for(browser, lambda d: text(d, "count").startswith("6 of 30") and text(d, "prompt") == prompt,
                         "the undone pair shown again")
                made.pop()
            if len(made) == 12:
                browser.refresh()  # a reload in the middle: the page comes back to the next pair
                wait_for(browser, lambda d: text(d, "count").startswith("12 of 30") and text(d, "prompt"),
                         "the page after a reload")
        browser.save_screenshot(str(tmp_path / "label-page.png"))
        if os.environ.get("LORAHF_SCREENSHOTS"):
            shutil.copy(tmp_path / "label-page.png", os.environ["LORAHF_SCREENSHOTS"])
        assert browser.execute_script("return window.__xss") is None  # the markup ran nothing
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 20
        assert [r["prompt"] for r in rows] == [prompt for prompt, _ in made]  # in order, none lost or doubled
        for row, (_, chosen) in zip(rows, made):
            assert row["tie"] if chosen is None else row["chosen"] == chosen and not row["tie"]
        assert len({r["item"] for r in rows}) == 20 and {r["annotator"] for r in rows} == {"ana"}
    finally:
        server.stop()


def test_markup_in_a_prompt_is_shown_as_text(browser, tmp_path):
    server = Server(tmp_path, Labels([items(3)[2]], tmp_path / "l.jsonl")).start()
    try:
        sign_in(browser, server.address, "ana")
        assert text(browser, "prompt") == f"A prompt with markup: {PAYLOAD}"
        assert PAYLOAD in text(browser, "left-text") + text(browser, "right-text")
        assert browser.find_elements("css selector", "#work img, #work script, #work b") == []
        assert browser.execute_script("return window.__xss") is None
    finally:
        server.stop()


def test_a_second_annotator_gets_other_pairs_and_agreement_shows(browser, tmp_path):
    path = tmp_path / "l.jsonl"
    server = Server(tmp_path, Labels(items(4), path, per_item=2)).start()
    try:
        sign_in(browser, server.address, "ana")
        first = browser.current_window_handle
        ana_sees = text(browser, "prompt")
        browser.switch_to.new_window("tab")  # a second person, in a tab of their own
        sign_in(browser, server.address, "ben")
        ben_sees = text(browser, "prompt")
        assert ben_sees != ana_sees
        press(browser, "3")  # ben: a tie on his pair
        wait_for(browser, lambda d: text(d, "count").startswith("1 of 8"), "ben's label saved")
        browser.close()
        browser.switch_to.window(first)
        press(browser, "3")  # ana: a tie on hers
        wait_for(browser, lambda d: text(d, "count").startswith("2 of 8"), "ana's label saved")
        assert text(browser, "prompt") == ben_sees  # per_item 2: ben's pair is hers to label too
        press(browser, "3")
        wait_for(browser, lambda d: "agreement 100% on 1 shared item" in text(d, "agreement"), "the agreement")
        assert [json.loads(line)["annotator"] for line in path.read_text().splitlines()] == ["ben", "ana", "ana"]
    finally:
        server.stop()
