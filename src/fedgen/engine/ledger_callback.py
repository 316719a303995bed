"""The ledger callback: every round, checkpoint and resume logged and signed.

Runs after evaluation and before the checkpoint callback, so a round's entries
and signed tree head are in ``ledger.sqlite`` before the checkpoint that holds
their tree head (its anchor) is written. The checkpoint's own entry is appended
before the file is renamed into place (``log_checkpoint``), so a checkpoint on
disk always has an entry; a kill in between leaves an entry whose file is
missing, which verification treats like a pruned checkpoint.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedgen.engine.audit import RunAudit
from fedgen.engine.checkpoint import checkpoint_path
from fedgen.engine.federation import Callback, Federation, RoundRecord
from fedgen.engine.keystore import NEW_RUN_ADVICE, KeyStore
from fedgen.errors import CheckpointError
from fedgen.ledger import LEDGER_FILE, Ledger, LedgerError, TreeHead, file_digest, state_digest

log = logging.getLogger(__name__)


class LedgerCallback(Callback):
    """Appends a run's events to ``run_dir/ledger.sqlite`` and signs its tree heads."""

    def __init__(self, run_dir: Path, fingerprint: str, checkpoint_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LEDGER_FILE
        self.fingerprint = fingerprint
        self.checkpoint_dir = checkpoint_dir
        self.ledger: Ledger | None = None
        self.audit: RunAudit | None = None

    def on_run_start(self, fed: Federation) -> None:
        if fed.audit is None:
            return
        self.audit = audit = fed.audit
        try:
            if fed.next_round == 0:
                self._start(fed, audit)
            elif fed.next_round < fed.rounds:
                self._resume(fed, audit)
        except BaseException:
            # The run does not start: on_run_end will not come to close the log.
            self.on_run_end(fed, completed=False)
            raise
        # A resume of a run with every round done (a downstream run finishing its arms,
        # say) trains nothing, so it logs nothing: a copy of a finished run may do that.

    def _start(self, fed: Federation, audit: RunAudit) -> None:
        self.ledger = ledger = Ledger.open(self.path, create=True)
        if ledger.size:
            raise LedgerError(
                f"{self.path} already holds a run's log; start the run in a new --out folder"
            )
        ledger.append(
            "run_start",
            {
                "run_id": audit.run_id,
                "server_public_key": audit.server_public,
                "fingerprint": self.fingerprint,
                "rounds": fed.rounds,
            },
        )
        for cid in sorted(audit.client_public):
            ledger.append("enrol", {"client_id": cid, "public_key": audit.client_public[cid]})
        audit.store.set_folder(audit.run_id, self.run_dir)
        self._sign(None)

    def _resume(self, fed: Federation, audit: RunAudit) -> None:
        if not self.path.is_file():
            raise CheckpointError(
                f"{self.path} is missing, so the resumed rounds could not be logged after "
                "the earlier ones; restore it from a backup, or " + NEW_RUN_ADVICE
            )
        # Opening for writing rolls back an append a kill cut short.
        self.ledger = ledger = Ledger.open(self.path)
        if ledger.damage is not None:
            raise CheckpointError(
                f"{self.path} is damaged ({ledger.damage}), so the resumed rounds could not "
                f"be logged after the earlier ones; `fedgen ledger verify {self.run_dir}` "
                "names what changed. Restore the log from a backup, or " + NEW_RUN_ADVICE
            )
        start = ledger.run_start
        if start is None or start.get("run_id") != audit.run_id:
            raise CheckpointError(
                f"{self.path} is the log of another run than the checkpoint's; restore "
                "this run's own ledger.sqlite"
            )
        # The store's heads are signed after the log's, so the run's own log is never
        # shorter than them: a shorter one is an older copy, or was cut back.
        stored = max((size for size, _ in audit.store.heads(audit.run_id)), default=0)
        if stored > ledger.size:
            raise CheckpointError(
                f"{self.path} holds {ledger.size} entries, but the key store signed this "
                f"run's log at {stored}: the folder is an older copy of the run, or its log "
                "was cut back; resume the folder with the newest log (fedgen ledger verify "
                "tells), or start a new run (--set federation.init_from="
                f"{self.run_dir} carries this one's model over, unless DP protects the data "
                "it was trained on)"
            )
        # The log must still be the one those heads were signed over: an entry edited and
        # rehashed would otherwise get new heads signed over it by this resume.
        signed = [*audit.store.heads(audit.run_id), *([audit.anchor] if audit.anchor else [])]
        for size, root in signed:
            if size > ledger.size or ledger.root(size) != root:
                raise CheckpointError(
                    f"{self.path}'s first {size} entries are not those whose root this run "
                    f"signed ({root[:12]}…): the log was edited since; `fedgen ledger verify "
                    f"{self.run_dir}` names the entries. Restore the log from a backup, or "
                    + NEW_RUN_ADVICE
                )
        self._claim_folder(audit)
        last = fed.next_round - 1
        if fed.privacy is not None:
            self._refuse_replay(ledger, last)
        ckpt = checkpoint_path(self.checkpoint_dir, last)
        digest = self._check_logged(ledger, last, ckpt, fed.restored_digest)
        ledger.append(
            "resume",
            {
                "from_round": last,
                "checkpoint": self._relative(ckpt),
                "digest": digest,
                "head_size": audit.anchor[0] if audit.anchor else 0,
            },
        )
        head = self._sign(last)
        log.info("ledger: resumed after round %d at entry %d", last, head.size)

    def _check_logged(
        self, ledger: Ledger, last: int, ckpt: Path, restored: str | None = None
    ) -> str:
        """The digest of the checkpoint the run resumes from, which must be the one the
        log recorded for it: every checkpoint is logged before it takes its name, so a
        file the log does not name, or names with other bytes, was put there by hand.
        ``restored``: the digest of the bytes the state was loaded from, which is what
        counts (the file could be put back between the load and this check)."""
        digest = restored if restored is not None else file_digest(ckpt)
        file = self._relative(ckpt)
        logged = [
            e.body["digest"]
            for e in ledger.entries(kind="checkpoint")
            if e.body["file"] == file and int(e.body["round"]) == last
        ]
        if not logged or logged[-1] != digest:
            what = "is not the one the ledger logged" if logged else "was never logged"
            raise CheckpointError(
                f"{ckpt} {what} for round {last} (sha256 {digest[:12]}…): it was replaced "
                "after the run saved it, so resuming from it would continue another model "
                "under this run's log. Restore the run's own checkpoint from a backup, or "
                "delete this one to resume from the one before"
            )
        return digest

    def _refuse_replay(self, ledger: Ledger, last: int) -> None:
        """Under DP (client-level or DP-SGD), refuse to train again a round whose checkpoint the log
        shows was saved, so that its model may have gone to the next cohort (the file was
        deleted, or a power cut took it back): its round-keyed noise would repeat over
        other updates. A checkpoint logged but never renamed into place, whose ``.tmp``
        still holds the logged bytes (the server died while saving it), went to no one."""
        for entry in ledger.entries(kind="checkpoint"):
            if int(entry.body["round"]) <= last:
                continue
            tmp = self.run_dir / (str(entry.body["file"]) + ".tmp")
            if tmp.is_file() and file_digest(tmp) == entry.body["digest"]:
                continue
            raise CheckpointError(
                f"under DP the run cannot go on after round {last}: the ledger "
                f"shows that round {entry.body['round']}'s checkpoint ({entry.body['file']}) "
                "was saved, so its model may have gone to the next cohort, and training it "
                "again would repeat its noise over other updates. Restore that checkpoint "
                "from a backup, or start a new run (whose epsilon adds to this one's)"
            )

    def _claim_folder(self, audit: RunAudit) -> None:
        """Refuse to resume a copy of a run folder while the original still holds the run.

        Both would extend one run id's log from the same point, and the key store's heads,
        kept per run id, would then pin two histories: each folder would fail
        verification against the other's heads. A folder that was moved (the recorded one
        is gone, or holds another run) takes the record over.
        """
        recorded = recorded_elsewhere(audit.store, audit.run_id, self.run_dir)
        if recorded is not None:
            raise CheckpointError(
                f"{self.run_dir} is a copy of the run in {recorded} (the same run id, "
                f"{audit.run_id[:12]}…), which the key store's signed heads follow; resuming "
                f"both would fork one log. Resume {recorded} instead, or move (not copy) the "
                "folder, or start a new run (--set federation.init_from="
                f"{self.run_dir} carries this one's model over, unless DP protects the data "
                "it was trained on)"
            )
        audit.store.set_folder(audit.run_id, self.run_dir)

    def on_round_end(self, fed: Federation, record: RoundRecord) -> None:
        rec = record.audit
        if self.ledger is None or self.audit is None or rec is None:
            return
        ledger, r = self.ledger, record.round
        ledger.append(
            "round_start",
            {
                "round": r,
                "global_digest": rec.global_digest,
                "cohort": rec.cohort,
                "config": rec.config,
            },
        )
        for cid, digest, examples, signature in rec.updates:
            ledger.append(
                "update",
                {
                    "round": r,
                    "client_id": cid,
                    "digest": digest,
                    "num_examples": examples,
                    "signature": signature,
                    **(
                        {"signed_round": rec.signed_rounds[cid]} if cid in rec.signed_rounds else {}
                    ),
                },
            )
        for cid, reason in sorted(rec.failures.items()):
            ledger.append("failure", {"round": r, "client_id": cid, "reason": reason})
        if rec.round_failure is not None:
            ledger.append("failure", {"round": r, "client_id": None, "reason": rec.round_failure})
        if rec.aggregate_digest is not None:
            secure = fed.secagg is not None
            # Secure aggregation over no client sums nothing: the empty sum's digest.
            sum_digest = (rec.sum_digest or state_digest({})) if secure else None
            ledger.append(
                "aggregate",
                {
                    "round": r,
                    "digest": rec.aggregate_digest,
                    "secure": secure,
                    "sum_digest": sum_digest,
                    "clients": rec.aggregated,
                },
            )
        self.audit.anchor = self._sign(r).anchor

    def log_checkpoint(self, round: int, path: Path, digest: str) -> None:
        """Log the checkpoint about to be renamed to ``path`` (its bytes hash to ``digest``)."""
        if self.ledger is None or self.audit is None:
            return
        self.ledger.append(
            "checkpoint", {"round": round, "file": self._relative(path), "digest": digest}
        )
        self._sign(round)

    def _sign(self, round: int | None) -> TreeHead:
        """Sign the tree head, and remember it in the key store, outside the run folder."""
        assert self.ledger is not None and self.audit is not None
        head = self.ledger.sign_head(round, self.audit.server_key)
        self.audit.store.append_head(self.audit.run_id, head.size, head.root)
        return head

    def on_run_end(self, fed: Federation, completed: bool) -> None:
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None

    def _relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.run_dir.resolve()).as_posix()


