"""Model builders used by recipes (the library itself works with any ``nn.Module``)."""

from __future__ import annotations

from torch import nn

__all__ = ["small_cnn", "mlp_classifier", "MODEL_BUILDERS", "build_model"]


def small_cnn(in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 128, image_size: int = 28) -> nn.Module:
    """Two conv blocks and a two-layer head (0.42M parameters at the defaults on 28x28 inputs)."""
    flat = 2 * width * (image_size // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def mlp_classifier(in_features: int, num_classes: int = 10, hidden: int = 128) -> nn.Module:
    """Flatten, one hidden layer: a cheap reference or proxy model for small images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


MODEL_BUILDERS = {"small_cnn": small_cnn, "mlp": mlp_classifier}


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](**kwargs)
