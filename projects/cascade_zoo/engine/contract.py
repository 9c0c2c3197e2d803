"""The model-to-trainer contract: what a model module may offer, and what ZooTrainer does with it.

Any submodule of the model may implement any of these methods; the trainer looks for them with
``hasattr`` on every module (``model.modules()``), so a project adds behaviour to training
without a trainer of its own. Names returned are relative to the module that returns them.
Modules read ``cfg`` only when they are built (``from_config``); these methods take no config.
"""

from typing import List, Protocol, runtime_checkable

from detectron2.engine import HookBase


@runtime_checkable
class TrainerContract(Protocol):
    def rcnn_parameter_names(self) -> List[str]:
        """The R-CNN module's parameters: every stage's and branch's box head and predictor (and
        the mask head where the module says so). What a schedule of the R-CNN gradients, such
        as RGA's (:class:`cascade_zoo.engine.gradients.GradientScaleHook`), scales; the
        backbone's and RPN's parameters are never in it."""

    def training_hooks(self) -> List[HookBase]:
        """Detectron2 hooks that ZooTrainer registers before its checkpointer (so that their
        ``state_dict`` is current when a checkpoint is written, and restored by ``--resume``)."""


# Gradient multipliers that are a property of the model itself (the box-cascade core's head rule
# 1/w_t) are not part of the contract: the module installs them on its own parameters when it is
# built (cascade_zoo.engine.gradients.GradientScale), so any trainer, Detectron2's included,
# trains the same model.
