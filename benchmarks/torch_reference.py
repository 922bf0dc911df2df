"""The benchmark's models and losses in eager PyTorch: the baseline ibjax is timed against.

An optional extra (``pip install torch``); ``ibjax`` never imports this module.
It reads the same experiment configs as ibjax (``configs/*.py``) and builds
the same network, loss and optimiser for the three benchmarked models
(Kirsch, Lyle & Gal, "Unpacking Information Bottlenecks", section 7):

* MLP 784–1024–1024–C with a categorical latent of C = 100 categories and the
  decoder C–1024–1024–10 evaluated on the C one-hot codes; loss the Decoder
  Cross-Entropy ``H_Θ[Y|Z]_b = Σ_z p_Θ(z|x_b) (−log p_Θ(y_b|z))``.
* The PyTorch-example Dropout CNN with K = 128 outputs, zero-entropy noise, a
  linear decoder and S = 12 Dropout samples; loss the mean over samples of the
  decoder's negative log-likelihood. The convolutions come before the first
  Dropout, so they are computed once per example and only the stochastic head
  runs S times, as in ibjax (where ``vmap`` leaves the unbatched trunk alone).
* The CIFAR ResNet18 with K = 100 outputs, zero-entropy noise N(0, 1/(2πe)) on
  z, a linear decoder and the loss ``CE + γ Σ_y p̂(y) Σ_i ½ log(2πe (Var[z_i|y] + ε))``
  with unbiased within-class variances; pad-4 random crop and flip on the batch.

Every step (:func:`make_train_step`, on the CPU or an accelerator, eager or
``torch.compile``-d) gathers its batch from the whole uint8 data set on the
device by index, normalises it, and takes one Adam step (learning rate from
the config, 1e-4), as ibjax's step does. ibjax's step also accumulates its metrics (accuracy,
gradient norm, prediction cross-entropy) and guards against NaN; this
baseline does only the loss, the backward pass and the update, so the ratio
it gives is conservative for ibjax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ibjax.data import NORMALIZATION

__all__ = [
    "ZERO_ENTROPY_STD",
    "MLPCategorical",
    "DropoutCNN",
    "ResNet18",
    "categorical_decoder_cross_entropy",
    "decoder_cross_entropy",
    "conditional_log_variance",
    "crop_and_flip",
    "random_crop_flip",
    "load_flax_mlp_categorical",
    "build",
    "network_loss",
    "input_batch",
    "zero_entropy_noise",
    "training_loss",
    "make_train_step",
]

#: Standard deviation of zero-entropy noise: ½ log(2πe σ²) = 0 nats (section 6.1).
ZERO_ENTROPY_STD: float = (2.0 * math.pi * math.e) ** -0.5

_LOG_2PIE = math.log(2.0 * math.pi * math.e)


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers between consecutive ``widths`` with ReLUs between them."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


class MLPCategorical(nn.Module):
    """Encoder 784–1024–1024–C giving log p_Θ(z|x), decoder C–1024–1024–10 giving log p_Θ(ŷ|z)."""

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (1024, 1024), categories: int = 100,
                 decoder_hidden: Sequence[int] = (1024, 1024), num_classes: int = 10):
        super().__init__()
        self.categories = categories
        self.encoder = _mlp((in_features, *hidden, categories))
        self.decoder = _mlp((categories, *decoder_hidden, num_classes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, ...]`` -> log p_Θ(z|x) ``[B, C]`` and the decoder matrix ``[C, num_classes]``."""
        z_log_probs = F.log_softmax(self.encoder(x.flatten(1)).float(), dim=-1)
        codes = torch.eye(self.categories, dtype=x.dtype, device=x.device)
        decoder_log_probs = F.log_softmax(self.decoder(codes).float(), dim=-1)
        return z_log_probs, decoder_log_probs


