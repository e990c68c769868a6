"""The report page (lorahf report --serve): the token, the rendered report.md, the live metrics, the plots route.

A fake run folder stands in for a real one, so nothing here trains or loads a model; one test drives headless
Chromium to watch a chart grow as metrics.jsonl does, with script-shaped text in every place the run can put it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lorahf.web import Server, report

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
                       "AAAABJRU5ErkJggg==")  # 1 x 1 pixel
REPORT_MD = """# lorahf run `fake`

| stage | | check | evidence |
|---|---|---|---|
| sft | ✓ | training loss fell | 5.1 -> 0.5 |

<script>alert(1); window.__xss = 1</script>

<img src=x onerror="window.__xss = 2">

![sft](plots/sft.png)
"""
XSS_STAGE = '<img src=x onerror="window.__xss = 3">'
XSS_METRIC = "<b onmouseover=alert(4)>bold</b>"


def metric_line(stage: str, step: int, **values) -> str:
    return json.dumps({"stage": stage, "step": step, **values}, sort_keys=True) + "\n"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "fake-run"
    (run / "stages").mkdir(parents=True)
    (run / "plots").mkdir()
    (run / "recipe.yaml").write_text("name: fake-run\nstages:\n- sft\n- reward\n")
    (run / "report.md").write_text(REPORT_MD, encoding="utf-8")
    (run / "plots" / "sft.png").write_bytes(PNG)
    (run / "plots" / "notes.txt").write_text("not a plot\n")
    (run / "secret.png").write_bytes(PNG)
    (run / "stages" / "sft.json").write_text(json.dumps({"stage": "sft", "done": True, "metrics": {}, "wall_s": 12.5}))
    (run / "metrics.jsonl").write_text("".join(metric_line("sft", step, loss=4.0 - step / 10, lr=0.001)
                                               for step in (10, 20, 30)))
    return run


@pytest.fixture
def server(run_dir):
    started = Server(run_dir).start()
    yield started
    started.stop()


def get(server: Server, path: str, token: str | None = "yes", header: bool = False) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET path; token "yes" is the server's own."""
    token = server.token if token == "yes" else token
    url = f"http://127.0.0.1:{server.port}/{path}"
    headers = {}
    if token is not None and header:
        headers["X-Lorahf-Token"] = token
    elif token is not None:
        url += ("&" if "?" in path else "?") + f"token={token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as answer:
            return answer.status, answer.headers.get("content-type", ""), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("content-type", ""), error.read()


def get_json(server: Server, path: str) -> dict:
    status, _, body = get(server, path, header=True)
    assert status == 200, body
    return json.loads(body)


# ------------------------------------------------------------------------------------------------ the server
@pytest.mark.parametrize("path", ["report", "api/report", "api/status", "api/metrics?since=0", "plots/sft.png"])
def test_every_route_needs_the_token(server, path):
    assert get(server, path, token=None)[0] == 403
    assert get(server, path, token="wrong")[0] == 403
    assert get(server, path, token=server.token[:-1])[0] == 403
    assert get(server, path)[0] == 200
    assert get(server, path, header=True)[0] == 200


def test_the_page_names_the_run_and_has_no_inline_script(server):
    status, kind, body = get(server, "report")
    page = body.decode()
    assert status == 200 and kind.startswith("text/html")
    assert "fake-run" in page and f'data-token="{server.token}"' in page
    scripts = page.split("<script")[1:]
    assert scripts and all(script.split(">")[0].strip().startswith("src=") for script in scripts)
    assert "style=" not in page  # the CSP allows no inline style either
    for asset in ("static/report.js", "static/report.css"):
        assert get(server, asset)[0] == 200


def test_report_md_renders_with_its_raw_html_escaped(server):
    rendered = get_json(server, "api/report")
    html = rendered["html"]
    assert "<table>" in html and "<td>training loss fell</td>" in html
    assert "&lt;script&gt;alert(1); window.__xss = 1&lt;/script&gt;" in html
    assert "<script" not in html and "<img src=x" not in html and "onerror=\"" not in html
    assert f'src="plots/sft.png?token={server.token}"' in html
    assert rendered["updated"] == pytest.approx((server.run_dir / "report.md").stat().st_mtime)


def test_a_run_without_report_md_says_so(server):
    (server.run_dir / "report.md").unlink()
    assert get_json(server, "api/report") == {"html": None, "updated": None}
    assert get_json(server, "api/status")["report_updated"] is None


def test_metrics_come_as_whole_new_lines_from_an_offset(server):
    path = server.run_dir / "metrics.jsonl"
    first = get_json(server, "api/metrics?since=0")
    assert [row["step"] for row in first["rows"]] == [10, 20, 30]
    assert first["offset"] == path.stat().st_size and not first["reset"] and not first["more"]
    since = f"since={first['offset']}&file={first['file']}"

    with open(path, "a") as handle:  # a line still being written
        handle.write('{"loss": 1.5, "stage": "sft", "st')
    assert get_json(server, f"api/metrics?{since}") == {**first, "rows": []}

    with open(path, "a") as handle:
        handle.write('ep": 40}\n' + metric_line("sft", 50, loss=1.25))
    second = get_json(server, f"api/metrics?{since}")
    assert second["rows"] == [{"loss": 1.5, "stage": "sft", "step": 40}, {"loss": 1.25, "stage": "sft", "step": 50}]
    assert second["offset"] == path.stat().st_size and not second["reset"]
    assert get_json(server, f"api/metrics?since={second['offset']}&file={second['file']}")["rows"] == []


