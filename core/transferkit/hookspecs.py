"""Hook specifications: the plugin author's manual.

A plugin is a module (or object) with functions decorated by
``transferkit.hookimpl``, published under the ``transferkit`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.transferkit]
    mynet = "transferkit_mynet"

Hooks are called once, when transferkit first needs its registry (listing
backbones, building a model). They must be cheap: register metadata and the
dotted path of a factory; import your framework only inside the factory.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("transferkit")
hookimpl = pluggy.HookimplMarker("transferkit")


@hookspec
def transferkit_register_frameworks(register):
    """Register framework adapters.

    Called with ``register(framework)``, where ``framework`` is an instance of
    :class:`transferkit.Framework` (or the dotted path ``"module:attr"`` of a
    zero-argument callable that returns one). The instance must not import its
    framework in ``__init__``. A third-party package that only adds backbones to an
    existing framework does not implement this hook.
    """


@hookspec
def transferkit_register_backbones(register):
    """Register backbones.

    Called with ``register(spec)``, where ``spec`` is a
    :class:`transferkit.BackboneSpec`: the name (``"torch:mynet"``), input kind
    and shape, feature size, ordered layer groups, tags, pretrained weight source
    and the factory that builds the native backbone. The factory is called only
    when a user builds the backbone::

        @transferkit.hookimpl
        def transferkit_register_backbones(register):
            register(transferkit.BackboneSpec(
                name="torch:mynet", input_kind="image", input_shape=(32, 32, 3),
                feature_size=64, groups=(("stem", ("stem",)), ("body", ("body",))),
                factory="transferkit_mynet.model:build",
            ))
    """
