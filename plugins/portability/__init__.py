"""Library of the ESP data-portability export pipeline.

Everything the DAGs and the `portability` command do lives here, as plain functions that
take plain arguments; nothing in this package touches the Airflow task context.
"""

__version__ = "0.1.0"
