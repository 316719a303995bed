"""format_entries: one readable line per entry, signed heads set apart."""

from __future__ import annotations

from ledger_run import build_run, log_round, start_run

from fedgen.ledger import Ledger, format_entries


def test_one_line_per_entry_in_log_order_with_heads_after_what_they_cover(tmp_path):
    run = build_run(tmp_path / "run", rounds=2, clients=2)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        lines = format_entries(ledger)
        size = ledger.size
        heads = ledger.heads()
    entry_lines = [line for line in lines[1:] if "-- tree head" not in line]
    head_lines = [line for line in lines if "-- tree head" in line]
    assert len(entry_lines) == size and len(head_lines) == len(heads)
    assert lines[0].split() == ["seq", "round", "kind", "details"]
    assert entry_lines[0].split()[:3] == ["0", "-", "run_start"]
    assert f"run {run.run_id[:12]}…" in entry_lines[0]
    # The first head (size 3: run_start and two enrols) comes right after seq 2.
    assert lines.index(head_lines[0]) == lines.index(entry_lines[2]) + 1
    assert "tree head size 3 (before round 0)" in head_lines[0]
    update = next(line for line in entry_lines if " update " in line)
    # run_start (0), two enrols (1, 2), round 0 starts (3), then client 0's update (4).
    assert update.split()[:5] == ["4", "0", "update", "client", "0"]
    assert all(len(line) <= 120 for line in lines)


def test_round_filter_shows_that_round_and_its_head_only(tmp_path):
    run = start_run(tmp_path / "run", clients=3)
    log_round(run, 0)
    log_round(run, 1, failed=(1,), secure=True)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        lines = format_entries(ledger, round=1)
    kinds = [line.split()[2] for line in lines[1:] if "-- tree head" not in line]
    assert kinds == ["round_start", "failure", "aggregate", "checkpoint"]
    assert "client 1  reason: timed out" in lines[2]
    assert "clients [0, 2]  secure, sum" in lines[3]
    assert "checkpoints/round_0001.ckpt" in lines[4]
    assert "tree head" in lines[5] and "(round 1)" in lines[5] and len(lines) == 6
