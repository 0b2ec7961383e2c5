"""The dashboard: a Starlette app over the central store, with live updates by server-sent events.

Pages are rendered on the server (Jinja2) from :mod:`edge.central.queries`, so the browser
never receives data outside the user's scope to hide. One small script keeps a page live: it
listens to ``/stream`` and, when central's change token moves (a payout or a health report
arrived), fetches the same URL again with ``X-Partial: 1`` and swaps the content in place.
Sessions are Starlette's signed cookies (itsdangerous), ``SameSite=strict``, which with
POST-only logout is the defence against cross-site requests.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from edge.central import fleet
from edge.central import queries as q
from edge.central.auth import User, authenticate, get_user
from edge.central.reconcile import payout_rows, payouts_csv
from edge.central.server import ChangeFeed
from edge.central.store import CentralStore
from edge.errors import CentralError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


def _rp(n) -> str:
    return "Rp " + f"{int(n or 0):,}".replace(",", ".")


def _num(n) -> str:
    return f"{int(n or 0):,}".replace(",", ".")


def _when(t) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(float(t), UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _qs(f, **changes) -> str:
    """The query string of filters ``f`` with some fields changed (empty ones left out)."""
    d = {"round": f.round_id, "province": f.province, "regency": f.regency, "point": f.point}
    d.update(changes)
    return "?" + urlencode({k: v for k, v in d.items() if v})


def _templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters.update(rp=_rp, num=_num, when=_when, place=q.name)
    t.env.globals["qs"] = _qs
    t.env.globals["update_trouble"] = fleet.TROUBLE
    return t


class Dashboard:
    """The web app's handlers, bound to one store."""

    def __init__(self, store: CentralStore, poll_s: float = 0.5) -> None:
        self.store = store
        self.feed = ChangeFeed(store, poll_s)
        self.templates = _templates()

    # -- helpers -----------------------------------------------------------------------------

    def user(self, request: Request) -> User | None:
        name = request.session.get("user")
        return get_user(self.store, name) if name else None

    def filters(self, request: Request, user: User) -> q.Filters:
        p = request.query_params
        f = q.Filters(
            round_id=p.get("round", ""),
            province=p.get("province", ""),
            regency=p.get("regency", ""),
            point=p.get("point", ""),
            device_id=p.get("device", ""),
        )
        # A regency or province user starts at their own place.
        if user.role == "regency" and not f.regency:
            scope = user.scope or ""
            f = q.Filters(f.round_id, f.province or scope[:2], scope, f.point, f.device_id)
        elif user.role == "province" and not f.province:
            f = q.Filters(f.round_id, user.scope or "", f.regency, f.point, f.device_id)
        if f.regency and not f.province:
            f = q.Filters(f.round_id, f.regency[:2], f.regency, f.point, f.device_id)
        if not f.round_id:
            rounds = q.rounds(self.store, user)
            f = q.Filters(rounds[0] if rounds else "", f.province, f.regency, f.point, f.device_id)
        return f

    def page(self, request: Request, name: str, user: User, **context) -> Response:
        context.update(
            user=user,
            partial=request.headers.get("x-partial") == "1",
            path=request.url.path,
            rounds=q.rounds(self.store, user),
        )
        return self.templates.TemplateResponse(request, name, context)

    async def guarded(self, request: Request, fn) -> Response:
        user = await run_in_threadpool(self.user, request)
        if user is None:
            return RedirectResponse("/login?" + urlencode({"next": str(request.url.path)}), 303)
        try:
            return await run_in_threadpool(fn, request, user)
        except q.Forbidden as exc:
            return self.templates.TemplateResponse(
                request, "error.html", {"user": user, "message": str(exc)}, status_code=403
            )
        except CentralError as exc:
            return self.templates.TemplateResponse(
                request, "error.html", {"user": user, "message": str(exc)}, status_code=400
            )

    # -- pages -------------------------------------------------------------------------------

    def progress(self, request: Request, user: User) -> Response:
        f = self.filters(request, user)
        return self.page(
            request,
            "progress.html",
            user,
            f=f,
            data=q.progress(self.store, user, f),
            timeline=q.timeline(self.store, user, f),
            counts=q.summary_counts(self.store, user, f),
        )

    def terminal(self, request: Request, user: User) -> Response:
        device_id = request.path_params["device_id"]
        outcome = request.query_params.get("outcome", "")
        events = q.device_events(self.store, user, device_id, outcome)
        f = self.filters(request, user)
        f = q.Filters(f.round_id, device_id=device_id)
        health = [
            t for t in q.terminals(self.store, user, q.Filters()) if t["device_id"] == device_id
        ]
        return self.page(
            request,
            "terminal.html",
            user,
            f=f,
            device_id=device_id,
            outcome=outcome,
            events=events,
            health=health[0] if health else None,
            timeline=q.timeline(self.store, user, f),
            refusals=q.refusals(self.store, user, f),
        )

    def alerts(self, request: Request, user: User) -> Response:
        f = self.filters(request, user)
        return self.page(
            request,
            "alerts.html",
            user,
            f=f,
            refusals=q.refusals(self.store, user, f),
            overrides=q.overrides(self.store, user),
            anomalies=q.anomalies(self.store, user),
        )

    def terminals(self, request: Request, user: User) -> Response:
        f = self.filters(request, user)
        return self.page(
            request,
            "terminals.html",
            user,
            f=f,
            terminals=q.terminals(self.store, user, f),
            fleet=fleet.versions(self.store, user, f),
        )

    def event(self, request: Request, user: User) -> Response:
        detail = q.event_detail(self.store, user, request.path_params["event_id"])
        return self.page(request, "event.html", user, f=q.Filters(), **detail)

    def home_visits(self, request: Request, user: User) -> Response:
        f = self.filters(request, user)
        rows = q.home_visits(self.store, user, f) if f.regency else []
        return self.page(request, "homevisit.html", user, f=f, rows=rows)

    def home_visits_csv(self, request: Request, user: User) -> Response:
        import csv
        import io

        f = self.filters(request, user)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("point", "household", "name", "amount", "device_id"))
        for r in q.home_visits(self.store, user, f):
            w.writerow((r["point"], r["household"], r["name"], r["amount"], r["device_id"]))
        return _download(buf.getvalue().encode(), f"home-visits-{f.round_id}-{f.regency}.csv")

    def payouts_csv(self, request: Request, user: User) -> Response:
        f = self.filters(request, user)
        if not f.regency:
            raise CentralError("the reconciliation export is made per regency")
        q.check(user, f)
        data = payouts_csv(payout_rows(self.store, f.round_id, f.regency), user.household)
        return _download(data, f"reconciliation-{f.round_id}-{f.regency}.csv")

    # -- login and the live feed ---------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        error = ""
        if request.method == "POST":
            form = await request.form()
            name, password = str(form.get("username", "")), str(form.get("password", ""))
            user = await run_in_threadpool(authenticate, self.store, name, password)
            if user is not None:
                request.session.clear()
                request.session["user"] = user.username
                log.info("dashboard login: %s (%s)", user.username, user.role)
                return RedirectResponse(_local(request.query_params.get("next", "/")), 303)
            error = "wrong username or password"
        return self.templates.TemplateResponse(
            request, "login.html", {"error": error, "user": None}, status_code=401 if error else 200
        )

    async def logout(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", 303)

    async def stream(self, request: Request) -> Response:
        user = await run_in_threadpool(self.user, request)
        if user is None:
            return PlainTextResponse("login first", 401)

        async def events():
            seen = await self.feed.current()
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                version = await self.feed.wait(seen, timeout=15.0)
                if version != seen:
                    seen = version
                    yield "event: change\ndata: 1\n\n"
                else:
                    yield ": keep-alive\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _local(target: str) -> str:
    """``target`` when it is a path on this site, else ``/`` (no redirect to another host:
    ``//host`` and ``/\\host`` are read by browsers as other sites)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _download(data: bytes, filename: str) -> Response:
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def create_app(
    store: CentralStore, secret_key: str | None = None, *, poll_s: float = 0.5, https_only=False
) -> Starlette:
    """The dashboard as an ASGI app (serve it with uvicorn)."""
    d = Dashboard(store, poll_s)

    def guard(fn):
        async def endpoint(request: Request) -> Response:
            return await d.guarded(request, fn)

        return endpoint

    routes = [
        Route("/", guard(d.progress)),
        Route("/alerts", guard(d.alerts)),
        Route("/terminals", guard(d.terminals)),
        Route("/terminal/{device_id}", guard(d.terminal)),
        Route("/event/{event_id}", guard(d.event)),
        Route("/homevisit", guard(d.home_visits)),
        Route("/homevisit.csv", guard(d.home_visits_csv)),
        Route("/export/payouts.csv", guard(d.payouts_csv)),
        Route("/login", d.login, methods=["GET", "POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/stream", d.stream),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=secret_key or secrets.token_urlsafe(32),
            session_cookie="bansos_central",
            max_age=8 * 3600,
            same_site="strict",
            https_only=https_only,
        )
    ]
    return Starlette(routes=routes, middleware=middleware)
