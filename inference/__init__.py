"""Inference: the model registry, sampling options and the backends behind one interface."""

from inference.engine import Backend, Inference
from inference.errors import AppError, InvalidInput, ModelUnavailable, OutOfMemory, UnknownModel
from inference.prompts import Message, PromptFormat
from inference.registry import CHECKPOINTS, TINY_MODELS, ModelSpec, Registry
from inference.sampling import SamplingOptions

__all__ = [
    "CHECKPOINTS",
    "TINY_MODELS",
    "AppError",
    "Backend",
    "Inference",
    "InvalidInput",
    "Message",
    "ModelSpec",
    "ModelUnavailable",
    "OutOfMemory",
    "PromptFormat",
    "Registry",
    "SamplingOptions",
    "UnknownModel",
]
