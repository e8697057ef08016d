"""Draws the channel groups of a model as `tfprune.channel_groups` finds them (docs figure).

Every layer is a box, coloured by the channel group of its output; arrows follow the model's
graph; 1x1 shortcut convolutions sit beside the main path. The default draws the MLPerf Tiny
ResNet-8 into `docs/img/channel_groups_resnet8.png` (used by `docs/concepts/channel_groups.md`
and the README): the residual adds tie the shortcut, the block's last convolution and
everything up to the next convolutions into one group.

Runtime: a few seconds.

    python tools/draw_channel_groups.py
    python tools/draw_channel_groups.py --model cifar_resnet --out /tmp/resnet20.png
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("resnet8", "cifar_resnet", "small_cnn", "ds_cnn")


def _history(value, found):
    """Names of the layers whose outputs a layer config's `inbound_nodes` reference."""
    if isinstance(value, dict):
        if "keras_history" in value:
            found.append(value["keras_history"][0])
        for v in value.values():
            _history(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _history(v, found)
    return found


def layout(model):
    """`[(name, class, inbound names, output group id or None, column)]` in graph order."""
    import tfprune

    output_group = {}
    sizes = {}
    for g in tfprune.channel_groups(model):
        sizes[g.id] = g.size
        for m in g.members:
            if m.role in ("producer", "passthrough"):
                output_group.setdefault(m.layer, g.id)
    rows = []
    for config in model.get_config()["layers"]:
        layer = model.get_layer(config["name"])
        if config["class_name"] == "InputLayer":
            continue
        inbound = _history(config.get("inbound_nodes", []), [])
        shortcut = getattr(layer, "kernel_size", None) == (1, 1) and len(rows) > 0
        rows.append((layer.name, type(layer).__name__, inbound, output_group.get(layer.name),
                     1 if shortcut else 0))
    return rows, sizes


def draw(model, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    rows, sizes = layout(model)
    groups = sorted({g for *_, g, _ in rows if g is not None})
    palette = plt.get_cmap("tab10")
    colour = {g: (*palette(i % 10)[:3], 0.55) for i, g in enumerate(groups)}
    position, y = {}, 0.0
    for name, _, inbound, _, column in rows:
        if column == 1:   # beside the layer it reads
            position[name] = (1.0, position.get(inbound[0], (0, y))[1] - 0.5)
        else:
            y -= 1.0
            position[name] = (0.0, y)
    height = -y + 1
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * height + 1.2))
    for name, cls, inbound, group, column in rows:
        x0, y0 = position[name]
        for src in inbound:
            if src in position:
                xs, ys = position[src]
                ax.annotate("", xy=(x0, y0 + 0.2), xytext=(xs, ys - 0.2),
                            arrowprops=dict(arrowstyle="->", color="grey", lw=0.8,
                                            connectionstyle="arc3,rad=-0.25" if xs != x0
                                            else "arc3"))
        face = colour.get(group, (0.9, 0.9, 0.9, 1))
        ax.add_patch(FancyBboxPatch((x0 - 0.48, y0 - 0.2), 0.96, 0.4,
                                    boxstyle="round,pad=0.02", facecolor=face, edgecolor="black",
                                    linewidth=0.6))
        label = f"{cls}  ({name})"
        ax.text(x0, y0, label, ha="center", va="center", fontsize=7)
        if group is not None and column == 0:
            ax.text(-0.5, y0, f"group {group} ({sizes[group]} ch)", ha="right", va="center",
                    fontsize=7, color="dimgrey")
    ax.set_xlim(-1.2, 1.6)
    ax.set_ylim(y - 0.8, 0.2)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="resnet8",
                        help="a model of tfprune.zoo (default resnet8)")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "docs" / "img" / "channel_groups_resnet8.png")
    args = parser.parse_args(argv)
    import tfprune

    model = getattr(tfprune.zoo, args.model)()
    draw(model, args.out, f"Channel groups of tfprune.zoo.{args.model}() "
                          "(colour = group of the layer's output)")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
