"""The local web page: label pairs of answers (/) and read the run's report with its live metrics (/report).

    server = Server(run_dir, labels)      # labels: a lorahf.label.Labels, or None for the report alone
    server.start()                        # in a thread (tests); server.serve() blocks (the CLI)
    print(server.address)                 # http://127.0.0.1:PORT/?token=...

Safe by default: it listens on 127.0.0.1 unless given another host; every request must carry the random token of the
printed address (as `?token=` or the X-Lorahf-Token header), else 403; nothing the browser sends names a file, so
writes stay the labels file's; the page shows every text with `textContent` and the Content-Security-Policy allows
no inline script, so a prompt holding `<script>` or HTML is shown as the text it is.

Starlette and uvicorn come with `pip install lorahf[web]`; without them `need_web()` says so in one line.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from pathlib import Path

from lorahf.errors import LorahfError

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "X-Lorahf-Token"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
MAX_NAME = 40  # characters of an annotator's name
HEADERS = {  # on every answer: no script but ours, no framing, no token leaking through a Referer, nothing cached
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Frame-Options": "DENY"}


def need_web() -> None:
    """One line, not a traceback, when the optional web extra is not installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as missing:
        raise LorahfError(f"the web page needs {missing.name}, which is not installed",
                          hint="pip install 'lorahf[web]'") from None


class Server:
    """The app on a socket of its own (port 0: any free one), with its token."""

    def __init__(self, run_dir: str | Path, labels=None, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None):
        need_web()
        import uvicorn

        self.run_dir, self.labels = Path(run_dir), labels
        self.token = token or secrets.token_urlsafe(18)
        self.socket = _listen(host, port)
        self.host, self.port = host, self.socket.getsockname()[1]
        self.app = build_app(self.run_dir, labels, self.token)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=2))
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host  # 127.0.0.1, not localhost: that may be ::1
        return f"http://{shown}:{self.port}/{'' if self.labels is not None else 'report'}?token={self.token}"

    def serve(self) -> None:
        """Until Ctrl-C (uvicorn shuts down cleanly, then raises the interrupt again: that is the normal end here)."""
        try:
            self.server.run(sockets=[self.socket])
        except KeyboardInterrupt:
            pass

    def start(self) -> "Server":
        self.thread = threading.Thread(target=self.serve, daemon=True, name="lorahf-web")
        self.thread.start()
        while not self.server.started and self.thread.is_alive():
            self.thread.join(0.02)
        if not self.server.started:
            raise LorahfError(f"the web server on {self.host}:{self.port} did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.socket.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise LorahfError(f"cannot listen on {host}:{port} ({error.strerror})",
                          hint="give another --port, or 0 for any free one") from None
    sock.listen(64)
    return sock


# ----------------------------------------------------------------------------------------------- the app
def build_app(run_dir: Path, labels, token: str):
    """The pages, their files, the labelling API (with `labels`) and /report, all behind the token."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    from lorahf.web import report

    def page(name: str) -> HTMLResponse:
        html = (STATIC / name).read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{token}}", token).replace("{{run}}", _escape(run_dir.name)))

    async def home(request):
        if labels is None:
            return RedirectResponse(f"report?token={token}", 303)
        return page("label.html")

    async def static(request):
        path = (STATIC / request.path_params["name"]).resolve()
        if path.parent != STATIC.resolve() or not path.is_file() or path.suffix not in MEDIA_TYPES:
            return PlainTextResponse("not found\n", 404)
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix])  # never guessed: nosniff would refuse a wrong one

    routes = [Route("/", home), Route("/static/{name}", static),
              *(label_routes(labels, run_dir) if labels is not None else []), *report.routes(run_dir, page)]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token)])


class Guard:
    """403 without the token; the safety headers on every answer (a plain ASGI middleware)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":  # the server's own start and stop; every request is checked
            return await self.app(scope, receive, send)
        from starlette.requests import HTTPConnection
        from starlette.responses import PlainTextResponse

        request = HTTPConnection(scope)
        given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER) or ""
        extra = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if not secrets.compare_digest(given.encode(), self.token.encode()):
            if scope["type"] != "http":  # a websocket (none is served today) is refused as firmly
                return await send({"type": "websocket.close", "code": 1008})
            answer = PlainTextResponse("403: this page needs the token of the address lorahf printed\n", 403)
            return await answer(scope, receive, send_with_headers)
        return await self.app(scope, receive, send_with_headers)


def label_routes(labels, run_dir: Path) -> list:
    """/api/next, choose, skip, undo, release: each takes the annotator and the tab (query or JSON body) and answers
    with the tab's item, the progress and where the labels go; 409 (with the next item) for an item taken meanwhile."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from lorahf.label import Conflict

    def state(annotator: str, tab: str, shown: dict | None = None) -> dict:
        return {"item": shown or labels.next(annotator, tab), "progress": labels.progress(annotator),
                "file": _relative(labels.path, run_dir), "source": labels.source}

    def choose(asked: dict, annotator: str, tab: str) -> dict:
        labels.choose(annotator, tab, str(asked.get("item")), str(asked.get("choice")))
        return state(annotator, tab)

    def skip(asked: dict, annotator: str, tab: str) -> dict:
        labels.skip(annotator, tab, str(asked.get("item")))
        return state(annotator, tab)

    def release(asked: dict, annotator: str, tab: str) -> dict:
        labels.release(tab)
        return {}

    def endpoint(handler):
        async def answer(request):
            body = {}
            if request.method == "POST":
                try:
                    body = json.loads(await request.body() or b"{}")
                except json.JSONDecodeError:
                    body = None
                if not isinstance(body, dict):
                    return JSONResponse({"error": "the body is not a JSON object"}, 400)
            asked = {**request.query_params, **body}
            annotator, tab = str(asked.get("annotator", "")).strip()[:MAX_NAME], str(asked.get("tab", ""))[:64]
            if not annotator or not tab:
                return JSONResponse({"error": "annotator and tab are needed"}, 400)
            try:
                return JSONResponse(handler(asked, annotator, tab))
            except Conflict as error:
                return JSONResponse({"error": error.message, **state(annotator, tab)}, 409)
            except LorahfError as error:
                return JSONResponse({"error": error.message}, 400)
        return answer

    return [Route("/api/next", endpoint(lambda asked, annotator, tab: state(annotator, tab))),
            Route("/api/choose", endpoint(choose), methods=["POST"]),
            Route("/api/skip", endpoint(skip), methods=["POST"]),
            Route("/api/undo", endpoint(lambda asked, annotator, tab: state(annotator, tab, labels.undo(annotator, tab))),
                  methods=["POST"]),
            Route("/api/release", endpoint(release), methods=["POST"])]


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve().parent))
    except ValueError:
        return str(path)


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)
