"""/report: the run's report.md in the browser, with its stages and its metrics as a run logs them.

    /report                  the page (static/report.html; static/report.js fetches the rest and draws the charts)
    /api/report              report.md as HTML, rendered with raw HTML off: a `<script>` in it is shown as text
    /api/status              each stage done, running or not yet, and whether a lorahf process holds the folder
    /api/metrics?since=N     the whole lines of metrics.jsonl from byte N on, and the offset to ask from next
    /plots/NAME              a .png or .svg directly inside RUN/plots, nothing else

Every route sits behind the server's token (lorahf.web.Guard). Nothing here imports torch, nor lorahf.runs (which
does): the page is served beside a run that trains in another process, and reads its folder as that run writes it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from urllib.parse import quote, unquote

from lorahf.stages import registry
from lorahf.web import TOKEN_HEADER

REPORT_FILE = "report.md"
METRICS_FILE = "metrics.jsonl"
PLOTS_DIR = "plots"
OWNER_FILE = ".lock-owner.json"  # lorahf.runs.OWNER_FILE: {"pid", "command", "since"} of the process holding the run
PLOT_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
MAX_CHUNK = 1 << 20  # bytes of metrics.jsonl per answer; the page asks again at once while `more` is true


def routes(run_dir: Path, page) -> list:
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def report_page(request):
        return page("report.html")

    def report(request):
        return JSONResponse(render_report(run_dir, _token(request)))

    def status(request):
        return JSONResponse(run_status(run_dir))

    def metrics(request):
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return JSONResponse({"error": "since is a byte offset: a whole number"}, 400)
        return JSONResponse(read_metrics(run_dir / METRICS_FILE, since, request.query_params.get("file", "")))

    def plot(request):
        path = plot_path(run_dir, request.path_params["name"])
        if path is None:
            return PlainTextResponse("not found\n", 404)
        return FileResponse(path, media_type=PLOT_TYPES[path.suffix.lower()])

    return [Route("/report", report_page), Route("/api/report", report), Route("/api/status", status),
            Route("/api/metrics", metrics), Route(f"/{PLOTS_DIR}/{{name}}", plot)]


# ------------------------------------------------------------------------------------------- report.md
def render_report(run_dir: Path, token: str) -> dict:
    """{"html": report.md as HTML, or None before it is written; "updated": its modification time}."""
    path = run_dir / REPORT_FILE
    try:
        text, updated = path.read_text(encoding="utf-8"), path.stat().st_mtime
    except FileNotFoundError:
        return {"html": None, "updated": None}
    return {"html": render_markdown(text, token), "updated": updated}


def render_markdown(text: str, token: str) -> str:
    """CommonMark and tables; raw HTML is escaped, and images of plots/ load through the token-guarded route."""
    from markdown_it import MarkdownIt

    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = markdown.parse(text)
    for block in tokens:
        for child in block.children or ():
            if child.type == "image":
                child.attrSet("src", plot_url(str(child.attrGet("src") or ""), token))
    return markdown.renderer.render(tokens, markdown.options, {})


def plot_url(src: str, token: str) -> str:
    """`plots/NAME` as the page can fetch it; any other image is left as written (the page's CSP blocks others')."""
    folder, _, name = src.partition("/")
    if folder != PLOTS_DIR or not name or "/" in name:
        return src
    return f"{PLOTS_DIR}/{quote(unquote(name))}?token={quote(token)}"


def plot_path(run_dir: Path, name: str) -> Path | None:
    """The file `name` directly inside RUN/plots, if it is a plot; None for anything else (`..`, links out, .yaml)."""
    folder = (run_dir / PLOTS_DIR).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or path.suffix.lower() not in PLOT_TYPES or not path.is_file():
        return None
    return path


# ------------------------------------------------------------------------------------------- stages
def run_status(run_dir: Path) -> dict:
    """Each stage of the recipe with its state (done, running, waiting) and wall time; who holds the folder."""
    owner = _read_json(run_dir / OWNER_FILE)
    running = owner is not None and _alive(owner.get("pid"))
    markers = {name: _read_json(run_dir / "stages" / f"{name}.json") or {} for name in stage_names(run_dir)}
    waiting = [name for name, marker in markers.items() if not marker.get("done")]
    working = waiting[0] if running and waiting else None  # a run does its stages in order
    stages = [{"name": name, "state": "done" if marker.get("done") else "running" if name == working else "waiting",
               "wall_s": marker.get("wall_s"), "finished_at": marker.get("finished_at")}
              for name, marker in markers.items()]
    report = run_dir / REPORT_FILE
    return {"run": run_dir.name, "stages": stages, "running": running,
            "owner": {key: owner.get(key) for key in ("pid", "command", "since")} if running else None,
            "report_updated": report.stat().st_mtime if report.is_file() else None}


def stage_names(run_dir: Path) -> list[str]:
    """The recipe's stages in its order; without a readable recipe.yaml, those with a marker, in registry order."""
    import yaml

    try:
        recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
        names = recipe["stages"]
        if isinstance(names, list) and all(isinstance(name, str) for name in names):
            return names
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        pass
    return [name for name in registry.NAMES if (run_dir / "stages" / f"{name}.json").is_file()]


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:
        return True  # it exists, run by another user
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------- metrics
def read_metrics(path: Path, since: int, file: str = "") -> dict:
    """The rows of the whole lines of `path` from byte `since` on, and the offset after them.

    `file` is the identity this answer gives (device and inode): a metrics.jsonl rewritten since (a stage that
    starts over drops its lines, in a new file) is another file, and so is one shorter than `since`; then the
    rows start again from byte 0, with "reset": true, and the page forgets what it drew."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            identity = f"{info.st_dev}-{info.st_ino}"
            reset = bool(file and file != identity) or not 0 <= since <= info.st_size
            start = 0 if reset else since
            handle.seek(start)
            chunk = handle.read(MAX_CHUNK)
    except FileNotFoundError:
        return {"rows": [], "offset": 0, "file": "", "reset": since > 0 or bool(file), "more": False}
    whole = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for the next ask
    offset = start + len(whole)
    return {"rows": _rows(whole), "offset": offset, "file": identity, "reset": reset,
            "more": len(chunk) == MAX_CHUNK and offset < info.st_size}


def _rows(lines: bytes) -> list[dict]:
    rows = []
    for line in lines.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
        if isinstance(row, dict):
            rows.append({key: None if isinstance(value, float) and not math.isfinite(value) else value
                         for key, value in row.items()})
    return rows


# ------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict | None:
    """The object in a JSON file; None when it is missing, half-written or not an object."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _token(request) -> str:
    """The token this request carried (the guard let it in, so it is the server's)."""
    return request.query_params.get("token") or request.headers.get(TOKEN_HEADER) or ""
