"""What the pipeline talks to: configuration and connections, the source, the object store, the ledger,
notifications and Airflow's API."""
