"""A Detectron2 (fvcore) registry whose entries can be registered under a name of their own."""

from typing import List

from detectron2.utils.registry import Registry


class NamedRegistry(Registry):
    """fvcore's ``Registry`` (``register()`` keys an entry by its ``__name__``), plus
    ``register_as(name)``, which keys it by ``name``: a config value such as "sample" or "every"
    names a class whose own name says more (``SampleProposals``, ``EveryStageMask``). Configs and
    code then share one namespace, the registry's keys (``names()``)."""

    def register_as(self, name: str):
        """Decorator: register the class or function under ``name``."""

        def deco(obj):
            self._do_register(name, obj)
            return obj

        return deco

    def names(self) -> List[str]:
        """The registered names, in registration order."""
        return [name for name, _ in self]
