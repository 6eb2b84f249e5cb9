"""The planner's row estimates, read from EXPLAIN (FORMAT JSON) plans."""

from __future__ import annotations

from portability.resources.source import largest_step


def _node(node_type: str, rows: float, *children: dict, **extra) -> dict:
    return {"Node Type": node_type, "Plan Rows": rows, "Plans": list(children), **extra}


def test_a_join_estimated_too_small_takes_the_largest_step_of_its_plan():
    # The shape of list_members' plan: a join on correlated keys is estimated far below the scan feeding it.
    plan = _node("Sort", 748, _node("Hash Join", 3_428, _node("Seq Scan", 2_000_000), _node("Hash", 10)))
    assert largest_step(plan) == 2_000_000


def test_parallel_counts_are_per_process_and_the_leader_takes_part():
    scan = _node("Parallel Seq Scan", 800_000, **{"Parallel Aware": True})
    plan = _node("Gather Merge", 1_000, _node("Sort", 400, _node("Hash Join", 500, scan, _node("Hash", 10))),
                 **{"Workers Planned": 2})
    assert largest_step(plan) == 2_400_000


def test_a_plain_plan_is_its_output():
    assert largest_step(_node("Index Scan", 1_021_214)) == 1_021_214


def test_a_nested_loops_inner_side_counts_once_per_outer_row():
    # EXPLAIN gives the inner index scan's rows per list, not for all of the account's lists.
    inner = _node("Index Scan", 49)
    plan = _node("Incremental Sort", 2, _node("Nested Loop", 1, _node("Nested Loop", 2, _node("Index Scan", 5), inner)))
    assert largest_step(plan) == 245


def test_a_parallel_nested_loops_inner_side_runs_for_the_outer_rows_of_every_process():
    # The outer scan's 100,000 rows are one process's of three; each of all 300,000 outer rows finds 3 members.
    # The join's own estimates (correlated keys) are far too small, as for list_members.
    outer = _node("Parallel Seq Scan", 100_000, **{"Parallel Aware": True})
    plan = _node("Gather", 9_000, _node("Nested Loop", 3_000, outer, _node("Index Scan", 3)), **{"Workers Planned": 2})
    assert largest_step(plan) == 900_000
