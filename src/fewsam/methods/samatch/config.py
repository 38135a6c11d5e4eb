"""SAM-Match's recipe: the shared student recipe plus the semi-supervised and SAM settings."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from fewsam.config import MAX_LR, ConfigError, UnlabelledPoolConfig, field_default, listed, option, option_name
from fewsam.methods.student import StudentFitConfig
from fewsam.train import TrainConfig


# What only SAM's stages read: with --no-sam none of them runs. ``threshold`` and ``lambda_u`` are
# FixMatch's own as well; the schedule (--warmup-steps, --refresh-every, --ramp-steps) is taken, so that
# the FixMatch and SAM-Match arms of one study can share one command line (benchmarks/samatch_cpu.sh).
SAM_ONLY = ("sam_weight", "box_margin", "sam_steps", "sam_lr", "sam_batch", "sam_val_slices", "sam_round_steps",
            "sam_unlabeled_weight", "background", "prompt_region", "overlap", "unprompted", "prompt_clicks")
SCHEDULE = ("warmup_steps", "refresh_every", "ramp_steps")  # when SAM's pseudo-labels come and weigh in
# What only FixMatch's consistency loss reads (the unlabelled slices still pass the student's batch norm).
CONSISTENCY_ONLY = ("threshold",)


@dataclass(frozen=True)
class SamMatchConfig(StudentFitConfig, UnlabelledPoolConfig):
    """FixMatch student + SAM-refined pseudo-labels (``use_sam=False``: plain FixMatch)."""

    use_sam: bool = option(True, "SAM pseudo-labels; --no-sam is plain FixMatch (the Match baseline).",
                           flag="--sam/--no-sam")
    unlabeled_batch: int = option(8, "Unlabelled slices per step.", min=1)
    threshold: float = option(0.95, "FixMatch / prompt confidence threshold (above 1: never confident).", min=0.0)
    lambda_u: float = option(1.0, "Weight of the FixMatch consistency loss.", min=0.0)
    warmup_steps: int = option(200, "Student steps before the first SAM refresh.", min=0)
    refresh_every: int = option(200, "Steps between SAM pseudo-label refreshes.", min=1)
    ramp_steps: int = option(200, "Ramp-up of the SAM pseudo-label loss weight.", min=0)
    sam_weight: float = option(1.0, "Final weight of the SAM pseudo-label loss.", min=0.0)
    box_margin: float = option(10.0, "Pixels around prompt boxes (10 ACDC, 30 BUSI).", min=0.0)
    sam_steps: int = option(200, "SAM decoder fine-tuning steps on ground-truth boxes (0: zero-shot SAM).", min=0)
    sam_lr: float = option(1e-4, "Learning rate of SAM's decoder (fine-tuning and rounds).", above=0.0,
                           max=MAX_LR)
    sam_batch: int = option(8, "Box prompts per SAM decoder step.", min=1)
    sam_val_slices: int = option(48, "Validation slices (evenly spread) for SAM's model selection.", min=1)
    sam_round_steps: int = option(50, "SAM steps per refresh learning from the student (0: SAM fixed).", min=0)
    sam_unlabeled_weight: float = option(0.25, "Weight of the student-labelled slices in SAM's rounds.", min=0.0)
    background: str = option("mean", "With --overlap argmax: background = 1 - mean or 1 - max class probability.",
                             choices=("mean", "max"))
    prompt_region: str = option("argmax", "Prompt box around the largest 'confident' or 'argmax' component.",
                                choices=("confident", "argmax"))
    overlap: str = option("smaller", "Overlapping SAM masks: 'argmax' of probabilities or 'smaller' mask wins.",
                          choices=("argmax", "smaller"))
    unprompted: str = option("ignore", "Pixels of classes SAM was not prompted for: 'ignore' or 'background'.",
                             choices=("ignore", "background"))
    prompt_clicks: str = option("positive", "Clicks besides each box: positive (the region's deepest pixel; tells "
                                "nested anatomy apart), none (box only) or contrast (+ negatives on the other "
                                "structures).", choices=("none", "positive", "contrast"))

    def check_together(self) -> None:
        """SAM's options given with --no-sam (plain FixMatch) would tune nothing: the fit neither
        fine-tunes SAM nor refreshes pseudo-labels, and would record values that changed nothing."""
        super().check_together()
        if self.use_sam:
            return
        given = [option_name(f) for f in fields(self)
                 if f.name in SAM_ONLY and getattr(self, f.name) != field_default(f)]
        if given:
            verb, them = ("tune", "them") if len(given) > 1 else ("tunes", "it")
            raise ConfigError(f"{listed(given)} {verb} SAM's pseudo-labels, which --no-sam leaves out (plain "
                              f"FixMatch); leave {them} out, or drop --no-sam")

    def train_config(self, seed: int) -> TrainConfig:
        """The student's, with --patience judged only once SAM's pseudo-labels have ramped up. Plain FixMatch
        (--no-sam) has no pseudo-labels to wait for: its consistency loss weighs in from the first step, so its
        plateaus count from the first validation, as a supervised fit's do."""
        waits = self.warmup_steps + self.ramp_steps if self.use_sam else 0
        return replace(super().train_config(seed), patience_after=waits)
