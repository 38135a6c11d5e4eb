"""Few-shot SAM fine-tuning. Labelled regions become the prompts; only the decoder learns.

The reformulated decoder: instead of point/box tokens, each class (background included) is
queried by its few-shot prototype token(s) - the masked average of the labelled slices'
embeddings over that class's region. The tokens go through SAM's two-way transformer next to
SAM's own output tokens; each prototype token's output state goes through the mask
hypernetwork, so one decoder pass yields one mask per class (C+1 logits, softmax over classes).
One pass for all classes costs the same as SAM's single-prompt pass, which keeps CPU training
cheap.

During training a class's token is the mean of a random subset of the shots, so the decoder
learns to work with prototypes that were not computed from the very image it segments - which
is the situation at inference.

At the end of a fit two test-time steps are decided on the run's validation cases: averaging
over the slice's mirror images, kept unless the single view scores significantly better
(``inference.mirroring_choice``), and refining each class's mask with SAM's own box decoder,
prompted by the mask itself (``fewsam.self_prompting``), kept only if it scores higher: the
decoder finds the structure, SAM's prior draws its boundary.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from fewsam.config import MAX_LR, PATIENCE_HELP, Config, option
from fewsam.data.types import Case
from fewsam.distributed import local_part
from fewsam.embedded import (MIRROR_VIEWS, CacheEntries, CaseSlices, EmbeddedSlice, embed_augmented, embed_cases,
                             embed_refs, undo_dihedral)
from fewsam.errors import DataError
from fewsam.fitting import FitContext, LabelledLoss, refuse_background_only_validation
from fewsam.inference import (CAVITY_RULE_HELP, POSTPROCESS, CavityRule, check_labelled, chosen_val_dice, labels_from_logits,
                              mirroring_choice, postprocess_volume, postprocessing_choice, stack_volume)
from fewsam.labels import IGNORE, index_lut, value_lut
from fewsam.methods import Method
from fewsam.metrics import selection_score, volume_score
from fewsam.models.acceleration import REFERENCE, Acceleration, acceleration_of_run, prepare_decoder
from fewsam.models.sam import SamModel, postprocess_logits
from fewsam.probabilities import ProbabilityStage
from fewsam.progress import tracked
from fewsam.prompts import masked_average_pool, region_weights
from fewsam.runs import write_json
from fewsam.self_prompting import PseudoLabeller, SelfPromptRules, merge_refined
from fewsam.train import (TrainConfig, TrainResult, atomic_torch_save, load_best, load_run_file, refuse_idle_patience,
                          train)

BANK = "prompt_bank.pt"


@dataclass(frozen=True)
class FewShotConfig(Config):
    """The few-shot recipe: the decoder's training and the prompt bank's design."""

    steps: int = option(400, "Training steps (batches).", min=1)
    lr: float = option(3e-4, "AdamW learning rate (cosine decay after 10 warm-up steps).", above=0.0,
                        max=MAX_LR)
    batch_size: int = option(8, "Labelled slices (views) per step.", min=1)
    tokens_per_class: int = option(2, "Prototype tokens per class (more than 1: k-means over the shots).", min=1)
    shot_dropout: float = option(0.5, "Fraction of shots left out of a class token at each step.", min=0.0, max=1.0)
    embedding_dropout: float = option(0.0, "Fraction of embedding channels zeroed (the rest rescaled) in each "
                                      "labelled training batch: a regulariser against fitting the few labelled "
                                      "patients' features (0: off).", min=0.0, max=0.95)
    views: int = option(8, "Dihedral views encoded per labelled slice (8: all rotations and flips).", min=1, max=8)
    augmented_views: int = option(8, "Augmented copies encoded per labelled slice and trained on beside its views "
                                  "(rotation, scale, gamma, noise, blur, low resolution, as nnU-Net augments; "
                                  "0: none).", min=0, max=64)
    ema: float = option(0.99, "Decay of a moving average of the weights, validated and kept (0: off).",
                        min=0.0, max=0.9999)
    val_every: int = option(50, "Steps between validations (each writes a resumable checkpoint).", min=1)
    patience: int = option(0, PATIENCE_HELP, min=0)
    cavity_rule: str | None = option(None, CAVITY_RULE_HELP, none_means="none, no rule")
    test_mirroring: bool = option(True, "Average each prediction over the slice's four mirror images (as nnU-Net "
                                  "does) unless validation finds the single view significantly better; "
                                  "3 more encoder passes per slice.",
                                  flag="--test-mirroring/--no-test-mirroring")
    sam_refinement: bool = option(True, "Refine each class's mask with SAM's own box decoder, prompted by the mask's "
                                  "box and deepest pixel, if that scores higher on validation.",
                                  flag="--sam-refinement/--no-sam-refinement")

    def check_together(self) -> None:
        super().check_together()
        refuse_idle_patience(self.train_config(seed=0))  # the seed changes no step

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(steps=self.steps, lr=self.lr, val_every=self.val_every, ema=self.ema, seed=seed,
                           patience=self.patience)

    def derived_record(self, seed: int) -> dict:
        return {"train": asdict(self.train_config(seed))}


class PrototypeDecoder(nn.Module):
    """SAM's mask decoder queried by prototype tokens: embeddings (B,256,64,64) -> logits (B,Q,256,256)."""

    def __init__(self, sam: SamModel, num_queries: int) -> None:
        super().__init__()
        self.mask_decoder = sam.mask_decoder
        self.register_buffer("image_pe", sam.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)
        self.register_buffer("no_mask", sam.prompt_encoder.no_mask_embed.weight.detach().clone().reshape(1, -1, 1, 1),
                             persistent=False)
        dim = self.no_mask.shape[1]
        self.query_embed = nn.Parameter(torch.zeros(num_queries, dim))
        self.token_proj = nn.Linear(dim, dim)
        nn.init.eye_(self.token_proj.weight)
        nn.init.zeros_(self.token_proj.bias)
        self.pixels_last = False  # set by models.acceleration.prepare_decoder on the fast paths

    def forward(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """prototypes (Q, K, 256), shared by the batch -> class logits (B, Q, 256, 256) (mean over K)."""
        b = embeddings.shape[0]
        q, k, dim = prototypes.shape
        queries = self.token_proj(prototypes) + self.query_embed[:, None, :]
        dec = self.mask_decoder
        own = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([own, queries.reshape(q * k, dim)], dim=0).unsqueeze(0).expand(b, -1, -1)
        hs, upscaled = dec.transform(embeddings + self.no_mask, self.image_pe.expand(b, -1, -1, -1), tokens)
        hyper = dec.output_hypernetworks_mlps[0](hs[:, own.shape[0]:, :])
        logits = self._pixel_products(hyper, upscaled).reshape(b, q, k, *upscaled.shape[2:])
        return logits.mean(dim=2)

    def _pixel_products(self, hyper: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
        """(B, QK, C) tokens x (B, C, H, W) features -> (B, QK, HW). The features leave the
        transformer channels-last; on the fast paths (``pixels_last``) they are multiplied as
        (B, HW, C), which keeps their gradient in that layout, so GELU's and the transposed
        convolutions' backward need no reorders: the same logits, a training step ~7% faster.
        The reference keeps its own order of operations (its gradients round differently)."""
        if self.pixels_last:
            return (upscaled.permute(0, 2, 3, 1).flatten(1, 2) @ hyper.transpose(1, 2)).transpose(1, 2)
        return hyper @ upscaled.flatten(2)


def shot_prototypes(samples: list[EmbeddedSlice], values: list[int], names: list[str] | None = None
                    ) -> list[np.ndarray]:
    """Per label value (background first), the (n_shots, 256) prototypes of the slices showing it.

    ``values`` are the classes' indices in the label frames; ``names`` (one per index) name a class
    the slices lack in the error, as the user knows it: the index is not the dataset's class value
    when those are not consecutive."""
    per_value: list[list[np.ndarray]] = [[] for _ in values]
    for s in samples:
        weights = region_weights(s.label_frame, values, grid=s.embedding.shape[-1])
        protos = masked_average_pool(s.embedding, weights)
        for i, row in enumerate(protos):
            if not np.isnan(row).any():
                per_value[i].append(row)
    missing = [names[i] if names else str(v) for i, (v, shots) in enumerate(zip(values, per_value)) if not shots]
    if missing:
        raise DataError(f"the labelled slices contain no pixel of class(es) {', '.join(missing)}; "
                        "label more slices or use more labelled cases")
    return [np.stack(shots).astype(np.float32) for shots in per_value]


def bank_tokens(shots: list[np.ndarray], tokens_per_class: int, seed: int = 0) -> torch.Tensor:
    """(Q, K, 256) inference tokens: the mean of all shots (K=1), or K k-means centres."""
    out = []
    for protos in shots:
        if tokens_per_class == 1 or len(protos) <= tokens_per_class:
            centres = np.repeat(protos.mean(axis=0, keepdims=True), tokens_per_class, axis=0)
        else:
            centres = _kmeans(protos, tokens_per_class, seed)
        out.append(centres)
    return torch.from_numpy(np.stack(out).astype(np.float32))


def _kmeans(x: np.ndarray, k: int, seed: int, iters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        assign = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    return centres


def sampled_tokens(shots: list[np.ndarray], tokens_per_class: int, dropout: float,
                   rng: np.random.Generator) -> torch.Tensor:
    """Training tokens: each class token is the mean of a random subset of its shots."""
    out = []
    for protos in shots:
        keep = max(1, int(round(len(protos) * (1 - dropout))))
        rows = []
        for _ in range(tokens_per_class):
            idx = rng.choice(len(protos), keep, replace=False)
            rows.append(protos[idx].mean(axis=0))
        out.append(np.stack(rows))
    return torch.from_numpy(np.stack(out).astype(np.float32))


def channel_dropout(embeddings: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """Zero a random ``fraction`` of each embedding's channels and rescale the rest (inverted dropout)."""
    if fraction <= 0:
        return embeddings
    b, c = embeddings.shape[:2]
    keep = torch.from_numpy(rng.random((b, c)) >= fraction).to(embeddings)
    return embeddings * keep[:, :, None, None] / (1.0 - fraction)


class FewShotTask:
    """Training task for the one loop: a batch of labelled slices, Dice + CE on all classes;
    validated by the 3D Dice of the validation volumes with the inference prompt bank."""

    def __init__(self, decoder: PrototypeDecoder, samples: list[EmbeddedSlice], shots: list[np.ndarray],
                 cfg: FewShotConfig, loss_fn: LabelledLoss, tokens: torch.Tensor,
                 val_cases: list[tuple[Case, list[EmbeddedSlice]]], values: list[int], device: str = "cpu") -> None:
        self.module, self.samples, self.shots, self.cfg, self.loss_fn = decoder, samples, shots, cfg, loss_fn
        self.tokens, self.val_cases, self.values, self.device = tokens, val_cases, values, device

    def training_loss(self, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.choice(len(self.samples), min(self.cfg.batch_size, len(self.samples)), replace=False)
        batch = [self.samples[i] for i in idx[local_part(len(idx))]]  # torchrun: this rank's share of the batch
        emb = torch.stack([s.embedding_tensor() for s in batch]).to(self.device)
        target = torch.stack([torch.from_numpy(s.label_frame.astype(np.int64)) for s in batch]).to(self.device)
        tokens = sampled_tokens(self.shots, self.cfg.tokens_per_class, self.cfg.shot_dropout, rng).to(self.device)
        emb = channel_dropout(emb, self.cfg.embedding_dropout, rng)
        return self.loss_fn(self.module(emb, tokens), target, batch), {}

    def validate(self) -> dict[str, float]:
        return selection_score([volume_score(volume, case.label, self.values[1:], case.ignore)
                                for case, volume in predict_volumes(self.module, self.tokens, self.val_cases,
                                                                    self.values, self.device)])


def remap_labels(samples: list[EmbeddedSlice], values: list[int], ignore: int | None = None) -> list[EmbeddedSlice]:
    """The slices labelled with query indices instead of label values; unannotated pixels (value ``ignore``,
    ``ClassMap.ignore``) become IGNORE. The labels are mapped at their own size and framed after (a nearest
    resize moves pixels, not values): a ``CachedSlice`` keeps making its frame when asked. The frame's
    padding is IGNORE, told by its place (``mark_padding``): a class stored as 255 is not padding."""
    lut = value_lut(values, ignore)
    return [s.labelled(lut[s.label].astype(np.uint8)) for s in samples]


def logits_batches(decoder: PrototypeDecoder, tokens: torch.Tensor, slices: list[EmbeddedSlice],
                   device: str = "cpu", batch_size: int = 8):
    """Yield (slices, logits (B,Q,256,256)) for inference, in order."""
    for start in range(0, len(slices), batch_size):
        chunk = slices[start:start + batch_size]
        emb = torch.stack([s.embedding_tensor() for s in chunk]).to(device)
        yield chunk, decoder(emb, tokens.to(device))


# --- fitting and predicting -------------------------------------------------------------------

def predict_slices(decoder: PrototypeDecoder, tokens: torch.Tensor, slices: list[EmbeddedSlice],
                   values: list[int], device: str = "cpu") -> list[np.ndarray]:
    """(H, W) label maps (label values) for the slices, in order."""
    out = []
    with torch.no_grad():
        for chunk, logits in logits_batches(decoder, tokens, slices, device):
            out.extend(labels_from_logits(lg, s.info, values) for s, lg in zip(chunk, logits))
    return out


def predict_volumes(decoder: PrototypeDecoder, tokens: torch.Tensor, cases: list[tuple[Case, list[EmbeddedSlice]]],
                    values: list[int], device: str = "cpu") -> list[tuple[Case, np.ndarray]]:
    """(case, (D, H, W) label values) for embedded cases, without post-processing."""
    return [(case, stack_volume(predict_slices(decoder, tokens, slices, values, device))) for case, slices in cases]


def slice_probabilities(decoder: PrototypeDecoder, tokens: torch.Tensor, slices: list[EmbeddedSlice],
                        device: str = "cpu", batch_size: int = 8):
    """Yield each slice's (Q, H, W) class probabilities in the slice's own geometry, in order.

    Gradients are switched off per batch, in a plain function: a ``no_grad`` block around a
    ``yield`` would leave them off for the caller while the generator is suspended."""
    for start in range(0, len(slices), batch_size):
        yield from _batch_probabilities(decoder, tokens, slices[start:start + batch_size], device)


@torch.no_grad()
def _batch_probabilities(decoder: PrototypeDecoder, tokens: torch.Tensor, chunk: list[EmbeddedSlice],
                         device: str) -> list[np.ndarray]:
    logits = decoder(torch.stack([s.embedding_tensor() for s in chunk]).to(device), tokens.to(device))
    return [torch.softmax(postprocess_logits(lg[None].float(), s.info)[0], dim=0).cpu().numpy()
            for s, lg in zip(chunk, logits)]


def mirrored_probabilities(decoder: PrototypeDecoder, tokens: torch.Tensor, slices: CaseSlices,
                           device: str = "cpu"):
    """Yield each slice's (Q, H, W) probabilities averaged over its mirror images (``MIRROR_VIEWS``),
    each mapped back to the stored orientation; one slice at a time, so memory stays per slice."""
    streams = [(view, slice_probabilities(decoder, tokens, slices.view(view), device)) for view in MIRROR_VIEWS]
    for per_view in zip(*(stream for _, stream in streams)):
        yield np.mean([undo_dihedral(p, view) for (view, _), p in zip(streams, per_view)], axis=0)


def predict_mirrored(decoder: PrototypeDecoder, tokens: torch.Tensor, slices: CaseSlices, values: list[int],
                     device: str = "cpu") -> np.ndarray:
    """(D, H, W) label values from the mirror-averaged probabilities, without post-processing."""
    lut = index_lut(values)
    return stack_volume([lut[p.argmax(axis=0)] for p in mirrored_probabilities(decoder, tokens, slices, device)])


def view_probabilities(decoder: PrototypeDecoder, tokens: torch.Tensor, slices: list[EmbeddedSlice], mirror: bool,
                       device: str = "cpu"):
    """Each slice's (Q, H, W) probabilities: mirror-averaged (``slices`` a ``CaseSlices``) or as stored."""
    if mirror:
        return mirrored_probabilities(decoder, tokens, slices, device)
    return slice_probabilities(decoder, tokens, slices, device)


def sam_refined_volume(sam: SamModel, slices: list[EmbeddedSlice], probabilities, values: list[int],
                       device: str = "cpu") -> np.ndarray:
    """(D, H, W) label values: each slice's masks redrawn by ``sam`` (SAM's own prompt decoder, not
    the fitted one), prompted by each class's box and deepest pixel; SAM's answer where it gave one,
    the decoder's argmax elsewhere. ``probabilities`` (an iterable, as ``view_probabilities`` streams
    them) are refined as they come, so a long volume's are never all held."""
    labeller = PseudoLabeller(sam, slices, SelfPromptRules(), len(values), device)
    lut = index_lut(values)
    refined = {done.index: lut[merge_refined(done.argmax, done.label)]
               for done in labeller.refine_each(map(_as_tensor, probabilities))}
    return stack_volume([refined[z] for z in range(len(refined))])


def _as_tensor(probabilities: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One slice's probabilities as a tensor sharing their memory."""
    return torch.from_numpy(np.asarray(probabilities))


def sam_refinement_choice(decoder: PrototypeDecoder, tokens: torch.Tensor, sam: SamModel,
                          val_cases: list[tuple[Case, CaseSlices]], values: list[int], rule: CavityRule | None,
                          chosen: dict[str, Any], device: str = "cpu", show_progress: bool = False) -> dict[str, Any]:
    """``chosen`` (the post-processing record so far, mirroring included) with SAM refinement kept
    if it scores strictly higher on validation (after its own post-processing choice); both scores."""
    refined = [(case, sam_refined_volume(sam, slices, view_probabilities(decoder, tokens, slices,
                                                                          bool(chosen.get("mirror")), device),
                                         values, device))
               for case, slices in tracked(val_cases, "SAM-refine val", show_progress)]
    record = postprocessing_choice(refined, values, rule)
    scores = {"val_dice_unrefined": chosen_val_dice(chosen), "val_dice_sam_refined": chosen_val_dice(record)}
    keep = scores["val_dice_sam_refined"] > scores["val_dice_unrefined"]
    return {**chosen, **(record if keep else {}), "sam_refine": keep, **scores}


def build_prompt_bank(ctx: FitContext, cfg: FewShotConfig, run_dir: Path
                      ) -> tuple[list[EmbeddedSlice], list[np.ndarray], torch.Tensor]:
    """Embed the labelled views, pool their shot prototypes, save the inference tokens (RUN/prompt_bank.pt).
    The views and augmented copies are read back from the cache as a step draws them (``CacheEntries``):
    ACDC's 3 labelled patients in 8 views and 8 copies would hold 2.2 GiB of embeddings."""
    entries = CacheEntries(ctx.cache, ctx.device)
    samples = embed_refs(ctx.dataset, ctx.labelled, ctx.cache, ctx.device, ctx.show_progress, "embed labelled",
                         views=cfg.views, entries=entries)
    check_labelled(samples)
    samples = remap_labels(samples, ctx.values, ctx.class_map.ignore)
    names = ["background", *(f"{ctx.dataset.class_map.names.get(v, 'class')} ({v})" for v in ctx.values[1:])]
    shots = shot_prototypes(samples, list(range(len(ctx.values))), names)
    if cfg.augmented_views:
        samples = samples + remap_labels(embed_augmented(ctx.dataset, ctx.labelled, ctx.cache, cfg.augmented_views,
                                                         ctx.seed, ctx.device, ctx.show_progress, entries=entries),
                                         ctx.values, ctx.class_map.ignore)
    tokens = bank_tokens(shots, cfg.tokens_per_class, ctx.seed)
    atomic_torch_save({"shots": [torch.from_numpy(s) for s in shots], "tokens": tokens,
                       "values": ctx.values}, run_dir / BANK)
    return samples, shots, tokens


def fit(ctx: FitContext, cfg: FewShotConfig, run_dir: Path, task_type: type[FewShotTask] = FewShotTask,
        task_inputs: Callable[[], dict[str, Any]] = dict) -> TrainResult:
    """Build the prompt bank, fine-tune the decoder, select on val, choose the post-processing.

    ``task_type`` / ``task_inputs``: a method that trains the same decoder on more than the
    labelled slices (FewMatch) passes its task and what makes the task's other inputs (keyword
    arguments), called once the labelled slices and the validation cases have passed their checks:
    a cavity rule naming no class, or labelled slices without a class, is refused before a pool of
    hundreds of unlabelled slices is encoded."""
    rule = None if cfg.cavity_rule is None else CavityRule.parse(cfg.cavity_rule, ctx.class_map)
    samples, shots, tokens = build_prompt_bank(ctx, cfg, run_dir)
    val_cases = embed_cases(ctx.dataset, ctx.val_ids, ctx.cache, ctx.device, ctx.show_progress, "embed val")
    refuse_background_only_validation([case for case, _ in val_cases])
    more_inputs = task_inputs()
    torch.manual_seed(ctx.seed)
    # the decoder trains SAM's mask decoder in place; refinement needs SAM's own, untouched
    sam = copy.deepcopy(ctx.model).eval() if cfg.sam_refinement else None
    decoder = prepare_decoder(PrototypeDecoder(ctx.model, len(ctx.values)).to(ctx.device), ctx.acceleration)
    task = task_type(decoder, samples, shots, cfg, ctx.labelled_loss(IGNORE), tokens, val_cases, ctx.values,
                     ctx.device, **more_inputs)
    result = train(task, cfg.train_config(ctx.seed), run_dir, ctx.show_progress)
    decoder.load_state_dict(load_best(run_dir)[0])
    decoder.eval()
    predictions = predict_volumes(decoder, tokens, val_cases, ctx.values, ctx.device)
    choice = postprocessing_choice(predictions, ctx.values, rule)
    if cfg.test_mirroring:
        mirrored = [(case, predict_mirrored(decoder, tokens, slices, ctx.values, ctx.device))
                    for case, slices in tracked(val_cases, "mirror val", ctx.show_progress)]
        subjects = [ctx.dataset.subject_of(case.case_id) for case, _ in val_cases]
        choice = mirroring_choice(choice, postprocessing_choice(mirrored, ctx.values, rule), subjects)
    if sam is not None:
        choice = sam_refinement_choice(decoder, tokens, sam, val_cases, ctx.values, rule, choice, ctx.device,
                                       ctx.show_progress)
    write_json(run_dir / POSTPROCESS, choice)
    return result


class FewShotPredictor:
    """Predicts with a fitted run: the best-validated decoder and the stored prompt bank."""

    def __init__(self, run_dir: Path, model: SamModel, device: str = "cpu",
                 acceleration: Acceleration = REFERENCE) -> None:
        bank = load_run_file(run_dir / BANK)
        self.tokens = bank["tokens"]
        self.values = list(bank["values"])
        post = run_dir / POSTPROCESS
        choice = json.loads(post.read_text()) if post.exists() else {}
        # SAM's own mask decoder, copied before the fitted weights load into the one the decoder shares
        self.sam = copy.deepcopy(model).eval() if choice.get("sam_refine") else None
        self.decoder = prepare_decoder(PrototypeDecoder(model, len(self.values)).to(device), acceleration)
        self.decoder.load_state_dict(load_best(run_dir)[0])
        self.decoder.eval()
        self.device = device
        self.largest_component = bool(choice.get("largest_component", False))
        self.mirror = bool(choice.get("mirror", False))
        rule = choice.get("cavity_rule")
        self.cavity_rule = None if rule is None else CavityRule(*rule)

    def predict_case(self, case: Case, slices: list[EmbeddedSlice]) -> np.ndarray:
        """``slices``: the case's ``CaseSlices`` (a run that chose mirroring embeds the mirror images through them)."""
        if self.sam is not None:
            return self.postprocess(sam_refined_volume(self.sam, slices, self.probabilities(slices), self.values,
                                                       self.device))
        if self.mirror:
            return self.postprocess(predict_mirrored(self.decoder, self.tokens, self._mirrorable(slices),
                                                     self.values, self.device))
        return self.postprocess(stack_volume(predict_slices(self.decoder, self.tokens, slices, self.values,
                                                            self.device)))

    def probabilities(self, slices: list[EmbeddedSlice]):
        """Each slice's (Q, H, W) class probabilities, as ``predict_case`` bases its labels on them."""
        return view_probabilities(self.decoder, self.tokens, self._mirrorable(slices) if self.mirror else slices,
                                  self.mirror, self.device)

    def case_probabilities(self, case: Case, slices: list[EmbeddedSlice]) -> Iterator[np.ndarray]:
        """``probabilities``, as ``fewsam predict --save-probabilities`` asks every predictor for them."""
        return self.probabilities(slices)

    def labels_from(self, case: Case, slices: list[EmbeddedSlice], probabilities: Iterable[np.ndarray]) -> np.ndarray:
        """``predict_case``'s answer made from ``probabilities`` (``case_probabilities``, as they stream)."""
        if self.sam is not None:
            return self.postprocess(sam_refined_volume(self.sam, slices, probabilities, self.values, self.device))
        if not self.mirror:  # labels from the logits, as without the option: a softmax rounds near-ties into ties
            for _ in probabilities:  # each written as it streams
                pass
            return self.predict_case(case, slices)
        lut = index_lut(self.values)
        # map, not a list comprehension, whose loop variable would hold a slice while the next is made
        return self.postprocess(stack_volume(list(map(lambda p: lut[p.argmax(axis=0)], probabilities))))

    def probability_stage(self) -> ProbabilityStage:
        """What ``case_probabilities`` are, and what comes after them on the way to the labels."""
        after = (("SAM refinement",) if self.sam is not None else ()) + \
            (("the cavity rule",) if self.cavity_rule is not None else ()) + \
            (("the largest-component filter",) if self.largest_component else ())
        return ProbabilityStage("the decoder's softmax" + (", mirror-averaged" if self.mirror else ""), after)

    @staticmethod
    def _mirrorable(slices: list[EmbeddedSlice]) -> CaseSlices:
        if not isinstance(slices, CaseSlices):
            raise TypeError("this run predicts with test-time mirroring: pass the case's CaseSlices, "
                            "which can embed its mirror images")
        return slices

    def postprocess(self, volume: np.ndarray) -> np.ndarray:
        """The fitted run's post-processing of a (D, H, W) label volume: cavity rule, then largest components."""
        return postprocess_volume(volume, self.cavity_rule, self.largest_component, self.values)


def _predictor(run_dir: Path, config: dict, model: SamModel, device: str, values: list[int]) -> FewShotPredictor:
    return FewShotPredictor(run_dir, model, device, acceleration_of_run(config, device))


METHOD = Method("fewshot", FewShotConfig, fit, _predictor)
