"""Development tooling beside the product, never part of it: the embedded PostgreSQL and S3 server
(`embedded`), the local set-up of the README (`local`), synthetic accounts (`seed`) and the quick
start's demo (`demo`).

Installed by `scripts/setup` into the development virtualenv only; the product package
(`plugins/portability`) and the deployment image (`docker/`) do not carry it. The `portability`
command reaches it only for `seed`, `stores`, `demo` and `--dev-stores`.
"""
