"""Which networks a white-box membership attack scores, as a participant holds them.

The released model (what ``fedgen sample`` draws with) may be the server's moving
average of the weights (``ema_decay``). That is right for the generator, which is what
gets released, but not for the networks the white-box attacks read: no one releases a
discriminator, and the moving average of it is no network anyone holds; every client
receives the global discriminator as trained. ``white_box_access`` loads that one into
the task, for the attack run (``attacks/run.py``) and the downstream pipeline's
generator attack (``downstream/run.py``) alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedgen.engine.client_models import task_private
from fedgen.engine.ditto import personal_model
from fedgen.engine.federation import Federation
from fedgen.tasks.base import Task

DISCRIMINATOR = "discriminator."


@dataclass
class WhiteBoxAccess:
    """Whether the white-box attack can run, and what was loaded for it (for the record)."""

    white_box: bool
    notes: list[str] = field(default_factory=list)


def white_box_access(fed: Federation, task: Task, client: int | None = None) -> WhiteBoxAccess:
    """Check the server holds the white-box attack's networks; load the discriminator as trained.

    ``task`` is ``fed.task`` with the released model already loaded: the global model
    (``client`` None) or client ``client``'s own (``load_client_model``). A cGAN's
    discriminator is then replaced by the one participants hold: the global
    discriminator as trained, with the client's own private and personal (Ditto)
    discriminator tensors on top for a client's model. A cVAE's encoder and decoder
    stay as released (they are the released model).
    """
    # The white-box scores need networks the server holds: the discriminator (cGAN)
    # or encoder and decoder (cVAE). One that stays on the clients is out of reach.
    needed = {"discriminator"} if "discriminator" in task.modules else {"encoder", "decoder"}
    if not needed <= set(task.federated_modules()):
        return WhiteBoxAccess(
            False, [f"{'/'.join(sorted(needed))} not federated: no white-box attack"]
        )
    if needed != {"discriminator"} or not fed.strategy.averaging:
        return WhiteBoxAccess(True)
    held = {k: v for k, v in fed.global_state.items() if k.startswith(DISCRIMINATOR)}
    if client is not None:
        # The client's own tensors as it trained them (never averaged by the server).
        private = fed.private_states.get(client) or {}
        own = {**task_private(private), **personal_model(private)}
        held.update({k: v for k, v in own.items() if k.startswith(DISCRIMINATOR)})
    task.load_state(held)
    whose = (
        "the global discriminator as trained (what clients receive)"
        if client is None
        else f"client {client}'s discriminator as it holds it (the global one as trained, "
        "its own tensors on top)"
    )
    return WhiteBoxAccess(True, [f"LOGAN scores {whose}, not the server's moving average"])
