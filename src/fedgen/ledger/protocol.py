"""Checks of the round protocol a ledger records, entry by entry in log order.

What is checked: run_start comes first and once; each client enrols once, with a key no other
client uses, before round 0; rounds run 0, 1, 2, ... with none missing and none logged twice
unless a ``resume`` entry sits between (after it, the resumed rounds are logged again and the
latest logging is authoritative); every update is signed by its client's enrolled key over
``update_message(run_id, round, client_id, digest)``, comes from the round's cohort, inside its
round and before its aggregate; every aggregated client (without secure aggregation) has an
update in that round; a resume names a checkpoint the ledger recorded for that round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgen.ledger.entries import Entry
from fedgen.ledger.errors import LedgerError
from fedgen.ledger.keys import public_key_from_hex, update_message, verify_signature


@dataclass
class _Logging:
    """One logging of one round: its round_start and what followed until the next."""

    start: Entry
    cohort: set[Any]
    updates: dict[Any, Entry] = field(default_factory=dict)
    aggregate: Entry | None = None
    round_failed: bool = False


def _short(digest: str) -> str:
    return digest[:12]


@dataclass
class ProtocolCheck:
    """Walks the entries once; ``problems`` and ``notes`` collect one-line findings."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_id: str = ""
    keys: dict[Any, Ed25519PublicKey | None] = field(default_factory=dict)
    key_owner: dict[str, Any] = field(default_factory=dict)
    current: _Logging | None = None
    last_round: int | None = None
    resume: Entry | None = None
    first_aggregate: dict[int, Entry] = field(default_factory=dict)
    latest_aggregate: dict[int, Entry] = field(default_factory=dict)
    last_aggregate: Entry | None = None
    checkpoints: dict[str, list[Entry]] = field(default_factory=dict)
    rounds: set[int] = field(default_factory=set)
    #: (client, round signed for, update digest) -> the round it was logged in: a signed
    #: update counts in one round of a timeline only.
    signed_updates: dict[tuple[Any, int, str], int] = field(default_factory=dict)

    def run(self, entries: list[Entry], planned_rounds: int | None = None) -> None:
        if not entries:
            self.problems.append("ledger: it holds no entries (the run never started)")
            return
        if entries[0].kind != "run_start":
            self.problems.append(
                f"ledger: the first entry is {entries[0].where()}, not run_start: the start of "
                f"the log was removed or replaced"
            )
        else:
            self.run_id = entries[0].body["run_id"]
        for entry in entries[1:] if entries[0].kind == "run_start" else entries:
            getattr(self, f"_on_{entry.kind}")(entry)
        self._close(ended=True)
        last = self.last_round
        if planned_rounds is not None and last is not None and last + 1 < planned_rounds:
            self.notes.append(f"the run logged rounds 0..{last} of the {planned_rounds} planned")

    def _on_run_start(self, e: Entry) -> None:
        self.problems.append(f"{e.where()}: a second run_start inside the log")

    def _on_enrol(self, e: Entry) -> None:
        c, key = e.body["client_id"], e.body["public_key"]
        if c in self.keys:
            self.problems.append(f"client {c}: enrolled twice (again at seq {e.seq})")
            return
        if key in self.key_owner:
            self.problems.append(
                f"client {c}: enrols the public key of client {self.key_owner[key]} (seq {e.seq})"
            )
        if self.last_round is not None:
            self.problems.append(f"client {c}: enrolled after round 0 started (seq {e.seq})")
        self.key_owner[key] = c
        try:
            self.keys[c] = public_key_from_hex(key)
        except (LedgerError, ValueError):
            self.keys[c] = None
            self.problems.append(f"client {c}: enrolled key is not an Ed25519 key (seq {e.seq})")

    def _on_round_start(self, e: Entry) -> None:
        r = e.body["round"]
        self._close(ended=False, next_round=r)
        if self.resume is not None:
            expected = self.resume.body["from_round"] + 1
            if r != expected:
                self.problems.append(
                    f"round {r}: logged right after a resume from round {expected - 1}, which "
                    f"continues at round {expected} (seq {e.seq})"
                )
            self.resume = None
        elif self.last_round is None and r != 0:
            self.problems.append(f"round 0..{r - 1}: missing, the log starts at round {r}")
        elif self.last_round is not None and r <= self.last_round:
            self.problems.append(
                f"round {r}: logged again at seq {e.seq} with no resume entry since round "
                f"{self.last_round} (a silent fork)"
            )
        elif self.last_round is not None and r > self.last_round + 1:
            gap = f"{self.last_round + 1}..{r - 1}" if r > self.last_round + 2 else f"{r - 1}"
            self.problems.append(
                f"round {gap}: missing between round {self.last_round} and round {r} "
                f"(a dropped round, seq {e.seq})"
            )
        if self.last_aggregate is not None and self.last_aggregate.round == r - 1:
            sent, agg = e.body["global_digest"], self.last_aggregate.body["digest"]
            if sent != agg:
                self.notes.append(
                    f"round {r}: the global state sent ({_short(sent)}) is not round {r - 1}'s "
                    f"aggregate ({_short(agg)})"
                )
        for c in e.body["cohort"]:
            if c not in self.keys:
                self.problems.append(f"round {r}, client {c}: in the cohort but never enrolled")
        self.current = _Logging(e, set(e.body["cohort"]))
        self.last_round = r
        self.rounds.add(r)

    def _in_round(self, e: Entry) -> _Logging | None:
        cur = self.current
        if cur is None or cur.start.round != e.round:
            now = "before any round" if cur is None else f"during round {cur.start.round}"
            self.problems.append(f"{e.where()}: logged {now}, outside its round")
            return None
        return cur

    def _on_update(self, e: Entry) -> None:
        cur = self._in_round(e)
        if cur is None:
            return
        r, c = e.round, e.body["client_id"]
        if cur.aggregate is not None:
            self.problems.append(f"round {r}, client {c}: update logged after the aggregate")
        if c not in cur.cohort:
            self.problems.append(f"round {r}, client {c}: update from outside the cohort")
        if c in cur.updates:
            self.problems.append(f"round {r}, client {c}: a second update (seq {e.seq})")
        cur.updates[c] = e
        key = self.keys.get(c)
        if c not in self.keys:
            self.problems.append(f"round {r}, client {c}: update from a client never enrolled")
        elif key is not None:
            signed = e.body.get("signed_round", e.body["round"])
            logged_in: int = e.body["round"]
            seen = self.signed_updates.setdefault((c, signed, e.body["digest"]), logged_in)
            if seen != logged_in:
                # Its signature verifies, but it was the client's part of round `seen`:
                # logged again, it would count the client in a round it took no part in.
                self.problems.append(
                    f"round {r}, client {c}: the update signed for round {signed} was "
                    f"already logged in round {seen} (seq {e.seq}): replayed"
                )
            message = update_message(self.run_id, signed, c, e.body["digest"])
            if not verify_signature(key, message, e.body["signature"]):
                self.problems.append(
                    f"round {r}, client {c}: update signature does not verify under the "
                    f"client's enrolled key (seq {e.seq}): the update was altered, moved to "
                    f"another client or signed by another key"
                )

    def _on_failure(self, e: Entry) -> None:
        cur = self._in_round(e)
        if cur is None:
            return
        c = e.body["client_id"]
        if c is None:
            cur.round_failed = True
        elif c not in cur.cohort:
            self.problems.append(
                f"round {e.round}, client {c}: failure of a client outside the cohort"
            )

    def _on_aggregate(self, e: Entry) -> None:
        cur = self._in_round(e)
        if cur is None:
            return
        r = e.body["round"]
        if cur.aggregate is not None:
            self.problems.append(f"round {r}: a second aggregate (seq {e.seq})")
        cur.aggregate = e
        for c in e.body["clients"]:
            if c not in cur.cohort:
                self.problems.append(f"round {r}, client {c}: aggregated but not in the cohort")
            elif not e.body["secure"] and c not in cur.updates:
                self.problems.append(f"round {r}, client {c}: aggregated with no update entry")
        first = self.first_aggregate.setdefault(r, e)
        if first is not e and first.body["digest"] != e.body["digest"]:
            self.notes.append(
                f"round {r}: re-logged after a resume with a different aggregate digest "
                f"({_short(first.body['digest'])} first, {_short(e.body['digest'])} now); the "
                f"latest is authoritative"
            )
        self.last_aggregate = self.latest_aggregate[r] = e

    def _on_checkpoint(self, e: Entry) -> None:
        self.checkpoints.setdefault(e.body["file"], []).append(e)

    def _on_resume(self, e: Entry) -> None:
        f, file = e.body["from_round"], e.body["checkpoint"]
        self._close(ended=True)
        if e.body["head_size"] > e.seq:
            self.problems.append(
                f"round {f}: resume at seq {e.seq} names ledger size {e.body['head_size']}, "
                f"beyond the entries before it"
            )
        if self.last_round is None or f > self.last_round:
            self.problems.append(f"round {f}: resume from a round never logged (seq {e.seq})")
        logged = [c for c in self.checkpoints.get(file, []) if c.round == f]
        if not logged:
            self.problems.append(
                f"round {f}: resume from {file}, which no checkpoint entry for round {f} names"
            )
        elif "digest" in e.body and e.body["digest"] != logged[-1].body["digest"]:
            # Logs written before resumes recorded the digest carry none.
            self.problems.append(
                f"round {f}: resumed from {file} with sha256 {_short(str(e.body['digest']))}, not "
                f"the checkpoint logged for it ({_short(logged[-1].body['digest'])})"
            )
        self.resume = e
        self.current = None
        # Rounds after the checkpoint are logged again: their updates count once more.
        self.signed_updates = {k: v for k, v in self.signed_updates.items() if v <= f}
        # Re-logged rounds start from the checkpoint's state: its round's aggregate.
        self.last_aggregate = self.latest_aggregate.get(f)

    def _close(self, ended: bool, next_round: int | None = None) -> None:
        cur, self.current = self.current, None
        if cur is None or cur.aggregate is not None or cur.round_failed:
            return
        r = cur.start.round
        if ended:
            self.notes.append(f"round {r}: no aggregate entry; the run stopped during it")
        else:
            self.problems.append(f"round {r}: no aggregate entry before round {next_round} started")
