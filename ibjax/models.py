"""Encoders, decoders and the stochastic bottleneck model p_Θ(ŷ|x) = E_{p_Θ(z|x)} p_Θ(ŷ|z).

The architectures are those of section 7 of Kirsch, Lyle & Gal, "Unpacking
Information Bottlenecks":

* ``MLP``           -- fully connected ReLU networks: the 784–1024–1024–K encoder
  (Permutation-MNIST, 7.1) and the over-parameterised C–1024–1024–10 decoder (7.1).
* ``DropoutCNN``    -- the PyTorch MNIST example network with K outputs (MNIST, 7.2).
* ``ResNet18``      -- the standard CIFAR ResNet18 with K outputs (CIFAR10, 7.1 and 7.3).
* ``LinearDecoder`` -- the K×10 linear unit (7.2, 7.3).
* ``IBModel``       -- encoder, latent Z (continuous with optional zero-entropy noise,
  categorical, or the Gaussian of the Deep Variational IB baseline) and
  decoder; draws S stochastic samples of Z per input.

Mixed precision: every module computes in ``dtype`` and keeps float32
parameters; BatchNorm statistics are reduced in float32, and ``IBModel``
returns its latents and logits in float32 because the losses are computed in
float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ibjax import latents
from ibjax.defaults import default_config
from ibjax.information import prediction_log_probs  # noqa: F401  (log p(ŷ|x) of a categorical Z)
from ibjax.latents import VIB_MIN_SCALE, VIB_SCALE_SHIFT  # noqa: F401  (defined with the VIB kind)

ENCODERS = ("mlp", "dropout_cnn", "resnet18")
#: The built-in latent kinds (:mod:`ibjax.latents`; :func:`ibjax.latents.names` adds registered ones).
LATENTS = latents.BUILTIN
DECODERS = ("linear", "categorical_mlp")
DTYPES = ("float32", "bfloat16")
#: Encoders with convolutions: on the CPU backend they train one step a compiled call
#: (:attr:`ibjax.experiment.Experiment.steps_per_call`).
CONVOLUTIONAL_ENCODERS: tuple[str, ...] = ("dropout_cnn", "resnet18")
#: Each encoder's last dense layer, whose outputs are the latent Ẑ: the layer
#: that entropy capping (section 7.2, :mod:`ibjax.capping`) rescales.
LAST_DENSE_LAYER: dict[str, str] = {"mlp": "output", "dropout_cnn": "fc2"}
#: Encoders whose latent entropy capping can rewrite (those with a last dense layer).
CAPPABLE_ENCODERS: tuple[str, ...] = tuple(LAST_DENSE_LAYER)
#: Parameter initialisations: Flax's defaults (lecun-normal kernels, zero biases)
#: or PyTorch's ``reset_parameters`` of ``nn.Linear``/``nn.Conv2d``, which the paper used.
PARAM_INITS = ("flax", "pytorch")

# PyTorch's BatchNorm2d defaults (running-average momentum 0.1, eps 1e-5).
_BATCH_NORM = dict(momentum=0.9, epsilon=1e-5, param_dtype=jnp.float32)
# He initialisation for ReLU convolutions, as in torchvision's ResNet.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def count_params(params: Any) -> int:
    """Number of scalar parameters in a pytree of arrays (or ``jax.ShapeDtypeStruct``).

    Args:
      params: a pytree whose leaves have a ``shape``, e.g. ``variables['params']``.

    Returns:
      ``Σ_leaves prod(leaf.shape)`` as a Python ``int``.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params))


def pytorch_default_init(rng: jax.Array, params: Any) -> Any:
    """Re-draws every layer that has a kernel and a bias as PyTorch's default ``reset_parameters`` does.

    PyTorch initialises ``nn.Linear`` and ``nn.Conv2d`` with
    ``kaiming_uniform_(a=√5)`` for the weight and U(−1/√fan_in, 1/√fan_in) for
    the bias; with the gain √(2/(1 + a²)) = √(1/3) both are
    U(−1/√fan_in, 1/√fan_in), where fan_in = prod(kernel.shape[:-1]) (inputs
    times the receptive field). Layers without a bias keep their Flax
    initialisation: the ResNet convolutions, which torchvision re-initialises
    with He-normal (fan_out) itself, and BatchNorm. The Flax default it
    replaces is lecun-normal kernels (variance 1/fan_in, three times
    PyTorch's) and zero biases.

    Args:
      rng: a PRNG key.
      params: a Flax ``params`` pytree.

    Returns:
      The same pytree with each (kernel, bias) pair re-drawn.
    """

    def redraw(node, key):
        if not isinstance(node, Mapping):
            return node
        if "kernel" in node and "bias" in node and not isinstance(node["kernel"], Mapping):
            kernel, bias = node["kernel"], node["bias"]
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            kernel_key, bias_key = jax.random.split(key)
            return {**node,
                    "kernel": jax.random.uniform(kernel_key, kernel.shape, kernel.dtype, -bound, bound),
                    "bias": jax.random.uniform(bias_key, bias.shape, bias.dtype, -bound, bound)}
        keys = jax.random.split(key, len(node))
        return type(node)({name: redraw(child, k) for (name, child), k in zip(sorted(node.items()), keys)})

    return redraw(params, rng)


