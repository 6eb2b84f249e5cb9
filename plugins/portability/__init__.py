"""The ESP data-portability export pipeline: an account's data as a verifiable archive.

Subpackages, by responsibility; the `portability` command (`cli`) sits on top of them, and the
DAGs call the same steps:

    records     the JSON Schemas of the records, their validation, how values are rendered
    pipeline    the export's steps (plan, snapshot, shards, package, cleanup) and the typed
                records they hand each other (`pipeline.model`)
    archive     the archive: ZIP, BagIt bag, Frictionless data package, Parquet, its README;
                deflating and verifying it
    resources   what the steps talk to: connections, the source, the object store (every object
                key in `resources.keys`), the request ledger, notifications, Airflow's API
    service     requests, their ledger, delivery, retention, schedules and deadlines

The words for the chunks data moves in, the only three:

    piece   `piece_rows` consecutive rows of one category, in key order: the unit of validation,
            rendering and compression. Each text file is deflated piece by piece, each piece on
            its own (a "deflated piece", see `archive.deflate`), so a piece's bytes do not depend
            on who made them and the archive is the same however its pieces were shared out.
    shard   a run of a category's pieces that one task exports (`shard_rows`); it only spreads
            the work.
    part    a part of the archive's S3 multipart upload. A big file's parts are sent while it
            is written (its "sent parts"); its first and last bytes are held back for packaging.

Nothing in this package touches the Airflow task context: the DAG files do that.
"""

__version__ = "0.1.0"
