"""The Exports page's FastAPI app, mounted by Airflow's API server at `/portability`.

    GET  /portability/exports                          the page: every request, filtered by ?state= and ?account=
    GET  /portability/exports.json                     the same list as JSON, with the progress of exports under way
    POST /portability/requests/{request_id}/cancel     withdraw a request; stop its DAG run if its export is cancelled
    POST /portability/requests/{request_id}/send-link  send a fresh link to the requester's own channels
    POST /portability/exports/{export_id}/revoke       delete a published archive now

Airflow gives a plugin's app no authentication of its own, so every route asks Airflow's: the caller's
Airflow token (the UI's `_token` cookie, which the page opened from the navigation carries, or an
`Authorization: Bearer` header) must be valid (else 401/403), reading needs read access to the DAG runs
of `account_export` and an action needs edit access to them (else 403). A form posted with the cookie
carries a CSRF token bound to the user (a bearer token is never sent by a browser on its own).
An action answers a browser with a redirect back to the page (a signed notice says what happened) and
a caller that asks for JSON (`Accept: application/json`) with JSON.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel

from portability.resources.ledger import ACTIVE, DAG_ID, STATES
from portability.web.rows import RequestRow, request_row

log = logging.getLogger(__name__)

URL_PREFIX = "/portability"
TEMPLATES = Path(__file__).with_name("templates")
CSRF_SALT = "portability exports page: form"
CSRF_MAX_AGE = 12 * 3600  # a page left open over a working day still posts
NOTICE_SALT = "portability exports page: notice"
NOTICE_MAX_AGE = 300  # a notice is shown once, right after its action

# Who may do what, in Airflow's own terms: the DAG runs of account_export.
may_read = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN, param_dag_id=DAG_ID))
may_edit = Depends(requires_access_dag(method="PUT", access_entity=DagAccessEntity.RUN, param_dag_id=DAG_ID))


_NO_STORE = {"Cache-Control": "no-store"}  # the page holds a CSRF token and the ledger's current state


class ActionForm(BaseModel):
    """What each action's form posts: the CSRF token, and the page's filters to come back to."""

    csrf: str = ""
    state: str = ""
    account: str = ""


class ActionRefused(Exception):
    """An action the ledger, storage, a channel or Airflow refused; the message says why, for the page."""

    def __init__(self, message: str, status_code: int = status.HTTP_409_CONFLICT):
        super().__init__(message)
        self.status_code = status_code


def create_app() -> FastAPI:
    app = FastAPI(title="Exports (portability)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/exports", response_class=HTMLResponse, dependencies=[may_read], name="page")
    def page(user: GetUserDep, state: str | None = None, account: str | None = None,
             notice: str | None = None) -> HTMLResponse:
        state, account = _filters(state, account)
        rows, error = _rows(state, account)
        html = _templates().get_template("exports.html").render(
            rows=rows, states=STATES, state=state or "", account=account or "", error=error,
            notice=_read_notice(notice), may_edit=_may_edit(user), csrf=_csrf_token(user),
            filters={"state": state or "", "account": account or ""})
        return HTMLResponse(html, headers=_NO_STORE)

    @app.get("/exports.json", dependencies=[may_read])
    def listing(state: str | None = None, account: str | None = None) -> JSONResponse:
        state, account = _filters(state, account)
        rows, error = _rows(state, account)
        if error:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, error)
        return JSONResponse({"requests": [_as_json(row) for row in rows]}, headers=_NO_STORE)

    @app.post("/requests/{request_id}/cancel", dependencies=[may_edit])
    def cancel(request: Request, request_id: str, user: GetUserDep, form: Annotated[ActionForm, Form()]) -> Response:
        _check_csrf(request, user, form.csrf)
        return _act(request, form, lambda: _cancel(request, request_id))

    @app.post("/requests/{request_id}/send-link", dependencies=[may_edit])
    def send_link(request: Request, request_id: str, user: GetUserDep,
                  form: Annotated[ActionForm, Form()]) -> Response:
        _check_csrf(request, user, form.csrf)
        return _act(request, form, lambda: _send_link(request_id))

    @app.post("/exports/{export_id}/revoke", dependencies=[may_edit])
    def revoke(request: Request, export_id: str, user: GetUserDep, form: Annotated[ActionForm, Form()]) -> Response:
        _check_csrf(request, user, form.csrf)
        return _act(request, form, lambda: _revoke(export_id))

    return app


def _filters(state: str | None, account: str | None) -> tuple[str | None, str | None]:
    state = state or None
    if state is not None and state not in STATES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown state {state[:40]!r}: one of {', '.join(STATES)}")
    account = (account or "").strip() or None
    if account is not None and len(account) > 200:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "account: at most 200 characters")
    return state, account


def _rows(state: str | None, account: str | None) -> tuple[list[RequestRow], str | None]:
    """The requests and the progress of those under way; or none and why, if the ledger cannot be read."""
    from portability import service

    try:
        listed = service.request_list(state, account)
        under_way = sorted({row["export_id"] for row in listed if row["state"] in ACTIVE and row["export_id"]})
        progress = service.export_progress(under_way) if under_way else {}
    except Exception as exc:  # noqa: BLE001 (the page says the ledger is unreachable instead of a traceback)
        log.warning("the Exports page could not read the ledger: %s: %s", type(exc).__name__, exc)
        return [], (f"the request ledger could not be read ({type(exc).__name__}): check connection "
                    "'portability_state' as the API server resolves it")
    return [request_row(row, progress.get(row["export_id"])) for row in listed], None


def _as_json(row: RequestRow) -> dict:
    from dataclasses import asdict

    return {**asdict(row), "run_path": row.run_path}


def _may_edit(user: BaseUser) -> bool:
    return get_auth_manager().is_authorized_dag(method="PUT", access_entity=DagAccessEntity.RUN,
                                                details=DagDetails(id=DAG_ID), user=user)


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))


# CSRF: the UI's token travels in a cookie, which a browser sends with a form posted from any site that
# the cookie's SameSite=Lax lets through. A form of this page carries a token signed with the API
# server's secret key and bound to the user; a post without it is refused.
def _serializer(salt: str):
    from airflow.configuration import conf
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(conf.get("api", "secret_key"), salt=salt)


def _csrf_token(user: BaseUser) -> str:
    return _serializer(CSRF_SALT).dumps(user.get_id())


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check_csrf(request: Request, user: BaseUser, token: str) -> None:
    if _bearer(request):  # the caller named itself: no ambient credential was used
        return
    from itsdangerous import BadData

    try:
        bound_to = _serializer(CSRF_SALT).loads(token, max_age=CSRF_MAX_AGE)
    except BadData:
        bound_to = None
    if bound_to != user.get_id():
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this form did not come from your Exports page, or it is "
                                                       "older than 12 hours: reload the page and try again")


def _read_notice(signed: str | None) -> dict | None:
    """The outcome of the action just done, as its redirect carried it (signed, so a link cannot fake one)."""
    if not signed:
        return None
    from itsdangerous import BadData

    try:
        return _serializer(NOTICE_SALT).loads(signed, max_age=NOTICE_MAX_AGE)
    except BadData:
        return None


def _act(request: Request, form: ActionForm, action) -> Response:
    """Run an action; JSON to a caller that asks for it, else back to the page with a notice of the outcome."""
    try:
        message = action()
        outcome, code = {"ok": True, "message": message}, status.HTTP_200_OK
    except ActionRefused as exc:
        outcome, code = {"ok": False, "message": str(exc)}, exc.status_code
    except Exception as exc:  # noqa: BLE001 (the user gets a sentence; the API server's log keeps the traceback)
        log.exception("an action of the Exports page failed")
        outcome = {"ok": False, "message": f"the action failed ({type(exc).__name__}): the API server's log has "
                                           "the details; the list below shows what it changed, if anything"}
        code = status.HTTP_500_INTERNAL_SERVER_ERROR
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"detail": outcome["message"]} if not outcome["ok"] else outcome, status_code=code)
    query = {name: value for name, value in (("state", form.state), ("account", form.account)) if value}
    query["notice"] = _serializer(NOTICE_SALT).dumps(outcome)
    return RedirectResponse(f"{request.url_for('page').path}?{urlencode(query)}", status.HTTP_303_SEE_OTHER)


def _refusals():
    """The errors that refuse an action with a message meant for its user."""
    from portability.pipeline.export import ExportError
    from portability.resources.airflow_api import AirflowApiError
    from portability.resources.config import ConfigurationError
    from portability.resources.delivery import DeliveryError
    from portability.resources.ledger import LedgerError
    from portability.service.request import RequestError

    return RequestError, LedgerError, ExportError, DeliveryError, AirflowApiError, ConfigurationError


def _checked(request_or_export_id: str, what: str) -> str:
    from portability.pipeline.export import check_export_id

    try:
        check_export_id(request_or_export_id, what)
    except _refusals() as exc:
        raise ActionRefused(str(exc), status.HTTP_404_NOT_FOUND) from None
    return request_or_export_id


def _cancel(request: Request, request_id: str) -> str:
    from portability import service

    _checked(request_id, "request id")
    try:
        result = service.cancel(request_id)
    except _refusals() as exc:
        raise ActionRefused(str(exc)) from None
    if not result["export_cancelled"]:
        return f"Request {request_id} cancelled; its export goes on for the other requests that wait for it."
    stopped = ""
    if result["dag_run_id"]:
        stopped = _stop_run(request, result["dag_run_id"])
    return f"Request {request_id} cancelled. Its export {result['export_id']} is cancelled too{stopped}."


def _stop_run(request: Request, dag_run_id: str) -> str:
    """Stop the cancelled export's DAG run through Airflow's REST API, as the caller (their own token): Airflow
    checks their right to, and its audit log names them. Its next task would see the cancellation anyway."""
    from portability.resources.airflow_api import AirflowApi, AirflowApiError

    token = _bearer(request) or request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    api = AirflowApi(_airflow_url(request), None, None, _token=token)
    try:
        stopped = api.stop_run(DAG_ID, dag_run_id)
    except AirflowApiError as exc:
        log.warning("request cancelled, but its DAG run %s was not stopped: %s", dag_run_id, exc)
        return f"; its DAG run {dag_run_id} could not be stopped ({exc}): its next task stops it"
    return f", and its DAG run {dag_run_id} is stopped" if stopped else f"; its DAG run {dag_run_id} does not exist"


def _airflow_url(request: Request) -> str:
    """Where this API server answers: [api] base_url, else the address the caller used."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or f"{request.url.scheme}://{request.url.netloc}"
    return base.rstrip("/")


def _send_link(request_id: str) -> str:
    from portability import service

    _checked(request_id, "request id")
    try:
        result = service.send_fresh_link(request_id)
    except _refusals() as exc:
        raise ActionRefused(str(exc)) from None
    return f"A fresh link to request {request_id}'s archive was sent to its {' and '.join(result['sent_to'])}."


def _revoke(export_id: str) -> str:
    from portability import service

    _checked(export_id, "export id")
    try:
        deleted = service.revoke(export_id)
    except _refusals() as exc:
        raise ActionRefused(str(exc)) from None
    return f"Export {export_id} revoked: its archive is deleted ({deleted} objects) and its links no longer work."
