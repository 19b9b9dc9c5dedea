"""Figures for reports (evaluation, sweeps), drawn headless: jobs have no display."""

from __future__ import annotations

import io


def subplots(*args, **kwargs):
    """``matplotlib.pyplot.subplots`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed (long jobs draw many)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
