"""Print a Markdown table (Dice per class, mean Dice, mean IoU, HD95) from evaluation JSON files."""

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    result = json.loads(path.read_text())
    per_class = result["per_class"]
    dice = " | ".join(f"{per_class[c]['dice']:.4f}" for c in per_class)
    hd95 = result["mean"].get("hd95")
    hd = "n/a" if hd95 is None else f"{hd95:.2f}"
    return f"| {path.stem} | {dice} | {result['mean']['dice']:.4f} | {result['mean']['iou']:.4f} | {hd} |"


def main(paths: list[str]) -> None:
    first = json.loads(Path(paths[0]).read_text())
    classes = list(first["per_class"])
    print(f"| run | {' | '.join(c + ' Dice' for c in classes)} | mean Dice | mean IoU | HD95 |")
    print("|---" * (len(classes) + 4) + "|")
    for p in paths:
        print(row(Path(p)))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python3 benchmarks/table.py EVAL.json...")
    main(sys.argv[1:])
