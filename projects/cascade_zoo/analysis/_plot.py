"""Matplotlib on its headless backend, and saving a figure the same way for every tool."""


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, output_path: str, title: str = "") -> str:
    """Give ``fig`` its title, lay it out, write it as PNG, close it; returns ``output_path``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output_path, dpi=110)
    pyplot().close(fig)
    return output_path