def _check_rank(x: jax.Array, rank: int, module: str, layout: str) -> None:
    if x.ndim != rank:
        raise ValueError(
            f"{module} expects `x` of rank {rank} ({layout}); got shape {x.shape}."
        )


class MLP(nn.Module):
    """Fully connected ReLU network: the 784–1024–1024–K encoder and the C–1024–1024–10 decoder of section 7.1.

    Dense layers ``hidden_0 … hidden_{L-1}`` with ReLUs and a linear ``output``
    layer. With ``flatten`` (the encoder) each example is flattened first, so
    ``[B, 28, 28, 1]`` gives the paper's 784 inputs; without it (the
    categorical decoder, applied to the one-hot codes eye(C) or to samples of
    Z) the layers act on the last axis. Parameters: Σ_l (d_{l-1} d_l + d_l)
    over the layers d = (D, *hidden, features).

    The categorical decoder is over-parameterised on purpose: a C×10 matrix
    with a SoftMax would describe p_Θ(ŷ|z), but the paper found that
    parameterising that matrix with a separate DNN helps optimisation a lot.

    Attributes:
      features: width of the output (latent dimensions, categories or classes).
      hidden: widths of the hidden ReLU layers.
      flatten: flatten every axis after the first (images to vectors).
      dtype: computation dtype; parameters are float32.
    """

    features: int
    hidden: Sequence[int] = (1024, 1024)
    flatten: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Maps ``x`` ``[B, ...]`` (flatten) or ``[..., D]`` to ``[B or ..., features]``; ``train`` is unused."""
        del train  # Deterministic: no Dropout, no BatchNorm.
        if x.ndim < (2 if self.flatten else 1):
            raise ValueError(f"MLP expects `x` of rank >= {2 if self.flatten else 1}; got shape {x.shape}.")
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        h = (x.reshape(x.shape[0], -1) if self.flatten else x).astype(self.dtype)
        for i, width in enumerate(self.hidden):
            h = nn.relu(dense(width, name=f"hidden_{i}")(h))
        return dense(self.features, name="output")(h)


class DropoutCNN(nn.Module):
    """The PyTorch MNIST example CNN with K outputs (section 7.2).

    conv 32 3×3 VALID, ReLU, conv 64 3×3 VALID, ReLU, 2×2 max-pool,
    Dropout(0.25), flatten, dense 128, ReLU, Dropout(0.5), dense K.
    With 28×28×1 inputs the flattened width is 12·12·64 = 9216 and the network
    has 320 + 18,496 + 1,179,776 + (128K + K) parameters (1,199,882 for K = 10,
    as in PyTorch). Flattening is in NHWC order, a fixed permutation of
    PyTorch's NCHW order.

    Attributes:
      features: K, the width of the output (128 in section 7.2).
      dtype: computation dtype; parameters are float32.
    """

    features: int = 128
    dtype: Any = jnp.float32

    def setup(self) -> None:
        conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding="VALID", dtype=self.dtype,
                                 param_dtype=jnp.float32)
        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        self.conv1 = conv(32)
        self.conv2 = conv(64)
        self.fc1 = dense(128)
        self.fc2 = dense(self.features)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)

    def trunk(self, x: jax.Array) -> jax.Array:
        """The deterministic convolutions up to the first Dropout: ``[B, 12, 12, 64]`` for MNIST."""
        _check_rank(x, 4, "DropoutCNN", "[batch, height, width, channels]")
        h = nn.relu(self.conv1(x.astype(self.dtype)))
        h = nn.relu(self.conv2(h))
        return nn.max_pool(h, window_shape=(2, 2), strides=(2, 2))

    def head(self, h: jax.Array, *, train: bool) -> jax.Array:
        """Dropout(0.25), dense 128, ReLU, Dropout(0.5), dense K: the stochastic part."""
        h = self.dropout1(h, deterministic=not train)
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(self.fc1(h))
        h = self.dropout2(h, deterministic=not train)
        return self.fc2(h)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps images ``[B, H, W, C]`` to ``[B, features]``; Dropout is on iff ``train``.

        In train mode the 'dropout' RNG stream is required.
        """
        return self.head(self.trunk(x), train=train)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016): two 3×3 conv+BN, identity or projection shortcut.

    out = ReLU(BN(conv3x3(ReLU(BN(conv3x3_s(x))))) + shortcut(x)), where the
    shortcut is a 1×1 stride-s conv + BN whenever the stride or width changes.
    Padding is 1 on each side, as in PyTorch (Flax's 'SAME' would pad
    asymmetrically for stride 2).

    Attributes:
      features: output channels.
      strides: stride of the first conv and of the projection shortcut.
      dtype: computation dtype; parameters and BatchNorm statistics are float32.
    """

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps ``[B, H, W, C_in]`` to ``[B, ⌈H/s⌉, ⌈W/s⌉, features]``."""
        conv = functools.partial(
            nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=_CONV_INIT,
        )
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, dtype=self.dtype, **_BATCH_NORM
        )
        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), strides=s, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = norm(name="bn2")(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, (1, 1), strides=s, padding="VALID", name="shortcut_conv")(x)
            shortcut = norm(name="shortcut_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNet18(nn.Module):
    """The standard CIFAR ResNet18 (He et al., 2016) with K outputs (sections 7.1, 7.3).

    3×3 conv stem with 64 channels, stride 1 and no max-pool, then BasicBlocks
    [2, 2, 2, 2] with widths 64–128–256–512 and strides 1, 2, 2, 2, global
    average pooling and a dense layer of width K. 11,173,962 parameters for
    K = 10, as the PyTorch model (BatchNorm running statistics are in the
    'batch_stats' collection and not counted).

    Attributes:
      features: K, the width of the output.
      dtype: computation dtype; parameters and BatchNorm statistics are float32.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Maps images ``[B, H, W, C]`` to ``[B, features]``.

        BatchNorm uses batch statistics and updates its running averages iff
        ``train``; the caller then passes ``mutable=['batch_stats']`` to ``apply``.
        """
        _check_rank(x, 4, "ResNet18", "[batch, height, width, channels]")
        h = nn.Conv(
            64, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
            param_dtype=jnp.float32, kernel_init=_CONV_INIT, name="stem_conv",
        )(x.astype(self.dtype))
        h = nn.BatchNorm(
            use_running_average=not train, dtype=self.dtype, name="stem_bn", **_BATCH_NORM
        )(h)
        h = nn.relu(h)
        for stage, (width, strides) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            for block in range(2):
                h = BasicBlock(
                    width, strides if block == 0 else 1, dtype=self.dtype,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(h, train=train)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32, name="output")(h)


class LinearDecoder(nn.Module):
    """The K×num_classes linear unit decoder (sections 7.2, 7.3): logits = z W + b.

    Attributes:
      num_classes: number of classes of Ŷ.
      dtype: computation dtype; parameters are float32.
    """

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """Maps ``z`` ``[..., K]`` to unnormalised logits of p_Θ(ŷ|z) ``[..., num_classes]``."""
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="output")(z)


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}.")


