"""Warnings that point at the caller's line, however deep in the library they are raised."""

from __future__ import annotations

import os
import sys
import warnings

import torch.utils._contextlib

_INTERNAL = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.abspath(torch.utils._contextlib.__file__))


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside this package and torch's context decorators
    (``torch.inference_mode`` wraps some public methods), so a warning names the user's call and is shown once
    per call site."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