class DropoutCNN(nn.Module):
    """The PyTorch MNIST example CNN with K outputs; S Dropout samples of its head.

    conv 32 3×3, ReLU, conv 64 3×3, ReLU, 2×2 max-pool, Dropout(0.25),
    flatten, dense 128, ReLU, Dropout(0.5), dense K.
    """

    def __init__(self, features: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, features)

    def forward(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """``x`` ``[B, 1, 28, 28]`` -> encoder outputs ``[S, B, K]``, each sample with its own masks."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2).flatten(1)
        # The trunk is deterministic: run it once and repeat only what Dropout makes stochastic.
        h = h.repeat(num_samples, 1)
        h = F.dropout(h, 0.25, self.training)
        h = F.dropout(F.relu(self.fc1(h)), 0.5, self.training)
        return self.fc2(h).view(num_samples, x.shape[0], -1)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv+BN, identity or 1×1 projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet18: 3×3 stem, no max-pool, blocks [2, 2, 2, 2] of 64–512, K outputs."""

    def __init__(self, features: int = 100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, in_planes = [], 64
        for planes, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
            blocks += [BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)]
            in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(512, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, 3, 32, 32]`` -> ``[B, K]``."""
        return self.output(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def categorical_decoder_cross_entropy(z_log_probs: torch.Tensor, decoder_log_probs: torch.Tensor,
                                      labels: torch.Tensor) -> torch.Tensor:
    """Per-example H_Θ[Y|Z]_b = Σ_z p_Θ(z|x_b) (−log p_Θ(y_b|z)), ``[B, C]``, ``[C, Cy]``, ``[B]`` -> ``[B]``."""
    return torch.sum(z_log_probs.exp() * -decoder_log_probs.T[labels], dim=-1)


def decoder_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example mean over S samples of −log softmax(logits_s)[y_b]; ``[S, B, C]``, ``[B]`` -> ``[B]``."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    picked = torch.gather(log_probs, -1, labels.expand(logits.shape[0], -1)[..., None])[..., 0]
    return -picked.mean(dim=0)


def conditional_log_variance(z: torch.Tensor, labels: torch.Tensor, num_classes: int,
                             eps: float = 1e-8) -> torch.Tensor:
    """Σ_y p̂(y) Σ_i ½ log(2πe (Var[z_i|y] + eps)) with unbiased within-class variances.

    ``z`` ``[N, K]``, ``labels`` ``[N]``. Classes with fewer than two points
    are left out and p̂(y) renormalised over the rest, as in
    ``ibjax.losses.conditional_log_variance``.
    """
    z = z.float()
    one_hot = F.one_hot(labels, num_classes).float()
    counts = one_hot.sum(dim=0)
    means = (one_hot.T @ z) / counts.clamp(min=1.0)[:, None]
    centred = z - one_hot @ means
    variances = (one_hot.T @ centred**2) / (counts - 1.0).clamp(min=1.0)[:, None]
    usable = torch.where(counts >= 2.0, counts, torch.zeros_like(counts))
    p_y = usable / usable.sum().clamp(min=1.0)
    return torch.sum(p_y * 0.5 * torch.sum(_LOG_2PIE + torch.log(variances + eps), dim=-1))


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """``out[b] = flip_b(pad(images[b])[dy_b : dy_b + H, dx_b : dx_b + W])`` for a batch ``[B, H, W, C]``.

    ``pad`` adds ``padding`` zero pixels on each side; ``offsets`` ``[B, 2]`` are
    ``(dy, dx)`` in ``[0, 2·padding]``; ``flips`` ``[B]`` bool mirrors left-right.
    """
    batch, height, width, _ = images.shape
    padded = F.pad(images, (0, 0, padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(height)
    cols = torch.arange(width).expand(batch, -1)
    cols = torch.where(flips[:, None], cols.flip(-1), cols) + offsets[:, 1:]
    return padded[torch.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """CIFAR augmentation: :func:`crop_and_flip` at uniform offsets, each example flipped with probability ½."""
    batch = images.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    return crop_and_flip(images, offsets, flips, padding)


def load_flax_mlp_categorical(model: MLPCategorical, params) -> MLPCategorical:
    """Copies the parameters of an ibjax ``IBModel`` (mlp encoder, categorical_mlp decoder) into ``model``.

    Flax's Dense kernels are ``[in, out]``; torch's Linear weights are ``[out, in]``.
    """
    for side in ("encoder", "decoder"):
        names = sorted((k for k in params[side] if k.startswith("hidden_")), key=lambda k: int(k.split("_")[1]))
        linears = [m for m in getattr(model, side) if isinstance(m, nn.Linear)]
        if len(linears) != len(names) + 1:
            raise ValueError(f"`params['{side}']` has {len(names) + 1} Dense layers; the torch model has {len(linears)}.")
        for linear, name in zip(linears, [*names, "output"]):
            linear.weight.data.copy_(torch.tensor(np.asarray(params[side][name]["kernel"]).T))
            linear.bias.data.copy_(torch.tensor(np.asarray(params[side][name]["bias"])))
    return model


def build(config: ml_collections.ConfigDict) -> nn.Module:
    """The torch model of a benchmarked ibjax config; other configs raise ``ValueError``."""
    m = config.model
    if m.encoder == "mlp" and m.latent == "categorical" and m.decoder == "categorical_mlp":
        return MLPCategorical(784, tuple(m.encoder_hidden), m.latent_dim, tuple(m.decoder_hidden))
    if m.latent == "continuous" and m.decoder == "linear" and m.encoder in ("dropout_cnn", "resnet18"):
        encoder = DropoutCNN(m.latent_dim) if m.encoder == "dropout_cnn" else ResNet18(m.latent_dim)
        return nn.ModuleDict({"encoder": encoder, "decoder": nn.Linear(m.latent_dim, 10)})
    raise ValueError(
        "The torch reference covers model.encoder='mlp' with latent='categorical' and decoder='categorical_mlp', "
        f"and encoder in ('dropout_cnn', 'resnet18') with a continuous latent and decoder='linear'; got "
        f"encoder={m.encoder!r}, latent={m.latent!r}, decoder={m.decoder!r}."
    )


def network_loss(config: ml_collections.ConfigDict, model: nn.Module
                 ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``loss(x, labels, noise)``: the networks on a normalised batch and the config's loss terms.

    The networks run under bfloat16 autocast on the model's device type if
    ``config.dtype`` is 'bfloat16'; the loss terms are computed in float32.
    The config is read here, into plain constants, so that ``torch.compile``
    of the returned function sees no config object.

    Args:
      config: the ibjax experiment config the model was built from (:func:`build`).
      model: the model :func:`build` returned.

    Returns:
      ``loss(x, labels, noise)`` of ``x`` ``[B, C, H, W]`` (:func:`input_batch`),
      int64 ``labels`` ``[B]`` and the zero-entropy noise ``[S, B, K]``
      (:func:`zero_entropy_noise`; None without): the scalar loss.
    """
    m, objective = config.model, config.objective
    if objective.regularizer not in ("none", "cond_log_var"):
        raise ValueError("The torch reference implements objective.regularizer in ('none', 'cond_log_var'); "
                         f"got {objective.regularizer!r}.")
    autocast = dict(device_type=next(model.parameters()).device.type, dtype=torch.bfloat16,
                    enabled=config.dtype == "bfloat16")
    categorical, cnn = m.latent == "categorical", m.encoder == "dropout_cnn"
    samples = int(m.num_samples) if cnn else 1
    gamma = float(objective.gamma) if objective.regularizer == "cond_log_var" else None
    eps = float(objective.eps)

    def loss(x: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(**autocast):
            if categorical:
                return categorical_decoder_cross_entropy(*model(x), labels).mean()
            z = (model["encoder"](x, samples) if cnn else model["encoder"](x)[None]).float()
            z = z if noise is None else z + noise
            logits = model["decoder"](z).float()
        total = decoder_cross_entropy(logits, labels).mean()
        if gamma is not None:
            total = total + gamma * conditional_log_variance(
                z.flatten(0, 1), labels.repeat(z.shape[0]), logits.shape[-1], eps)
        return total

    return loss


def input_batch(config: ml_collections.ConfigDict, device: torch.device | str = "cpu",
                memory_format: torch.memory_format = torch.contiguous_format
                ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``inputs(images, generator)``: a uint8 batch ``[B, H, W, C]`` on ``device`` as the networks take it.

    Normalised, augmented if ``config.data.augment`` (drawn from
    ``generator``), and ``[B, C, H, W]`` in ``memory_format``.
    """
    mean, std = (torch.tensor(v, device=device) for v in NORMALIZATION[config.data.name])
    augment = bool(config.data.augment)

    def inputs(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = (images.float() / 255.0 - mean) / std
        if augment:
            with torch.device(images.device):  # random_crop_flip makes its index tensors on the default device
                x = random_crop_flip(x, generator)
        return x.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)

    return inputs


def zero_entropy_noise(config: ml_collections.ConfigDict, batch_size: int, generator: torch.Generator,
                       device: torch.device | str = "cpu") -> torch.Tensor | None:
    """N(0, 1/(2πe)) noise ``[S, B, K]`` for a continuous latent with ``model.noise``; None otherwise."""
    m = config.model
    if m.latent == "categorical" or not m.noise:
        return None
    samples = int(m.num_samples) if m.encoder == "dropout_cnn" else 1
    return ZERO_ENTROPY_STD * torch.randn((samples, batch_size, int(m.latent_dim)), generator=generator,
                                          device=device)


def training_loss(config: ml_collections.ConfigDict, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  generator: torch.Generator, memory_format: torch.memory_format = torch.contiguous_format
                  ) -> torch.Tensor:
    """The training loss of a batch, as ibjax's train step computes it for ``config``.

    :func:`input_batch`, then :func:`network_loss` with :func:`zero_entropy_noise`.

    Args:
      config: the ibjax experiment config the model was built from (:func:`build`).
      model: the model :func:`build` returned, in train mode.
      images: uint8 ``[B, H, W, C]``.
      labels: int64 ``[B]``.
      generator: draws the augmentation and the zero-entropy noise.
      memory_format: layout of the image batch handed to the network.

    Returns:
      The scalar loss.
    """
    x = input_batch(config, images.device, memory_format)(images, generator)
    noise = zero_entropy_noise(config, len(labels), generator, images.device)
    return network_loss(config, model)(x, labels, noise)


def make_train_step(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray, *,
                    seed: int = 0, device: torch.device | str = "cpu", compiled: bool = False,
                    channels_last: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """One training step of the config's model on ``device``: ``step(batch_idx) -> loss``.

    The data set, the indices and the random generator live on ``device``;
    Adam is fused on CUDA (``foreach`` elsewhere). ``compiled`` runs the
    networks and the loss (:func:`network_loss`) through ``torch.compile``
    (``dynamic=False``); the augmentation and the noise draw stay eager.

    Args:
      config: an ibjax experiment config (``configs/*.py``); reads the model,
        the objective, ``dtype`` ('bfloat16' runs the networks under
        autocast) and ``train.learning_rate``.
      images: the whole data set, uint8 ``[N, H, W, C]``.
      labels: int ``[N]``.
      seed: seeds the parameters, Dropout, the noise and the augmentation.
      device: where the step runs.
      compiled: ``torch.compile`` the networks and the loss.
      channels_last: keep a convolutional network's activations NHWC in
        memory (oneDNN's and cuDNN's fast convolution layout).

    Returns:
      ``step(batch_idx)``: takes ``[B]`` indices into ``images`` (int64 on
      ``device``, or anything ``torch.as_tensor`` takes), applies one Adam
      update and returns the loss (a 0-d tensor, not synchronised).
    """
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.dtype must be 'float32' or 'bfloat16'; got {config.dtype!r}.")
    device = torch.device(device)
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    conv = config.model.encoder != "mlp"
    memory_format = torch.channels_last if conv and channels_last else torch.contiguous_format
    model = build(config).to(device=device, memory_format=memory_format).train()
    adam = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate, **adam)
    data = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    targets = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    inputs = input_batch(config, device, memory_format)
    loss_fn = network_loss(config, model)
    loss_fn = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn

    def step(batch_idx) -> torch.Tensor:
        idx = torch.as_tensor(batch_idx, dtype=torch.int64, device=device)
        x = inputs(data[idx], generator)
        loss = loss_fn(x, targets[idx], zero_entropy_noise(config, len(idx), generator, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step
