"""Hook specifications: the plugin author's manual.

A plugin is a module (or object) with functions decorated by
``transferkit.hookimpl``, published under the ``transferkit`` entry-point group::

    # pyproject.toml of your package
    [project.entry-points.transferkit]
    mynet = "transferkit_mynet"

Hooks are called once, when transferkit first needs its registry (listing
backbones, building a model). They must be cheap: register metadata and the
dotted path of a factory; import your framework only inside the factory.

Rules the registry enforces
    Built-in plugins load first. A name that another plugin already owns (a
    backbone such as ``torch:cnn``, or a framework) is dropped from yours with a
    warning naming both owners (``transferkit plugins`` shows it; strict mode,
    ``TRANSFERKIT_STRICT_PLUGINS=1``, makes it an error); the rest of your plugin is
    kept. A plugin that fails to import is shown as failed with the reason.

What a backbone factory receives and returns, per built-in framework
    ``torch``: ``factory(input_shape=(H, W, C))`` -> ``torch.nn.Module`` mapping a
    normalised NCHW float32 batch to ``(N, feature_size)``.
    ``flax``: ``factory(input_shape=(H, W, C), rngs=nnx.Rngs)`` -> ``flax.nnx.Module``
    mapping NHWC to ``(N, feature_size)``; BatchNorm as ``nnx.BatchNorm``.
    ``keras``: ``factory(input_shape=(H, W, C))`` -> ``keras.Model`` mapping NHWC to
    ``(N, feature_size)``.
    ``hf`` (text): registered specs use ``loads_pretrained=True``; the factory gets
    ``input_shape=(max_length,)``, ``pretrained`` and ``assets`` (see the adapter).
    The factory must be deterministic given the framework's seed (transferkit seeds
    the framework before calling it, and a weights file overwrites what it made).

Canonical parameter names (one weights file for every framework)
    Names are PyTorch's ``state_dict`` keys of the backbone *without* a prefix
    (``stage1.conv.weight``, ``stage1.bn.running_mean``), in PyTorch's layouts: dense
    ``(out, in)``, convolution ``(O, I, kH, kW)``, depthwise ``(C, 1, kH, kW)``.
    ``num_batches_tracked`` is not a weight: leave it out. In a saved model the same
    names appear under ``backbone.`` (and the head's under ``head.``); a weights file
    passed as ``tk.build(..., weights="file.safetensors")`` may use either form.
    Flax: the module path joined with ``.`` is the prefix, and the leaf maps
    ``kernel``->``weight`` (HWIO/``(in, out)`` transposed to PyTorch's layout),
    ``scale``->``weight``, ``bias``, ``mean``->``running_mean``,
    ``var``->``running_var``. Keras: the layer name with ``-`` for ``.`` is the
    prefix (``stage1-conv``), and ``kernel``->``weight``, ``gamma``->``weight``,
    ``beta``->``bias``, ``moving_mean``/``moving_variance``->``running_mean``/``running_var``.
    Every parameter must belong to one of the spec's layer groups (by prefix).

``BackboneSpec`` fields a plugin author sets
    ``weights``: a :class:`~transferkit.WeightSource` whose ``resolve`` returns the path
    of a canonical safetensors file (or raises ``WeightsError`` saying what is missing
    and how to supply it). ``loads_pretrained=True`` instead: the framework's own
    loading code (a model hub's cache) reads the weights, and the factory receives
    ``pretrained``. ``options``: private metadata for the adapter that registered the
    spec; core never reads it. ``arch``: the reference architecture it realises
    (``transferkit.reference``), which lets saved models move between frameworks.
    ``min_input_size`` / ``max_length``: the smallest image side, the longest text.

Testing a plugin
    ``transferkit.testing`` holds the adapter conformance suite: subclass
    ``AdapterConformance`` with a ``Subject`` naming your backbone (see its docstring).
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
