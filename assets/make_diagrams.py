"""Draw assets/coupled_vs_decoupled.png: how coupled and decoupled training split the work between ranks.

.venv/bin/python assets/make_diagrams.py        # rewrites the PNG next to this script
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "coupled_vs_decoupled.png"
ENV, NET, DATA, TALK = "#cfe8cf", "#cfdcf3", "#f6e3c4", "#7a7a7a"


def box(ax: Axes, x: float, y: float, w: float, h: float, text: str, color: str, size: float = 9) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#444", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax: Axes, start: tuple, end: tuple, text: str = "", color: str = "#333", rad: float = 0.0) -> None:
    ax.annotate(
        "", xy=end, xytext=start,
        arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.3, "connectionstyle": f"arc3,rad={rad}"},
    )  # fmt: skip
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx, my + 0.12, text, ha="center", va="bottom", fontsize=8, color=color)


def rank_column(ax: Axes, x: float, rank: int) -> None:
    """One coupled rank: its own envs, buffer and agent replica."""
    ax.text(x + 0.9, 4.55, f"rank {rank}", ha="center", fontsize=10, weight="bold")
    box(ax, x, 3.5, 1.8, 0.75, "num_envs envs", ENV)
    box(ax, x, 2.3, 1.8, 0.75, "rollout / replay\nbuffer", DATA)
    box(ax, x, 1.1, 1.8, 0.75, "agent replica\n(act + train)", NET)
    arrow(ax, (x + 0.9, 3.5), (x + 0.9, 3.05))
    arrow(ax, (x + 0.9, 2.3), (x + 0.9, 1.85))
    arrow(ax, (x + 1.8, 1.45), (x + 1.8, 3.9), rad=0.5, color="#2a6f2a")


def coupled(ax: Axes) -> None:
    ax.set_title("coupled: every rank collects and trains", fontsize=11, weight="bold")
    for i, x in enumerate((0.3, 3.0, 5.7)):
        rank_column(ax, x, i)
    ax.plot([0.6, 7.2], [0.55, 0.55], color=TALK, lw=2)
    for x in (1.2, 3.9, 6.6):
        ax.plot([x, x], [1.1, 0.55], color=TALK, lw=1.2, ls="--")
    ax.text(3.9, 0.15, "DDP all-reduce of gradients: replicas stay identical", ha="center", fontsize=8.5, color="#333")
    ax.text(3.9, -0.35, "policy_step += num_envs * world_size per vector step", ha="center", fontsize=8.5, color="#333")


def decoupled(ax: Axes) -> None:
    ax.set_title("decoupled: one player, the other ranks train", fontsize=11, weight="bold")
    ax.text(1.5, 4.55, "rank 0: player", ha="center", fontsize=10, weight="bold")
    box(ax, 0.3, 3.5, 2.4, 0.75, "all envs (num_envs)", ENV)
    box(ax, 0.3, 2.3, 2.4, 0.75, "buffer, logging,\ncheckpoints", DATA)
    box(ax, 0.3, 1.1, 2.4, 0.75, "agent (act only)", NET)
    arrow(ax, (1.5, 3.5), (1.5, 3.05))
    for i, y in enumerate((3.3, 1.5)):
        x = 5.0
        ax.text(x + 1.0, y + 0.95, f"rank {i + 1}: trainer", ha="center", fontsize=10, weight="bold")
        box(ax, x, y, 2.0, 0.75, "agent replica\n(train only)", NET)
        arrow(ax, (2.7, 2.7), (x, y + 0.45), text="batch chunk" if i == 0 else "", color="#8a5a00")
    arrow(ax, (5.0, 3.5), (2.7, 1.5), text="new weights (trainer 1)", color="#2a6f2a", rad=-0.15)
    ax.plot([7.25, 7.25], [1.85, 3.3], color=TALK, lw=2)
    ax.text(7.4, 2.55, "DDP among\ntrainers", fontsize=8, color="#333", va="center")
    ax.text(3.9, 0.15, "the player keeps stepping envs while trainers update", ha="center", fontsize=8.5, color="#333")
    ax.text(3.9, -0.35, "needs --devices >= 2 (1 player + N trainers)", ha="center", fontsize=8.5, color="#333")


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), dpi=110)
    for ax, draw in zip(axes, (coupled, decoupled), strict=True):
        ax.set_xlim(0, 8.2)
        ax.set_ylim(-0.6, 5.0)
        ax.axis("off")
        draw(ax)
    fig.tight_layout()
    fig.savefig(OUT)
    plt.close(fig)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
