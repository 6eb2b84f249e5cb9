"""The export's steps: plan, snapshot, shards, package, cleanup."""
