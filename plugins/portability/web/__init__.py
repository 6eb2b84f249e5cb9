"""The privacy team's Exports page inside the Airflow UI.

`app.create_app()` is the FastAPI app that Airflow's API server mounts at `/portability`
(`plugins/exports_page.py` registers it, with an Exports entry in Airflow's navigation that shows
the page inside the UI). `rows` turns the ledger's requests into what the page shows; the page
itself is `templates/exports.html`. Nothing here is imported by a DAG or a task.
"""