def _check_widths(name: str, value: Any) -> None:
    # A tuple, not a list: Flax modules are hashed and compared as dataclasses.
    if not isinstance(value, tuple) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value
    ):
        raise ValueError(f"`{name}` must be a tuple of positive ints; got {value!r}.")


def _dtype_name(dtype: Any) -> str:
    try:
        return jnp.dtype(dtype).name
    except TypeError:
        return repr(dtype)


class IBModel(nn.Module):
    """Stochastic encoder p_Θ(z|x), latent Z and decoder p_Θ(ŷ|z) (sections 5, 6.1, 7).

    Continuous Z (``latent='continuous'``): the encoder's K outputs, plus
    zero-entropy noise ε ~ N(0, 1/(2πe)) when ``noise`` (section 6.1), so that
    H[Z] ≥ H[ε] = 0; the decoder maps each sample of Z to class logits.

    Categorical Z (``latent='categorical'``): the encoder's C = ``latent_dim``
    outputs give log p_Θ(z|x) by a log-softmax; the decoder is evaluated once
    on eye(C) to give the decoder matrix log p_Θ(ŷ|z), and
    log p_Θ(ŷ|x) = logsumexp_z [log p_Θ(z|x) + log p_Θ(ŷ|z)].

    Gaussian Z of the Deep Variational IB (``latent='vib'``, Alemi et al.,
    2016): the encoder has 2K outputs s; the first K are the mean μ(x), the
    last K give the scale σ(x) = softplus(s − 5) + 1e-6
    (:data:`VIB_SCALE_SHIFT`, :data:`VIB_MIN_SCALE`), and
    Z = μ(x) + σ(x) ⊙ ε with ε ~ N(0, I) from the 'noise' stream, by the
    reparameterisation trick. Z is stochastic by definition, so it is sampled
    in train and eval mode alike; ``noise`` must be False (the encoder's own
    noise replaces the zero-entropy noise).

    Sampling: ``num_samples`` = S samples of Z are stacked on a leading axis.
    The Dropout encoder ('dropout_cnn') in train mode is run S times under
    ``nn.vmap`` with shared parameters and one 'dropout' key per sample, so each
    sample has its own Dropout masks. Deterministic encoders ('mlp',
    'resnet18') and every encoder in eval mode are run once and broadcast to S
    samples; in particular BatchNorm is never vmapped, so its 'batch_stats'
    are computed from and updated with the batch exactly once per step. The
    zero-entropy noise is drawn independently for each of the S×B×K entries
    from the 'noise' stream, in train and eval mode alike (it is part of the
    definition of Z), so ``noise=True`` needs a 'noise' RNG in ``apply``.

    Parameters live in ``params['encoder']`` and ``params['decoder']`` whatever
    the mode; ``noise`` and ``latent`` add no parameters.

    Attributes:
      encoder: 'mlp' (784–1024–1024–K), 'dropout_cnn' (PyTorch MNIST CNN) or
        'resnet18' (CIFAR ResNet18).
      latent_dim: K for a continuous latent, C (number of categories) for a
        categorical one.
      num_classes: number of classes of Y.
      latent: a kind of :mod:`ibjax.latents`: 'continuous', 'categorical', 'vib'
        or one added with :func:`ibjax.latents.register`.
      noise: add zero-entropy noise to a continuous Z (must be False for a
        categorical or VIB Z).
      decoder: 'linear' (latent_dim×num_classes linear unit) or
        'categorical_mlp' (latent_dim–1024–1024–num_classes ReLU network of
        section 7.1; on a continuous Z it is applied to the samples of Z).
      dtype: computation dtype, 'float32' or 'bfloat16'; parameters stay float32.
      encoder_hidden: hidden widths of the 'mlp' encoder.
      decoder_hidden: hidden widths of the 'categorical_mlp' decoder.
      param_init: one of :data:`PARAM_INITS`, read by
        :func:`ibjax.step.create_train_state` (``'pytorch'`` applies
        :func:`pytorch_default_init` after ``init``).
    """

    encoder: str
    latent_dim: int
    num_classes: int
    latent: str = "continuous"
    noise: bool = False
    decoder: str = "linear"
    dtype: Any = "float32"
    encoder_hidden: tuple[int, ...] = (1024, 1024)
    decoder_hidden: tuple[int, ...] = (1024, 1024)
    param_init: str = "flax"

    def __post_init__(self) -> None:
        # Fail at construction, before any tracing or compilation.
        _check_choice("encoder", self.encoder, ENCODERS)
        _check_choice("latent", self.latent, latents.names())
        _check_choice("decoder", self.decoder, DECODERS)
        _check_choice("dtype", _dtype_name(self.dtype), DTYPES)
        _check_choice("param_init", self.param_init, PARAM_INITS)
        for name in ("latent_dim", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        if not isinstance(self.noise, bool):
            raise TypeError(f"`noise` must be a bool; got {self.noise!r}.")
        latents.of(self).check_model(self)
        _check_widths("encoder_hidden", self.encoder_hidden)
        _check_widths("decoder_hidden", self.decoder_hidden)
        super().__post_init__()

    def _make_encoder(self, dtype: Any) -> nn.Module:
        # A VIB encoder outputs the mean and the (pre-softplus) scale of p(z|x).
        width = latents.of(self).encoder_width(self.latent_dim)
        if self.encoder == "mlp":
            return MLP(width, self.encoder_hidden, flatten=True, dtype=dtype, name="encoder")
        if self.encoder == "dropout_cnn":
            return DropoutCNN(width, dtype=dtype, name="encoder")
        return ResNet18(width, dtype=dtype, name="encoder")

    def _make_decoder(self, dtype: Any) -> nn.Module:
        if self.decoder == "linear":
            return LinearDecoder(self.num_classes, dtype=dtype, name="decoder")
        return MLP(self.num_classes, self.decoder_hidden, dtype=dtype, name="decoder")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, num_samples: int) -> dict[str, jax.Array]:
        """Draws S = ``num_samples`` samples of Z for a batch ``x`` ``[B, ...]``.

        Args:
          x: inputs, ``[B, 28, 28, 1]`` for MNIST or ``[B, 32, 32, 3]`` for CIFAR10.
          train: Dropout on and BatchNorm in batch-statistics mode (pass
            ``mutable=['batch_stats']`` for 'resnet18').
          num_samples: S ≥ 1, a Python int.

        Returns:
          Continuous Z: ``z`` ``[S, B, K]`` (after the noise, if any) and
          ``logits`` ``[S, B, num_classes]`` of p_Θ(ŷ|z), both float32.
          VIB Z: ``z``, ``z_mean`` (μ) and ``z_scale`` (σ), each
          ``[S, B, K]``, and ``logits`` ``[S, B, num_classes]``, all float32;
          the 'noise' RNG is required.
          Categorical Z: ``z_log_probs`` ``[S, B, C]`` = log p_Θ(z|x),
          ``decoder_log_probs`` ``[C, num_classes]`` = log p_Θ(ŷ|z) and
          ``logits`` ``[S, B, num_classes]`` = log p_Θ(ŷ|x), all float32.
        """
        if not isinstance(train, bool):
            raise TypeError(f"`train` must be a Python bool; got {train!r}.")
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"`num_samples` must be a positive Python int; got {num_samples!r}.")
        dtype = jnp.dtype(self.dtype)
        encoder = self._make_encoder(dtype)
        decoder = self._make_decoder(dtype)

        if train and self.encoder in latents.STOCHASTIC_ENCODERS:
            # The convolutions before the first Dropout are deterministic: run
            # them once and draw the S Dropout samples of the head only.
            sample_encoder = nn.vmap(
                lambda module, inputs: module.head(inputs, train=True),
                variable_axes={"params": None},
                split_rngs={"params": False, "dropout": True},
                in_axes=None,
                axis_size=num_samples,
            )
            outputs = sample_encoder(encoder, encoder.trunk(x)).astype(jnp.float32)
        else:
            outputs = encoder(x, train=train).astype(jnp.float32)
            outputs = jnp.broadcast_to(outputs, (num_samples, *outputs.shape))

        return latents.of(self).sample(self, outputs, decoder)


