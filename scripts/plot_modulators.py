#!/usr/bin/env python
"""Plots the modulating factors f(p_t) and the losses -f(p_t) log(p_t) of the modulated-CE family.

    python scripts/plot_modulators.py [--output docs/modulators.png] [--gammas 1,2,5]

Left: f(p_t) for (1 - p_t)^gamma (each gamma), cos(p_t), exp(-p_t), exp(-p_t^2) and CE's f = 1.
Right: the loss -f(p_t) log(p_t) for the same, plus Poly-1 focal (gamma 2, epsilon 1, no alpha),
on p_t in (0, 1] (the paper's figure 1 axes). Writes one PNG.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on the training machines
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from retinanet.modulated import MODULATORS  # noqa: E402


Curves = dict[str, torch.Tensor]


def curves(gammas: list[float], points: int = 400) -> tuple[torch.Tensor, Curves, Curves]:
    """p_t (points,), {label: f(p_t)}, {label: -f(p_t) log p_t} for every plotted member."""
    p_t = torch.linspace(1e-3, 1.0, points, dtype=torch.float64)
    factors = {"CE (f = 1)": torch.ones_like(p_t)}
    factors.update({f"(1 − p_t)^{g:g}": (1 - p_t) ** g for g in gammas})
    factors.update({"cos(p_t)": MODULATORS["cos"](p_t), "exp(−p_t)": MODULATORS["exp"](p_t),
                    "exp(−p_t²)": MODULATORS["exp_sq"](p_t)})
    ce = -torch.log(p_t)
    losses = {label: f * ce for label, f in factors.items()}
    losses["Poly-1 (γ 2, ε 1)"] = (1 - p_t) ** 2 * ce + (1 - p_t) ** 3
    return p_t, factors, losses


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("docs/modulators.png"))
    p.add_argument("--gammas", default="1,2,5", help="comma-separated gammas of (1 - p_t)^gamma (default 1,2,5)")
    args = p.parse_args(argv)
    gammas = [float(g) for g in args.gammas.split(",") if g.strip()]
    p_t, factors, losses = curves(gammas)
    fig, (ax_f, ax_l) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for label, f in factors.items():
        ax_f.plot(p_t, f, label=label, linestyle="--" if label.startswith("CE") else "-")
    for label, loss in losses.items():
        ax_l.plot(p_t, loss, label=label, linestyle="--" if label.startswith("CE") else "-")
    ax_f.set(xlabel="p_t (probability of the true class)", ylabel="f(p_t)", title="modulating factor", ylim=(0, 1.05))
    ax_l.set(xlabel="p_t", ylabel="−f(p_t) log p_t", title="loss", ylim=(0, 5))
    for ax in (ax_f, ax_l):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