def test_a_rewritten_metrics_file_starts_the_page_over(server):
    path = server.run_dir / "metrics.jsonl"
    first = get_json(server, "api/metrics?since=0")
    rewritten = path.with_name("metrics.jsonl.new")  # as runs.write_text does: a new file renamed over the old
    rewritten.write_text(metric_line("sft", 10, loss=3.0) + "not json, cut by a kill\n"
                         + metric_line("sft", 20, loss=2.0))
    os.replace(rewritten, path)
    again = get_json(server, f"api/metrics?since={first['offset']}&file={first['file']}")
    assert again["reset"] and again["file"] != first["file"]
    assert [row["step"] for row in again["rows"]] == [10, 20] and again["offset"] == path.stat().st_size
    assert get_json(server, f"api/metrics?since={path.stat().st_size + 5}")["reset"]  # past the end: shorter now
    assert get(server, "api/metrics?since=abc")[0] == 400


def test_metrics_before_the_file_exists(server):
    (server.run_dir / "metrics.jsonl").unlink()
    assert get_json(server, "api/metrics?since=0") == {"rows": [], "offset": 0, "file": "", "reset": False,
                                                       "more": False}


@pytest.mark.parametrize("path", ["plots/..%2Frecipe.yaml", "plots/%2e%2e%2Frecipe.yaml", "plots/..%2Fsecret.png",
                                  "plots/..", "plots/notes.txt", "plots/missing.png", "plots/%2Fetc%2Fpasswd",
                                  "plots/..%5Csecret.png", "plots/link.png"])
def test_plots_serves_only_images_inside_plots(server, path):
    (server.run_dir / "plots" / "link.png").symlink_to(server.run_dir / "secret.png")  # a link out of plots/
    status, _, body = get(server, path)
    assert status == 404 and body != PNG


def test_a_plot_is_served_as_an_image(server):
    status, kind, body = get(server, "plots/sft.png")
    assert (status, kind, body) == (200, "image/png", PNG)


# ------------------------------------------------------------------------------------------------ stage status
def test_status_shows_done_running_and_waiting_stages(run_dir):
    status = report.run_status(run_dir)
    assert [(stage["name"], stage["state"], stage["wall_s"]) for stage in status["stages"]] == [
        ("sft", "done", 12.5), ("reward", "waiting", None)]
    assert not status["running"] and status["owner"] is None

    owner = run_dir / report.OWNER_FILE
    owner.write_text(json.dumps({"pid": os.getpid(), "command": "lorahf run", "since": "now"}))
    status = report.run_status(run_dir)
    assert status["running"] and status["owner"] == {"pid": os.getpid(), "command": "lorahf run", "since": "now"}
    assert [stage["state"] for stage in status["stages"]] == ["done", "running"]

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # its pid is free now: the owner file of a killed run
    owner.write_text(json.dumps({"pid": ended.pid, "command": "lorahf run"}))
    assert not report.run_status(run_dir)["running"]


def test_status_without_a_recipe_lists_the_stages_with_a_marker(run_dir):
    (run_dir / "recipe.yaml").unlink()
    assert [stage["name"] for stage in report.run_status(run_dir)["stages"]] == ["sft"]


def test_the_report_module_imports_no_torch():
    code = "import sys, lorahf.web.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0


# ------------------------------------------------------------------------------------------------ in a browser
def test_the_page_draws_charts_that_grow_and_runs_no_script_from_the_run(server, tmp_path):
    if not Path("/usr/bin/chromedriver").exists():
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not try to download a driver
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    metrics = server.run_dir / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write(json.dumps({"stage": XSS_STAGE, "step": 1, XSS_METRIC: 1.0}) + "\n")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(server.address)
        wait = WebDriverWait(driver, 8, poll_frequency=0.1)
        loss = 'figure.chart[data-stage="sft"][data-metric="loss"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{loss}[data-points='3'] polyline"))
        assert driver.find_element(By.CSS_SELECTOR, f"{loss} .chart-value").text == "1"  # the last loss, 4.0 - 30 / 10
        assert driver.find_element(By.CSS_SELECTOR, "#report-body table")
        assert "<script>alert(1)" in driver.find_element(By.ID, "report-body").text
        assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#stages .stage-name")] == ["sft", "reward"]

        with open(metrics, "a") as handle:  # the run logs on while the page is open
            handle.write(metric_line("sft", 40, loss=0.5) + metric_line("sft", 50, loss=0.25))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{loss}[data-points='5']"))
        assert driver.find_element(By.CSS_SELECTOR, f"{loss} .chart-value").text == "0.25"

        shown = driver.find_element(By.CSS_SELECTOR, "#metric-stages").text
        assert XSS_STAGE in shown and XSS_METRIC in shown  # as text, not as elements
        assert driver.execute_script("return window.__xss") is None
        with pytest.raises(NoAlertPresentException):
            _ = driver.switch_to.alert  # nothing in the run opened one
        assert driver.get_log("browser") == []  # no script error, no CSP violation, no failed request
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
