"""The ledger of real runs: written by the round loop, checked by `fedgen ledger verify`."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch
from cli_runner import fedgen_here
from tiny_federation import tiny_config

from fedgen import experiment
from fedgen.engine.backends import local_training
from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from fedgen.engine.keystore import KeyStore
from fedgen.errors import CheckpointError
from fedgen.experiment import run_experiment
from fedgen.ledger import LEDGER_FILE, Ledger, generate_key, sign, state_digest, update_message


def _cfg(mnist_dir, **overrides):
    return tiny_config(mnist_dir, **{"eval.every": 0, "eval.final": False, **overrides})


def _verify(run_dir, check=True):
    return fedgen_here("ledger", "verify", str(run_dir), check=check)


@pytest.fixture(scope="module")
def run_dir(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ledger") / "run"
    run_experiment(_cfg(mnist_dir), out, progress=False)
    return out


def test_a_run_logs_every_round_and_verifies(run_dir):
    # Execute
    result = _verify(run_dir)
    # Assert: three rounds of signed updates, and the final model is the last aggregate.
    assert "ledger verified" in result.stdout and "3 rounds" in result.stdout
    with Ledger.open(run_dir / LEDGER_FILE, readonly=True) as ledger:
        aggregates = ledger.entries(kind="aggregate")
        updates = ledger.entries(kind="update")
        assert [e.round for e in aggregates] == [0, 1, 2]
        assert len(updates) == 12  # every client, every round
    _, newest = list_checkpoints(run_dir / "checkpoints")[-1]
    final = load_checkpoint(newest)["federation"]["global_state"]
    assert aggregates[-1].body["digest"] == state_digest(final)


def test_worker_processes_sign_what_the_server_logs(mnist_dir, tmp_path):
    out = tmp_path / "pool"
    cfg = _cfg(
        mnist_dir,
        **{
            "backend.name": "process_pool",
            "backend.params": "{workers: 2}",
            "federation.rounds": 2,
        },
    )
    run_experiment(cfg, out, progress=False)
    assert "8 updates" in _verify(out).stdout


def test_a_resumed_run_continues_its_log_and_matches_an_uninterrupted_one(mnist_dir, tmp_path):
    # Prepare: an uninterrupted 4-round run, and a 3-round run killed after round 2 was
    # logged but before its checkpoint took its name (round 2's file is missing).
    ref = tmp_path / "ref"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 4}), ref, progress=False)
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir), run, progress=False)
    list_checkpoints(run / "checkpoints")[-1][1].unlink()
    # Execute
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 4}), run, progress=False, resume=True)
    # Assert: the resume is logged, round 2 logged again identically, the log verifies
    # with no note of divergence, and the model is the uninterrupted run's.
    result = _verify(run)
    assert "1 resumes" in result.stdout and "note:" not in result.stdout
    with Ledger.open(run / LEDGER_FILE, readonly=True) as ledger:
        resume = ledger.entries(kind="resume")[0]
        assert resume.body["from_round"] == 1
        twice = [e.body["digest"] for e in ledger.entries(round=2, kind="aggregate")]
    assert len(twice) == 2 and twice[0] == twice[1]
    with Ledger.open(ref / LEDGER_FILE, readonly=True) as ledger:
        want = ledger.entries(round=3, kind="aggregate")[0].body["digest"]
    with Ledger.open(run / LEDGER_FILE, readonly=True) as ledger:
        assert ledger.entries(round=3, kind="aggregate")[0].body["digest"] == want


def test_a_replaced_checkpoint_and_an_edited_row_are_named(run_dir, tmp_path):
    # Prepare: one copy with round 2's checkpoint swapped for round 1's, one with an
    # update's digest edited in the database (and its leaf hash recomputed).
    swapped = tmp_path / "swapped"
    shutil.copytree(run_dir, swapped)
    files = [p for _, p in list_checkpoints(swapped / "checkpoints")]
    shutil.copyfile(files[0], files[-1])
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    db = sqlite3.connect(edited / LEDGER_FILE)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    seq, body = db.execute("SELECT seq, body FROM entries WHERE kind='update' LIMIT 1").fetchone()
    at = body.index('"digest":"') + len('"digest":"')
    forged = body[:at] + ("1" if body[at] == "0" else "0") + body[at + 1 :]
    db.execute("UPDATE entries SET body=? WHERE seq=?", (forged, seq))
    db.commit()
    db.close()
    # Execute
    bad_ckpt = _verify(swapped, check=False)
    bad_row = _verify(edited, check=False)
    # Assert
    assert bad_ckpt.returncode == 1 and "round_0002.ckpt differs" in bad_ckpt.stdout
    assert bad_row.returncode == 1 and "problem:" in bad_row.stdout


def test_a_config_yaml_edited_after_the_run_fails_verify_as_sample_would(run_dir, tmp_path):
    # Prepare: the review's reproduction, the seed changed in the run folder's recipe.
    edited = tmp_path / "edited"
    shutil.copytree(run_dir, edited)
    config = edited / "config.yaml"
    text = config.read_text()
    assert "\nseed: 0\n" in text
    config.write_text(text.replace("\nseed: 0\n", "\nseed: 9\n", 1))
    # Execute
    result = _verify(edited, check=False)
    # Assert
    assert result.returncode == 1, result.stdout
    assert "problem: config.yaml: its fingerprint" in result.stdout
    assert "run_start signed" in result.stdout
    # fedgen sample refuses the edited run and says to put the config back, not to resume.
    sampled = fedgen_here("sample", str(edited), "--out", str(tmp_path / "s.png"), check=False)
    assert sampled.returncode == 2
    said = " ".join(sampled.stderr.split())
    assert "put back the config.yaml the run wrote" in said and "resume" not in said


def test_an_update_signed_with_another_key_is_refused_and_logged_as_a_failure(
    mnist_dir, tmp_path, monkeypatch
):
    # Prepare: client 1 signs with a key it never enrolled (an impostor).
    impostor = generate_key()
    honest = local_training.sign_result

    def sign_result(result, keys, round):
        honest(result, keys, round)
        if keys is not None and result.client_id == 1 and result.update is not None:
            digest = state_digest(result.update)
            result.signature = sign(impostor, update_message(keys.run_id, round, 1, digest))

    monkeypatch.setattr(local_training, "sign_result", sign_result)
    out = tmp_path / "impostor"
    cfg = _cfg(mnist_dir, **{"strategy.params": "{fraction: 1.0, min_clients: 1}"})
    # Execute
    summary = run_experiment(cfg, out, progress=False)
    # Assert: client 1 failed every round, the rest aggregated, the log verifies.
    assert summary["failures"] == 3
    with Ledger.open(out / LEDGER_FILE, readonly=True) as ledger:
        failures = ledger.entries(kind="failure")
        assert {e.body["client_id"] for e in failures} == {1}
        assert all("signature" in e.body["reason"] for e in failures)
        assert all(e.body["client_id"] != 1 for e in ledger.entries(kind="update"))
    _verify(out)


def test_no_ledger_when_the_recipe_turns_it_off(mnist_dir, tmp_path):
    out = tmp_path / "off"
    run_experiment(
        _cfg(mnist_dir, **{"ledger": False, "federation.rounds": 1}), out, progress=False
    )
    assert not (out / LEDGER_FILE).exists()
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1][1])["federation"]
    assert "audit" not in state and torch.is_tensor(next(iter(state["global_state"].values())))
    # verify and show say the run kept no ledger, not how to create one in Python.
    for command in ("verify", "show"):
        result = fedgen_here("ledger", command, str(out), check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "has no ledger.sqlite" in output and "`ledger: false` keeps none" in output
        assert "create=True" not in output, output


def test_signing_keys_live_in_the_key_store_not_in_the_run_folder(run_dir):
    # Prepare
    state = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1][1])["federation"]
    with Ledger.open(run_dir / LEDGER_FILE, readonly=True) as ledger:
        run_id = ledger.run_start["run_id"]
    store = KeyStore()
    # Assert: checkpoints hold the run id and last head only; the store, owner-only,
    # holds the keys and every signed head.
    assert set(state["audit"]) == {"run_id", "anchor"} and state["audit"]["run_id"] == run_id
    key_file = store.directory / f"{run_id}.keys.json"
    assert key_file.stat().st_mode & 0o077 == 0
    assert len(store.heads(run_id)) == 7  # enrolment, then each round and its checkpoint
    assert "pinned by the key store" in _verify(run_dir).stdout


def test_a_log_cut_back_with_its_checkpoints_deleted_is_caught_by_the_stored_heads(
    run_dir, tmp_path
):
    # Prepare: an attacker holding the run folder, not the key store, cuts the log back
    # to its state after round 0 and deletes the checkpoints that remembered more.
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    db = sqlite3.connect(cut / LEDGER_FILE)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    (size,) = db.execute("SELECT MAX(size) FROM tree_heads WHERE round = 0").fetchone()
    db.execute("DELETE FROM entries WHERE seq >= ?", (size,))
    db.execute("DELETE FROM tree_heads WHERE size > ?", (size,))
    db.commit()
    db.close()
    shutil.rmtree(cut / "checkpoints")
    # Execute
    result = _verify(cut, check=False)
    # Assert
    assert result.returncode == 1, result.stdout
    assert "problem:" in result.stdout


def test_resume_without_the_key_store_says_what_to_do(mnist_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), run, progress=False)
    monkeypatch.setenv("FEDGEN_KEY_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(CheckpointError, match="key store") as refused:
        run_experiment(
            _cfg(mnist_dir, **{"federation.rounds": 2}), run, progress=False, resume=True
        )
    # The advice is one a resume accepts (it refuses --set ledger=false).
    assert "federation.init_from=" in str(refused.value)
    assert "ledger=false" not in str(refused.value)


def test_a_malformed_server_key_is_a_usage_error_not_a_ledger_problem(run_dir):
    result = fedgen_here("ledger", "verify", str(run_dir), "--server-key", "zzzz", check=False)
    assert result.returncode == 2
    assert "--server-key: expected an Ed25519 public key" in result.stderr
    assert "problem" not in result.stdout and "NOT verified" not in result.stderr


def test_a_copied_run_folder_cannot_fork_the_log_but_a_moved_one_resumes(mnist_dir, tmp_path):
    # Prepare: a 2-round run and a copy of its folder (the same run id, the same heads).
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 2}), run, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    longer = _cfg(mnist_dir, **{"federation.rounds": 3})
    # Execute / Assert: the copy cannot go on while the original holds the run, and verify
    # says which folder the key store follows.
    with pytest.raises(CheckpointError, match="is a copy of the run in"):
        run_experiment(longer, copy, progress=False, resume=True)
    assert f"records this run in {run.resolve()}" in _verify(copy).stdout
    # The original goes on and still verifies. Moved away, it takes the record over; the
    # copy, behind the heads the store signed since, still cannot go on.
    run_experiment(longer, run, progress=False, resume=True)
    assert "ledger verified" in _verify(run).stdout
    moved = tmp_path / "moved"
    run.rename(moved)
    with pytest.raises(CheckpointError, match="older copy of the run"):
        run_experiment(longer, copy, progress=False, resume=True)
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 4}), moved, progress=False, resume=True)
    result = _verify(moved)
    assert "ledger verified" in result.stdout and "records this run" not in result.stdout


def test_a_resume_refused_at_the_start_closes_its_ledger_and_backend(
    mnist_dir, tmp_path, monkeypatch
):
    # Prepare: a copy of a run folder, whose resume the ledger callback refuses after it
    # opened the log; note every log opened and closed, and the backend's close.
    from fedgen.engine.backends.inprocess import InProcessBackend

    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), run, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    opened, closed, backends = [], [], []
    real_open, real_close = Ledger.open.__func__, Ledger.close
    real_backend_close = InProcessBackend.close

    def spy_open(cls, *args, **kwargs):
        ledger = real_open(cls, *args, **kwargs)
        opened.append(ledger)
        return ledger

    def spy_close(self):
        closed.append(self)
        real_close(self)

    def spy_backend_close(self):
        backends.append(self)
        real_backend_close(self)

    monkeypatch.setattr(Ledger, "open", classmethod(spy_open))
    monkeypatch.setattr(Ledger, "close", spy_close)
    monkeypatch.setattr(InProcessBackend, "close", spy_backend_close)
    # Execute
    with pytest.raises(CheckpointError, match="is a copy of the run in"):
        run_experiment(
            _cfg(mnist_dir, **{"federation.rounds": 2}), copy, progress=False, resume=True
        )
    # Assert: nothing of the refused run stays open
    assert opened and all(any(c is o for c in closed) for o in opened)
    assert len(backends) == 1


def test_verify_does_not_call_a_moved_run_a_copy_of_a_new_run_at_its_old_path(mnist_dir, tmp_path):
    # Prepare: a run moved to an archive, and a new run started at the old path.
    first = tmp_path / "runs" / "x"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), first, progress=False)
    archived = tmp_path / "archive"
    first.rename(archived)
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), first, progress=False)
    # Execute
    result = _verify(archived)
    # Assert: the archive verifies, and is not called a copy.
    assert "ledger verified" in result.stdout and "is a copy" not in result.stdout


def test_a_log_replaced_by_one_signed_under_a_key_of_ones_own_is_caught(
    mnist_dir, tmp_path, monkeypatch
):
    # Prepare: the victim's run, and the attacker's run of the same recipe kept with a key
    # store of their own (so the store knows neither its run id nor its key).
    victim = tmp_path / "victim"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), victim, progress=False)
    kept = str(KeyStore().directory)
    monkeypatch.setenv("FEDGEN_KEY_DIR", str(tmp_path / "attacker-keys"))
    forged = tmp_path / "forged"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), forged, progress=False)
    monkeypatch.setenv("FEDGEN_KEY_DIR", kept)
    assert "ledger verified" in _verify(victim).stdout
    # Execute: the attacker, holding the victim's folder only, swaps in their log and
    # checkpoints, every signature and head consistent with one another.
    shutil.copyfile(forged / LEDGER_FILE, victim / LEDGER_FILE)
    shutil.rmtree(victim / "checkpoints")
    shutil.copytree(forged / "checkpoints", victim / "checkpoints")
    result = _verify(victim, check=False)
    # Assert
    assert result.returncode == 1, result.stdout
    assert "which the store does not know: the log was replaced" in result.stdout


def test_a_checkpoint_of_another_run_is_named(run_dir, mnist_dir, tmp_path):
    # Prepare: a copy of the run whose newest checkpoint is another run's
    other = tmp_path / "other"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), other, progress=False)
    swapped = tmp_path / "swapped"
    shutil.copytree(run_dir, swapped)
    _, newest = list_checkpoints(swapped / "checkpoints")[-1]
    _, theirs = list_checkpoints(other / "checkpoints")[-1]
    shutil.copyfile(theirs, newest)
    # Execute
    result = _verify(swapped, check=False)
    # Assert
    assert result.returncode == 1
    assert f"checkpoint {newest.name} belongs to run" in result.stdout


def test_resume_refuses_a_checkpoint_replaced_with_a_well_formed_other_model(mnist_dir, tmp_path):
    # Prepare: a 2-round run whose newest checkpoint is rewritten with another model,
    # with a valid checksum (what someone holding the folder, not the key store, can do)
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 2}), run, progress=False)
    _, newest = list_checkpoints(run / "checkpoints")[-1]
    payload = load_checkpoint(newest)
    state = payload["federation"]["global_state"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1.0
    save_checkpoint(newest, payload)
    # Execute / Assert
    with pytest.raises(CheckpointError, match="is not the one the ledger logged for round 1"):
        run_experiment(
            _cfg(mnist_dir, **{"federation.rounds": 3}), run, progress=False, resume=True
        )


def test_resume_checks_the_bytes_it_loaded_not_the_file_after(mnist_dir, tmp_path, monkeypatch):
    # Prepare: the newest checkpoint holds another model when the run loads it, and
    # the logged bytes are put back right after (before the ledger looks at the file).
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 2}), run, progress=False)
    _, newest = list_checkpoints(run / "checkpoints")[-1]
    logged = newest.read_bytes()
    payload = load_checkpoint(newest)
    state = payload["federation"]["global_state"]
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1.0
    save_checkpoint(newest, payload)
    real_restore = experiment.restore_state

    def restore_then_put_back(*args, **kwargs):
        real_restore(*args, **kwargs)
        newest.write_bytes(logged)

    monkeypatch.setattr(experiment, "restore_state", restore_then_put_back)
    # Execute / Assert: the model loaded is not the logged one, whatever the file says now.
    with pytest.raises(CheckpointError, match="is not the one the ledger logged for round 1"):
        run_experiment(
            _cfg(mnist_dir, **{"federation.rounds": 3}), run, progress=False, resume=True
        )


def test_a_ledger_run_cannot_go_on_without_its_ledger_through_an_edited_config(mnist_dir, tmp_path):
    # Prepare: a run with a ledger whose config.yaml was edited to turn it off
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), run, progress=False)
    config = run / "config.yaml"
    assert "\nledger: true\n" in config.read_text()
    config.write_text(config.read_text().replace("\nledger: true\n", "\nledger: false\n"))
    off = _cfg(mnist_dir, **{"federation.rounds": 2, "ledger": False})
    # Execute / Assert
    with pytest.raises(CheckpointError, match="belongs to a run that keeps a ledger"):
        run_experiment(off, run, progress=False, resume=True)
    # Reading it (a folder received without its key store) logs nothing, so it is allowed.
    sampled = fedgen_here("sample", str(run), "--out", str(tmp_path / "s.png"), check=False)
    assert sampled.returncode == 0, sampled.stderr
    assert (tmp_path / "s.png").is_file()


def test_a_log_set_aside_keeps_its_rollback_journal(mnist_dir, tmp_path):
    # Prepare: a folder whose run was killed mid-append before any checkpoint: its log
    # and the journal that would roll the append back.
    out = tmp_path / "run"
    out.mkdir()
    with Ledger.open(out / LEDGER_FILE, create=True):
        pass
    (out / (LEDGER_FILE + "-journal")).write_bytes(b"the journal of a cut append")
    # Execute: a fresh run in the folder sets the old log aside
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), out, progress=False)
    # Assert: the journal went with it, as it was
    aside = out / "ledger.abandoned-1.sqlite"
    assert aside.is_file()
    assert (
        out / "ledger.abandoned-1.sqlite-journal"
    ).read_bytes() == b"the journal of a cut append"


@pytest.mark.parametrize("rehash", [True, False], ids=["rehashed", "stale-hash"])
def test_a_resume_refuses_to_sign_over_an_edited_entry(mnist_dir, tmp_path, rehash):
    # Prepare: a 1-round run whose log has one update's digest edited in the database,
    # its leaf hash recomputed to match (or not).
    import json

    from fedgen.ledger.entries import leaf_data
    from fedgen.ledger.errors import LedgerError
    from fedgen.ledger.merkle import leaf_hash

    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), run, progress=False)
    db = sqlite3.connect(run / LEDGER_FILE)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    seq, round_, body = db.execute(
        "SELECT seq, round, body FROM entries WHERE kind='update' LIMIT 1"
    ).fetchone()
    forged = json.loads(body)
    forged["digest"] = "0" * 64
    text = json.dumps(forged, sort_keys=True, separators=(",", ":"))
    leaf = leaf_hash(leaf_data("update", round_, json.loads(text))).hex()
    if rehash:
        db.execute("UPDATE entries SET body=?, leaf_hash=? WHERE seq=?", (text, leaf, seq))
    else:
        db.execute("UPDATE entries SET body=? WHERE seq=?", (text, seq))
    db.commit()
    db.close()
    # Execute / Assert: the resume signs no new head over the edited log
    with pytest.raises((CheckpointError, LedgerError)) as refused:
        run_experiment(
            _cfg(mnist_dir, **{"federation.rounds": 2}), run, progress=False, resume=True
        )
    said = str(refused.value)
    if rehash:
        assert "are not those whose root this run signed" in said
    else:
        assert "leaf hash does not match its content" in said


def test_a_resume_of_a_log_holding_a_nan_says_it_is_damaged(mnist_dir, tmp_path):
    # An edited entry whose body no entry could hold (NaN): the resume says the log is
    # damaged and what to do, not "another run's log" or a bare ValueError.
    run = tmp_path / "run"
    run_experiment(_cfg(mnist_dir, **{"federation.rounds": 1}), run, progress=False)
    db = sqlite3.connect(run / LEDGER_FILE)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    (body,) = db.execute("SELECT body FROM entries WHERE seq=0").fetchone()
    db.execute(
        "UPDATE entries SET body=? WHERE seq=0", (body.replace('"rounds":1', '"rounds":NaN'),)
    )
    db.commit()
    db.close()
    with pytest.raises(CheckpointError, match=r"is damaged \(entry seq 0 is malformed"):
        run_experiment(
            _cfg(mnist_dir, **{"federation.rounds": 2}), run, progress=False, resume=True
        )
