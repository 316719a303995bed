"""U-shaped split learning (HuSCF-GAN, Tawfilis et al. 2025, arXiv 2507.12979).

Networks as lists of blocks, cut per client (``Cut``); the server runs its
blocks for all clients at once (``ServerSegments``); only activations and
gradients cross the ``Channel``; ``UShapedGanTrainer`` trains a split
conditional GAN; ``LatencyModel`` and ``cut_search`` choose the cuts.
"""

from fedgen.split.cut import Cut
from fedgen.split.messages import Channel, ClientDroppedError, Message
from fedgen.split.protocol import SplitPass
from fedgen.split.segments import ClientSegments, ServerSegments
from fedgen.split.trainer import IterationResult, UShapedGanTrainer

__all__ = [
    "Channel",
    "ClientDroppedError",
    "ClientSegments",
    "Cut",
    "IterationResult",
    "Message",
    "ServerSegments",
    "SplitPass",
    "UShapedGanTrainer",
]