def create_model(config: Any, num_classes: int) -> IBModel:
    """Builds the ``IBModel`` an experiment config describes.

    Takes the whole experiment config (its ``model`` section and its top-level
    ``dtype``) or just a ``model`` section (then ``dtype`` is read from it, if
    present). Reads ``encoder``, ``latent_dim``, ``latent``, ``noise``,
    ``decoder``, ``encoder_hidden``, ``decoder_hidden`` and ``init``; a field
    left out takes its value from :func:`ibjax.config.default_config`, the one
    home of the defaults. ``num_samples`` is an argument of the forward pass,
    not of the model.

    Args:
      config: an ``ml_collections.ConfigDict`` (or any mapping with ``get``).
      num_classes: number of classes of the data set.

    Returns:
      The (unbound) ``IBModel``; invalid fields raise ``ValueError`` here.
    """
    defaults = default_config()
    model = config.get("model")
    dtype = config.get("dtype", defaults.dtype)
    if model is None:  # a model section on its own
        model = config

    def field(name):
        value = model.get(name)
        return defaults.model[name] if value is None else value

    return IBModel(
        encoder=field("encoder"),
        latent_dim=field("latent_dim"),
        num_classes=num_classes,
        latent=field("latent"),
        noise=field("noise"),
        decoder=field("decoder"),
        dtype=dtype,
        encoder_hidden=tuple(field("encoder_hidden")),
        decoder_hidden=tuple(field("decoder_hidden")),
        param_init=field("init"),
    )
