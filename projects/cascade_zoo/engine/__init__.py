from .launch import launch, started_by_torchrun
from .trainer import TRAINING_HOOK_REGISTRY, ZooTrainer

__all__ = ["launch", "started_by_torchrun", "TRAINING_HOOK_REGISTRY", "ZooTrainer"]