def checkpoint_anchors(
    checkpoint_dir: Path, run_id: str = ""
) -> tuple[list[tuple[int, str]], list[str]]:
    """The tree heads that the checkpoints on disk hold, and why any could not be read
    or belongs to another run than ``run_id`` (the ledger's; "" skips that check).

    ``fedgen ledger verify`` passes them to ``verify_run`` as anchors: a ledger cut
    back to an earlier, still valid, prefix is inconsistent with them.
    """
    from fedgen.engine.checkpoint import list_checkpoints, load_checkpoint

    anchors: list[tuple[int, str]] = []
    problems: list[str] = []
    for round_, path in list_checkpoints(checkpoint_dir):
        try:
            state = load_checkpoint(path).get("federation", {})
        except CheckpointError as exc:
            problems.append(f"round {round_}: checkpoint {path.name} is unreadable: {exc}")
            continue
        audit = state.get("audit") if isinstance(state, dict) else None
        if not isinstance(audit, dict):
            continue  # a run without a ledger; verify_run reports the missing log
        if run_id and str(audit.get("run_id", "")) != run_id:
            problems.append(
                f"round {round_}: checkpoint {path.name} belongs to run "
                f"{str(audit.get('run_id'))[:12]}…, the ledger to run {run_id[:12]}…: "
                "the log or the checkpoint was replaced"
            )
        anchor = audit.get("anchor")
        try:
            if anchor:
                anchors.append((int(anchor[0]), str(anchor[1])))
        except (TypeError, ValueError, IndexError):
            problems.append(f"round {round_}: checkpoint {path.name} holds a malformed head")
    return anchors, problems


def recorded_elsewhere(store: KeyStore, run_id: str, folder: Path) -> Path | None:
    """The folder the key store records for ``run_id`` if it is not ``folder`` and still
    holds the run's log (then ``folder`` is a copy); None otherwise."""
    recorded = store.folder(run_id)
    if recorded is None or not recorded.exists():
        return None
    try:
        if os.path.samefile(recorded, folder):
            return None  # one folder, reached by two paths (a symlink, a bind mount)
    except OSError:
        pass
    return recorded if _holds_run(recorded, run_id) else None


def _holds_run(folder: Path, run_id: str) -> bool:
    """Whether ``folder``'s ledger is the log of ``run_id`` (an unreadable one is not)."""
    path = folder / LEDGER_FILE
    if not path.is_file():
        return False
    try:
        with Ledger.open(path, readonly=True) as ledger:
            return (ledger.run_start or {}).get("run_id") == run_id
    except LedgerError:
        return False
