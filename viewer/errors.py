"""The two errors of the rendering pipeline (re-exported by :mod:`viewer.render`)."""

from __future__ import annotations


class RenderError(ValueError):
    """The request cannot be rendered (bad parameter: a 400)."""


class UndecodablePixels(RenderError):
    """The stored pixel data cannot be decoded (a 422)."""
