"""Re-decide the test-time mirroring veto of fitted runs from the per-volume validation scores
their postprocess.json already holds: once with every volume its own pair, once with one pair per
subject (as `fewsam fit` decides), to show which runs' choices the pairing changes. Nothing is
encoded or predicted; the runs are only read.
Usage: .venv/bin/python benchmarks/mirror_veto_subjects.py RUN [RUN ...]
"""

import json
import sys
from pathlib import Path

from fewsam.data import open_dataset
from fewsam.inference import POSTPROCESS, mirroring_choice
from fewsam.runs import check_run


def redecide(run: Path) -> str:
    config = check_run(run)
    post = json.loads((run / POSTPROCESS).read_text())
    if "views" not in post:
        return f"{run}: no mirroring choice recorded"
    dataset = open_dataset(config["data"])
    subjects = [dataset.subject_of(case_id) for case_id in dataset.split(config["val_split"])]
    single, mirrored = post["views"]["single"], post["views"]["mirrored"]
    by_volume = mirroring_choice(single, mirrored)
    by_subject = mirroring_choice(single, mirrored, subjects)
    return (f"{run}: {len(subjects)} volumes of {len(set(subjects))} subjects; "
            f"single {by_volume['val_dice_single_view']:.4f} mirrored {by_volume['val_dice_mirrored']:.4f}; "
            f"per volume p {by_volume['mirror_off_p']:.4f} mirror {by_volume['mirror']}; "
            f"per subject p {by_subject['mirror_off_p']:.4f} mirror {by_subject['mirror']}; "
            f"recorded mirror {post['mirror']}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(redecide(Path(arg)), flush=True)
