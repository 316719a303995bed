"""Generative model families; importing this package registers them."""

from fedgen.tasks.base import Task, TaskParams
from fedgen.tasks.byte_gpt import ByteGptTask
from fedgen.tasks.diffusion import ConditionalDdpm
from fedgen.tasks.gan import ConditionalGan
from fedgen.tasks.lm_lora import LoraLmTask
from fedgen.tasks.split_gan import HuscfGan
from fedgen.tasks.vae import ConditionalVae

__all__ = [
    "ByteGptTask",
    "ConditionalDdpm",
    "ConditionalGan",
    "ConditionalVae",
    "HuscfGan",
    "LoraLmTask",
    "Task",
    "TaskParams",
]
