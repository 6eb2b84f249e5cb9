"""Registers the privacy team's Exports page with Airflow (the page itself is `portability.web`).

Airflow's API server mounts the page's FastAPI app at /portability, and the UI shows an Exports entry
in its navigation that opens the page inside the UI. Every component loads this module (tasks too,
for macros), so the app is only built when the API server asks for it.
"""

from __future__ import annotations

from functools import cached_property

from airflow.plugins_manager import AirflowPlugin


class ExportsPagePlugin(AirflowPlugin):
    name = "portability_exports_page"
    external_views = [{
        "name": "Exports",
        "href": "portability/exports",  # relative to the UI's base URL, so it works behind a path prefix too
        "url_route": "exports",  # shown inside the UI at /plugin/exports
        "destination": "nav",
        "nav_top_level": True,
    }]

    @cached_property
    def fastapi_apps(self) -> list[dict]:
        from portability.web.app import URL_PREFIX, create_app

        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Exports page"}]
