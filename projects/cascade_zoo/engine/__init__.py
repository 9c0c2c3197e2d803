from .launch import launch, started_by_torchrun
from .trainer import ZooTrainer

__all__ = ["launch", "started_by_torchrun", "ZooTrainer"]
