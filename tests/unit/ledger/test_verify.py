"""verify_run on honest run folders, and on each way of tampering with one."""

from __future__ import annotations

import shutil

import pytest
import torch
from ledger_run import (
    build_run,
    log_round,
    resume_from,
    rewrite_body,
    save_checkpoint,
    seqs_of,
    start_run,
    tamper,
    write_config,
)

from fedgen.ledger import (
    Ledger,
    LedgerReport,
    generate_key,
    public_key_hex,
    sign,
    state_digest,
    update_message,
    verify_run,
)


def problem(report: LedgerReport, *fragments: str) -> str:
    """The one problem line holding every fragment; fails the test with the report if none."""
    hits = [p for p in report.problems if all(f in p for f in fragments)]
    assert hits, f"no problem mentions {fragments}:\n" + "\n".join(report.lines())
    return hits[0]


def body_of(run, seq: int) -> dict:
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        return next(e.body for e in ledger.entries() if e.seq == seq)


# -- honest runs -------------------------------------------------------------------------------


def test_an_honest_run_verifies_with_its_counts(tmp_path):
    run = build_run(tmp_path / "run", rounds=4, clients=3)
    report = verify_run(run.run_dir, anchors=run.anchors)
    assert report.ok, report.lines()
    assert report.counts["entries"] == 1 + 3 + 4 * 6
    assert report.counts["tree heads"] == 5
    assert report.counts["rounds"] == 4
    assert report.counts["clients"] == 3
    assert report.counts["updates"] == 12
    assert report.counts["checkpoint files"] == 4
    assert report.notes == []
    assert report.lines()[0].startswith("ledger OK")


def test_failures_secure_aggregation_and_pruned_checkpoints_verify(tmp_path):
    run = start_run(tmp_path / "run", clients=4, rounds=3)
    log_round(run, 0, failed=(2,))
    log_round(run, 1, secure=True)
    log_round(run, 2, failed=(0, 3), secure=True)
    (run.run_dir / "checkpoints" / "round_0000.ckpt").unlink()  # pruned: fine
    report = verify_run(run.run_dir, server_public_key=public_key_hex(run.server_key))
    assert report.ok, report.lines()
    assert report.counts["failures"] == 3
    assert report.counts["updates"] == 3
    assert report.counts["checkpoint files"] == 2


def test_a_resumed_run_verifies_and_notes_rounds_whose_aggregate_changed(tmp_path):
    run = build_run(tmp_path / "run", rounds=4)
    resume_from(run, 1)
    for r in (2, 3):  # the random deltas differ from the first logging
        log_round(run, r)
    report = verify_run(run.run_dir, anchors=run.anchors)
    assert report.ok, report.lines()
    assert any(
        "round 2: re-logged after a resume with a different aggregate" in n for n in report.notes
    )
    assert report.counts["resumes"] == 1


@pytest.mark.parametrize("digest", ["logged", "other"])
def test_a_resume_from_other_bytes_than_the_logged_checkpoint_is_a_problem(tmp_path, digest):
    # Prepare: a resume naming round 1's checkpoint, with its logged digest or another
    run = build_run(tmp_path / "run", rounds=3)
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        [logged] = [e for e in ledger.entries(kind="checkpoint") if e.round == 1]
    named = logged.body["digest"] if digest == "logged" else "0" * 64
    resume_from(run, 1, digest=named)
    log_round(run, 2)
    # Execute
    report = verify_run(run.run_dir, anchors=run.anchors)
    # Assert
    problem = "round 1: resumed from checkpoints/round_0001.ckpt with sha256 000000000000"
    assert report.ok == (digest == "logged"), report.lines()
    assert any(problem in p for p in report.problems) == (digest == "other")


def test_a_run_stopped_mid_round_is_noted_and_its_unsigned_tail_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    with Ledger.open(run.ledger_path) as ledger:
        ledger.append(
            "round_start",
            {
                "round": 2,
                "global_digest": state_digest(run.state),
                "cohort": [0, 1, 2],
                "config": {},
            },
        )
    report = verify_run(run.run_dir)
    problem(report, "1 entries after the last signed tree head", "round 2", "unsigned")
    assert any("round 2: no aggregate entry; the run stopped during it" in n for n in report.notes)


# -- tampering -------------------------------------------------------------------------------


def test_an_edited_row_with_its_leaf_hash_recomputed_is_caught_by_the_signed_head(tmp_path):
    run = build_run(tmp_path / "run", rounds=4)
    seq = seqs_of(run, "aggregate", round=2)[0]
    body = body_of(run, seq)
    rewrite_body(run, seq, {**body, "digest": "0" * 64})
    report = verify_run(run.run_dir)
    assert not report.ok
    span = f"seq {run.anchors[1][0]}..{run.anchors[2][0] - 1} (round 2)"
    assert run.anchors[1][0] <= seq < run.anchors[2][0]
    line = problem(report, "round 2: tree head", "signed root differs", span)
    assert "changed, inserted, removed or reordered" in line
    problem(report, "consistency proof", "does not verify")
    problem(report, "no valid inclusion proof")


