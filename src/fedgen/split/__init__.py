"""U-shaped split learning (HuSCF-GAN, Tawfilis et al. 2025, arXiv 2507.12979).

Networks as lists of blocks, cut per client (``Cut``); the server runs its
blocks for all clients at once (``ServerSegments``); only activations and
gradients cross the ``Channel``; ``UShapedGanTrainer`` trains a split
conditional GAN; ``LatencyModel`` and ``cut_search`` choose the cuts, and
``plan_cuts`` does so for a whole federation; ``views`` maps the pieces to and
from whole-network state dicts (what the round loop aggregates). The backend
that runs all this inside fedgen's round loop is
``fedgen.engine.backends.split.SplitBackend``.
"""

from fedgen.split.cut import Cut
from fedgen.split.cut_plan import CutPlan, plan_cuts
from fedgen.split.messages import Channel, ClientDroppedError, Message
from fedgen.split.protocol import SplitPass
from fedgen.split.segments import ClientSegments, ServerSegments
from fedgen.split.trainer import IterationResult, UShapedGanTrainer

__all__ = [
    "Channel",
    "ClientDroppedError",
    "ClientSegments",
    "Cut",
    "CutPlan",
    "IterationResult",
    "Message",
    "ServerSegments",
    "SplitPass",
    "UShapedGanTrainer",
    "plan_cuts",
]