def test_an_edited_row_without_rehashing_names_the_entry(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    seq = seqs_of(run, "failure") or seqs_of(run, "aggregate", round=1)
    tamper(
        run,
        'UPDATE entries SET body = replace(body, \'"secure":false\', \'"secure":true,"x":1\')'
        f" WHERE seq = {seq[0]}",
    )
    report = verify_run(run.run_dir)
    problem(report, f"round 1 (aggregate, seq {seq[0]}): stored leaf hash does not match")


def test_a_dropped_round_is_named(tmp_path):
    run = build_run(tmp_path / "run", rounds=5)
    seqs = sorted(_round_seqs(run, 2))
    first, last, k = seqs[0], seqs[-1], len(seqs)
    big = 1_000_000
    tamper(
        run,
        f"DELETE FROM entries WHERE seq BETWEEN {first} AND {last}",
        f"UPDATE entries SET seq = seq + {big} WHERE seq > {last}",
        f"UPDATE entries SET seq = seq - {big} - {k} WHERE seq > {big}",
    )
    (run.run_dir / "checkpoints" / "round_0002.ckpt").unlink()
    report = verify_run(run.run_dir)
    problem(report, "round 2: missing between round 1 and round 3", "dropped round")
    problem(report, "signed root differs")


def _round_seqs(run, r: int) -> list[int]:
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        return [e.seq for e in ledger.entries(round=r)]


def test_two_clients_updates_swapped_between_them_are_named(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    a, b = seqs_of(run, "update", round=1)[:2]
    body_a, body_b = body_of(run, a), body_of(run, b)
    # Each client's update now claims the other's digest, size and signature.
    rewrite_body(run, a, {**body_b, "client_id": body_a["client_id"]})
    rewrite_body(run, b, {**body_a, "client_id": body_b["client_id"]})
    report = verify_run(run.run_dir)
    problem(report, "round 1, client 0: update signature does not verify")
    problem(report, "round 1, client 1: update signature does not verify")
    problem(report, "round 1: tree head", "signed root differs")


def test_a_reordered_pair_of_leaves_is_caught_and_its_round_named(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    a, b = seqs_of(run, "update", round=2)[:2]
    big = 1_000_000
    tamper(
        run,
        f"UPDATE entries SET seq = {big} WHERE seq = {a}",
        f"UPDATE entries SET seq = {a} WHERE seq = {b}",
        f"UPDATE entries SET seq = {b} WHERE seq = {big}",
    )
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        moved = [e.body["client_id"] for e in ledger.entries(round=2, kind="update")]
    assert moved[:2] == [1, 0]
    report = verify_run(run.run_dir)
    span = f"seq {run.anchors[1][0]}..{run.anchors[2][0] - 1} (round 2)"
    problem(report, "round 2: tree head", "signed root differs", span)


def test_an_update_re_signed_with_a_new_key_is_named(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    seq = seqs_of(run, "update", round=1)[2]
    body = body_of(run, seq)
    forged_digest = "f" * 64
    mallory = generate_key()
    signature = sign(mallory, update_message(run.run_id, 1, 2, forged_digest))
    rewrite_body(run, seq, {**body, "digest": forged_digest, "signature": signature})
    report = verify_run(run.run_dir)
    problem(report, "round 1, client 2: update signature does not verify", f"seq {seq}")
    problem(report, "round 1: tree head", "signed root differs")


def test_a_signed_update_logged_again_in_a_later_round_is_a_replay(tmp_path):
    # Prepare: the server itself logs round 2 with client 2's round-1 update (its own
    # valid signature, "signed_round": 1) and signs the heads over it, forging client 2's
    # part in a round it took no part in.
    run = start_run(tmp_path / "run", rounds=3)
    log_round(run, 0)
    log_round(run, 1)
    old = body_of(run, seqs_of(run, "update", round=1)[2])
    with Ledger.open(run.ledger_path) as ledger:
        ledger.append(
            "round_start",
            {
                "round": 2,
                "global_digest": state_digest(run.state),
                "cohort": [0, 1, 2],
                "config": {"lr": 0.05, "local_steps": 2},
            },
        )
        for c in (0, 1):
            digest = "%064x" % (c + 7)
            signature = sign(run.client_keys[c], update_message(run.run_id, 2, c, digest))
            body = {"round": 2, "client_id": c, "digest": digest, "num_examples": 100 + c}
            ledger.append("update", {**body, "signature": signature})
        ledger.append("update", {**old, "round": 2, "signed_round": 1})
        ledger.append(
            "aggregate",
            {
                "round": 2,
                "digest": state_digest(run.state),
                "secure": False,
                "sum_digest": None,
                "clients": [0, 1, 2],
            },
        )
        save_checkpoint(run, ledger, 2)
        run.anchors.append(ledger.sign_head(2, run.server_key).anchor)
    # Execute
    report = verify_run(run.run_dir)
    # Assert: named as a replay; its signature alone verifies, so nothing else would.
    problem(report, "round 2, client 2: the update signed for round 1", "already logged in round 1")
    assert len(report.problems) == 1, report.problems


def test_re_enrolling_a_client_under_a_new_key_is_caught_by_the_first_head(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    mallory = generate_key()
    enrol = seqs_of(run, "enrol")[2]
    rewrite_body(run, enrol, {"client_id": 2, "public_key": public_key_hex(mallory)})
    report = verify_run(run.run_dir)
    problem(report, "before round 0: tree head", "signed root differs", "enrol", "clients 0, 1, 2")
    problem(report, "round 0, client 2: update signature does not verify")


def test_two_clients_sharing_one_key_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    seqs = seqs_of(run, "enrol")
    rewrite_body(run, seqs[1], {"client_id": 1, "public_key": body_of(run, seqs[0])["public_key"]})
    report = verify_run(run.run_dir)
    problem(report, "client 1: enrols the public key of client 0")


def test_a_replaced_checkpoint_file_is_named(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    path = run.run_dir / "checkpoints" / "round_0001.ckpt"
    torch.save({"round": 1, "state": {k: v + 1 for k, v in run.state.items()}}, path)
    report = verify_run(run.run_dir)
    problem(report, "round 1: checkpoint checkpoints/round_0001.ckpt differs from its ledger entry")
    assert len(report.problems) == 1, report.lines()


def test_a_replaced_checkpoint_relogged_in_an_unsigned_tail_is_still_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    run.state = {k: v * 0 for k, v in run.state.items()}
    with Ledger.open(run.ledger_path) as ledger:
        save_checkpoint(run, ledger, 1)  # the attacker logs the replacement, but cannot sign
    report = verify_run(run.run_dir)
    problem(report, "entries after the last signed tree head", "unsigned")


def test_a_logged_checkpoint_copied_under_another_name_is_named_a_copy(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    shutil.copy(
        run.run_dir / "checkpoints" / "round_0001.ckpt",
        run.run_dir / "checkpoints" / "round_0007.ckpt",
    )
    report = verify_run(run.run_dir)
    problem(
        report,
        "checkpoints/round_0007.ckpt: no checkpoint entry names this file",
        "bytes are those logged for checkpoints/round_0001.ckpt: a copy",
    )


def test_a_checkpoint_written_without_a_ledger_is_uncovered_not_called_tampered(tmp_path):
    # Prepare: after round 1 the run went on without its ledger (resumed with ledger: false)
    # and wrote round 2's checkpoint, which no entry names.
    run = build_run(tmp_path / "run", rounds=2)
    later = {k: v + 0.5 for k, v in run.state.items()}
    torch.save({"round": 2, "state": later}, run.run_dir / "checkpoints" / "round_0002.ckpt")
    # Execute
    report = verify_run(run.run_dir, anchors=run.anchors)
    # Assert: still a problem (nothing vouches for the file), worded as what verify knows.
    line = problem(report, "checkpoints/round_0002.ckpt: no checkpoint entry names this file")
    assert "does not cover it" in line and "ledger: false" in line, line
    assert "added from outside" not in line and "a copy" not in line, line
    assert len(report.problems) == 1, report.lines()


@pytest.mark.parametrize("keep", [0, 100, 4096, 0.5, -4096, -1])
def test_a_truncated_database_file_is_a_clear_problem_not_a_traceback(tmp_path, keep):
    run = build_run(tmp_path / "run", rounds=6)
    data = run.ledger_path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    run.ledger_path.write_bytes(data[:cut])
    report = verify_run(run.run_dir)
    assert not report.ok
    line = problem(report, "ledger:", "ledger.sqlite")
    assert "truncated" in line or "not a fedgen ledger" in line or "empty" in line, line


def test_a_missing_ledger_is_a_problem(tmp_path):
    report = verify_run(tmp_path)
    line = problem(report, "ledger: no ledger at", "`ledger: false` keeps none")
    assert "create=True" not in line, line


def test_a_round_logged_twice_without_a_resume_is_a_silent_fork(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    log_round(run, 1)
    report = verify_run(run.run_dir)
    problem(report, "round 1: logged again", "no resume entry", "silent fork")


def test_a_resume_from_an_unlogged_checkpoint_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=3)
    with Ledger.open(run.ledger_path) as ledger:
        ledger.append(
            "resume", {"from_round": 1, "checkpoint": "checkpoints/other.ckpt", "head_size": 5}
        )
    log_round(run, 2)
    report = verify_run(run.run_dir)
    problem(report, "round 1: resume from checkpoints/other.ckpt", "no checkpoint entry")


def test_a_pinned_server_key_other_than_the_logged_one_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    report = verify_run(run.run_dir, server_public_key=public_key_hex(generate_key()))
    problem(report, "not the pinned key")
    problem(report, "signature does not verify under the server key", "so do 2 later tree heads")


def test_a_forged_tree_head_signed_by_another_key_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    seq = seqs_of(run, "aggregate", round=1)[0]
    rewrite_body(run, seq, {**body_of(run, seq), "digest": "1" * 64})
    with Ledger.open(run.ledger_path, readonly=True) as ledger:
        head, root = ledger.head(), ledger.root()
    assert head is not None
    forged = type(head)(head.size, root, head.round, "")
    signature = sign(generate_key(), forged.message(run.run_id))
    tamper(
        run,
        "UPDATE tree_heads SET root = ?, signature = ? WHERE size = ?",
        params=(root, signature, head.size),
    )
    report = verify_run(run.run_dir)
    problem(report, f"round 1: tree head size {head.size}: signature does not verify")


def test_a_ledger_cut_back_to_a_valid_prefix_is_caught_by_anchors(tmp_path):
    run = build_run(tmp_path / "run", rounds=4)
    size = run.anchors[1][0]
    tamper(
        run,
        f"DELETE FROM entries WHERE seq >= {size}",
        f"DELETE FROM tree_heads WHERE size > {size}",
    )
    for r in (2, 3):
        (run.run_dir / "checkpoints" / f"round_{r:04d}.ckpt").unlink()
    assert verify_run(run.run_dir).ok  # a valid, shorter log on its own
    report = verify_run(run.run_dir, anchors=run.anchors)
    problem(report, f"anchor at size {run.anchors[3][0]}", f"only {size} entries", "truncated")


def test_an_anchor_from_a_different_history_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    other = build_run(tmp_path / "other", rounds=2)
    report = verify_run(run.run_dir, anchors=[other.anchors[0]])
    problem(report, f"anchor at size {other.anchors[0][0]}", "not consistent")


# -- config.yaml -------------------------------------------------------------------------------


def _edit_config(run, old: str, new: str) -> None:
    path = run.run_dir / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_config_yaml_edited_after_the_run_is_a_problem(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    _edit_config(run, "\nseed: 0\n", "\nseed: 9\n")
    report = verify_run(run.run_dir, anchors=run.anchors)
    line = problem(report, "config.yaml: its fingerprint", "run_start signed")
    assert write_config(tmp_path, "seed=9") in line, line  # the edited file's fingerprint
    assert len(report.problems) == 1, report.lines()


def test_config_yaml_changes_that_leave_the_weights_alone_verify(tmp_path):
    run = build_run(tmp_path / "run", rounds=2)
    _edit_config(run, "name: fmnist-cgan-dirichlet0.5", "name: renamed")
    report = verify_run(run.run_dir, anchors=run.anchors)
    assert report.ok, report.lines()
    assert report.notes == []


def test_a_resume_entry_with_a_new_fingerprint_is_what_config_yaml_must_match(tmp_path):
    # Prepare: a resume after round 1 whose entry signs another config's fingerprint.
    run = build_run(tmp_path / "run", rounds=3)
    resumed = write_config(tmp_path, "seed=9")
    resume_from(run, 1, fingerprint=resumed)
    log_round(run, 2)
    # Execute: the run start's config, then the resumed one.
    stale = verify_run(run.run_dir, anchors=run.anchors)
    write_config(run.run_dir, "seed=9")
    current = verify_run(run.run_dir, anchors=run.anchors)
    # Assert
    problem(stale, "config.yaml: its fingerprint", f"is not {resumed}", "resume entry")
    assert current.ok, current.lines()


def test_an_unreadable_config_yaml_is_a_problem_not_a_traceback(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    (run.run_dir / "config.yaml").write_text("seed: [0\n")
    report = verify_run(run.run_dir)
    problem(report, "config.yaml: cannot be read as the run's recipe", "not valid YAML")


def test_a_missing_config_yaml_is_a_note(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    (run.run_dir / "config.yaml").unlink()
    report = verify_run(run.run_dir)
    assert report.ok, report.lines()
    assert any(n.startswith("config.yaml: missing") for n in report.notes), report.lines()
