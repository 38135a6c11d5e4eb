"""The precision: chosen per host (every branch forced here), never mixed in the cache, and the
trained modules' fast paths (channels-last student, bf16 autocast) close to the reference they
replace. The compiled encoders on real slices: test_encoder_parity.py."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from fewsam.cache import EmbeddingCache, model_folder
from fewsam.config import DEFAULT_PRECISION, ConfigError, FitOptions
from fewsam import atomic, progress
from fewsam.models import precision
from fewsam.models.acceleration import (BF16_AUTOCAST, BF16_STUDENT, CUDA_BF16, FP32_FAST, REFERENCE, acceleration_of_run,
                                        prepare_decoder,
                                        prepare_student, resolve_acceleration)
from fewsam.models.precision import FP32, EncoderPrecision, cpu_flags, openvino_available, resolve_precision
from test_supervised import TINY, TINY_STUDENT, context, tiny_sam

WITH_BF16 = frozenset({"avx512f", "avx512_bf16"})
WITHOUT_BF16 = frozenset({"avx2", "fma"})
OPENVINO_BF16 = EncoderPrecision("bf16", "openvino", "test")


@pytest.fixture
def notes(monkeypatch, caplog):
    """fewsam's notes of this test alone: what each process says once is said again here."""
    monkeypatch.setattr(progress, "_said", {})
    caplog.set_level("INFO", logger="fewsam")
    return caplog


def test_auto_is_the_default_of_every_command():
    import inspect

    from fewsam import api, cli, predict

    assert DEFAULT_PRECISION == "auto" and FitOptions(run="r").precision == "auto"
    assert cli.PrecisionOpt.default == "auto"  # embed and predict share fit's option
    for fn in (api.embed_dataset, predict.predict):
        assert inspect.signature(fn).parameters["precision"].default == "auto"


def test_bf16_is_refused_on_a_cpu_without_bf16_instructions():
    for requested in ("bf16-openvino", "mixed-openvino"):
        with pytest.raises(ConfigError, match=f"--precision {requested} needs a CPU with bf16 instructions"):
            resolve_precision(requested, "cpu", WITHOUT_BF16)
    with pytest.raises(ConfigError, match="needs a CPU with bf16 instructions"):
        resolve_acceleration("bf16-openvino", "cpu", WITHOUT_BF16)


def test_auto_without_openvino_falls_back_to_the_reference_and_says_so_once(monkeypatch, notes):
    monkeypatch.setattr(precision, "openvino_problem", lambda: "OpenVINO is not installed (pip install openvino)")
    for flags in (WITHOUT_BF16, WITHOUT_BF16, WITH_BF16):  # embed, fit and predict each resolve it
        assert resolve_precision("auto", "cpu", flags) == FP32
    said = [r.getMessage() for r in notes.records]
    assert said == ["encoder in fp32 with PyTorch: OpenVINO is not installed (pip install openvino)"]
    with pytest.raises(ConfigError, match="needs OpenVINO: OpenVINO is not installed"):
        resolve_precision("fp32-openvino", "cpu", WITH_BF16)


def test_a_broken_openvino_counts_as_not_loading(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "openvino":
            raise OSError("libopenvino.so.2026: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    assert precision.openvino_problem() == "OpenVINO does not load (libopenvino.so.2026: cannot open shared object file)"


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed")
def test_auto_compiles_the_encoder_mixed_where_the_cpu_has_bf16_else_fp32(notes):
    without = resolve_precision("auto", "cpu", WITHOUT_BF16)
    with_bf16 = resolve_precision("auto", "cpu", WITH_BF16)
    assert (without.name, without.backend, without.signature) == ("fp32", "openvino", "openvino-fp32")
    assert (with_bf16.name, with_bf16.backend, with_bf16.signature) == ("mixed", "openvino", "openvino-mixed")
    assert "this CPU has no bf16 instructions" in without.reason
    assert "convolutional stages in fp32" in with_bf16.reason
    assert resolve_precision("mixed-openvino", "cpu", WITH_BF16) == with_bf16
    assert resolve_precision("bf16-openvino", "cpu", WITH_BF16).signature == "openvino-bf16"
    assert len(notes.records) == 3


def test_fp32_is_the_reference_and_other_devices_stay_on_it():
    assert resolve_precision("fp32", "cpu", WITH_BF16) == FP32
    assert resolve_precision("auto", "cuda", WITH_BF16).backend == "torch"
    with pytest.raises(ConfigError, match="--precision must be auto, fp32, fp32-openvino, mixed-openvino or bf16-openvino"):
        resolve_precision("fp16", "cpu", WITH_BF16)


def test_the_trained_modules_path_per_precision_device_and_cpu():
    assert resolve_acceleration("fp32", "cpu", WITH_BF16) == REFERENCE
    for requested in ("auto", "fp32-openvino"):  # without bf16 instructions: fp32, channels-last student
        assert resolve_acceleration(requested, "cpu", WITHOUT_BF16) == FP32_FAST
    assert resolve_acceleration("fp32-openvino", "cpu", WITH_BF16) == FP32_FAST  # fp32 asked for, fp32 given
    for requested in ("auto", "mixed-openvino"):  # with them: the student under bf16 autocast, the decoder fp32
        assert resolve_acceleration(requested, "cpu", WITH_BF16) == BF16_STUDENT
    assert resolve_acceleration("bf16-openvino", "cpu", WITH_BF16) == BF16_AUTOCAST
    for requested in ("fp32", "fp32-openvino", "bf16-openvino"):  # CPU paths: the GPU runs the reference
        assert resolve_acceleration(requested, "cuda:0", WITH_BF16, cuda_bf16=True) == REFERENCE
    assert resolve_acceleration("auto", "cuda:0", WITHOUT_BF16, cuda_bf16=True) == CUDA_BF16
    assert resolve_acceleration("auto", "cuda", WITH_BF16, cuda_bf16=False) == REFERENCE  # e.g. a pre-Ampere GPU
    assert resolve_acceleration("auto", "mps", WITH_BF16) == REFERENCE
    with pytest.raises(ConfigError, match="--precision must be"):
        resolve_acceleration("fp16", "cpu", WITH_BF16)


def test_a_run_predicts_on_the_path_it_trained_on_where_this_host_can(notes):
    assert acceleration_of_run({}) == REFERENCE  # fp32 runs record no path
    assert acceleration_of_run({"acceleration": FP32_FAST.name}, "cpu", WITHOUT_BF16) == FP32_FAST
    assert acceleration_of_run({"acceleration": BF16_AUTOCAST.name}, "cpu", WITH_BF16) == BF16_AUTOCAST
    assert acceleration_of_run({"acceleration": BF16_AUTOCAST.name}, "cpu", WITHOUT_BF16) == FP32_FAST
    assert acceleration_of_run({"acceleration": BF16_STUDENT.name}, "cpu", WITH_BF16) == BF16_STUDENT
    assert acceleration_of_run({"acceleration": BF16_STUDENT.name}, "cpu", WITHOUT_BF16) == FP32_FAST
    assert "no bf16 instructions: predicting in fp32" in notes.text
    assert acceleration_of_run({"acceleration": FP32_FAST.name}, "cuda") == REFERENCE
    assert acceleration_of_run({"acceleration": CUDA_BF16.name}, "cpu", WITH_BF16) == REFERENCE


def test_the_gpu_path_enters_cuda_autocast_around_each_forward_and_hands_back_fp32(monkeypatch):
    """The branch a GPU takes, run on the CPU: the hooks open ``torch.autocast("cuda", bf16)``
    (recorded here; without a GPU torch would disable it with a warning) and close it again."""
    from fewsam.methods.fewshot import PrototypeDecoder

    opened, real_autocast = [], torch.autocast

    def recording_autocast(device_type, dtype=None, **kwargs):
        opened.append((device_type, dtype))
        return real_autocast("cpu", dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording_autocast)
    decoder = prepare_decoder(PrototypeDecoder(tiny_sam(), 4), CUDA_BF16)
    logits = decoder(torch.rand(1, 256, 64, 64), torch.rand(4, 1, 256))
    assert opened == [("cuda", torch.bfloat16)] and logits.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def _student_steps(acceleration, steps: int = 4) -> tuple[list[float], torch.nn.Module]:
    """Losses of a few seeded AdamW steps of the tiny U-Net on ``acceleration``'s path, and the module."""
    from fewsam.losses import dice_ce_loss
    from fewsam.methods.student import build_unet

    torch.manual_seed(0)
    module = prepare_student(build_unet(TINY, 4), acceleration)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 1, 64, 64, generator=generator), torch.randint(0, 4, (4, 64, 64), generator=generator)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = dice_ce_loss(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, module


def test_the_channels_last_student_computes_and_trains_as_the_reference_does():
    from fewsam.methods.student import build_unet

    torch.manual_seed(0)
    ref = build_unet(TINY, 4)
    fast = prepare_student(build_unet(TINY, 4), FP32_FAST)
    fast.load_state_dict(ref.state_dict())
    assert fast.model[0].conv.unit0.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-4, atol=1e-4)  # one pass: fp32 rounding only (1.2e-5 seen)
    ref_losses, ref_module = _student_steps(REFERENCE)
    fast_losses, fast_module = _student_steps(FP32_FAST)
    assert ref_module.state_dict().keys() == fast_module.state_dict().keys()  # checkpoints load on either path
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=1e-4)


def test_the_fast_decoder_keeps_its_features_layout_and_computes_as_the_reference():
    """Off the reference, the decoder's last product reads the features as (B, HW, C): the same
    logits and, up to rounding, the same gradients; ``fp32`` keeps the reference's own product."""
    from fewsam.methods.fewshot import PrototypeDecoder

    torch.manual_seed(0)
    ref = prepare_decoder(PrototypeDecoder(tiny_sam(), 4), REFERENCE)
    fast = prepare_decoder(PrototypeDecoder(tiny_sam(), 4), FP32_FAST)
    fast.load_state_dict(ref.state_dict())
    assert (ref.pixels_last, fast.pixels_last) == (False, True)
    x = torch.rand(2, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    tokens = torch.rand(4, 2, 256, generator=torch.Generator().manual_seed(2))
    ref_logits, fast_logits = ref(x, tokens), fast(x, tokens)
    torch.testing.assert_close(fast_logits, ref_logits, rtol=1e-5, atol=1e-5)
    target = torch.rand_like(ref_logits, generator=torch.Generator().manual_seed(3))
    ((ref_logits - target) ** 2).mean().backward()
    ((fast_logits - target) ** 2).mean().backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_runs_the_modules_in_bf16_and_hands_back_fp32():
    """Runs on any CPU (emulated where there are no bf16 instructions): the branch a bf16 host takes."""
    from fewsam.methods.fewshot import PrototypeDecoder
    from fewsam.methods.student import build_unet

    seen = []
    losses, _ = _student_steps(REFERENCE, steps=1)
    bf16_losses, trained = _student_steps(BF16_AUTOCAST, steps=1)
    assert all(v.dtype == torch.float32 for v in trained.state_dict().values() if v.is_floating_point())
    assert bf16_losses[0] == pytest.approx(losses[0], rel=2e-2) and bf16_losses[0] != losses[0]
    student = prepare_student(build_unet(TINY, 4), BF16_AUTOCAST)
    student.model[0].conv.unit0.conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    assert student(torch.rand(2, 1, 64, 64)).dtype == torch.float32 and seen == [torch.bfloat16]
    decoder = prepare_decoder(PrototypeDecoder(tiny_sam(), 4), BF16_AUTOCAST)
    decoder.mask_decoder.output_upscaling[0].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    logits = decoder(torch.rand(2, 256, 64, 64), torch.rand(4, 1, 256))
    assert logits.dtype == torch.float32 and seen[-1] == torch.bfloat16
    logits.sum().backward()
    assert decoder.query_embed.grad is not None and decoder.query_embed.grad.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")  # the hooks leave no autocast behind


def test_the_default_bf16_path_autocasts_the_student_and_leaves_the_decoder_in_fp32():
    """What ``auto`` takes on a CPU with bf16 instructions: the student's convolutions in bf16, every
    decoder op in fp32 (its autocast saved too little to risk its validation Dice)."""
    from fewsam.methods.fewshot import PrototypeDecoder
    from fewsam.methods.student import build_unet

    student_dtypes, decoder_dtypes = [], []
    student = prepare_student(build_unet(TINY, 4), BF16_STUDENT)
    student.model[0].conv.unit0.conv.register_forward_hook(lambda m, a, out: student_dtypes.append(out.dtype))
    assert student(torch.rand(2, 1, 64, 64)).dtype == torch.float32 and student_dtypes == [torch.bfloat16]
    decoder = prepare_decoder(PrototypeDecoder(tiny_sam(), 4), BF16_STUDENT)
    decoder.mask_decoder.output_upscaling[0].register_forward_hook(lambda m, a, out: decoder_dtypes.append(out.dtype))
    reference = PrototypeDecoder(tiny_sam(), 4)
    reference.load_state_dict(decoder.state_dict())
    x, tokens = torch.rand(2, 256, 64, 64), torch.rand(4, 1, 256)
    assert torch.equal(decoder(x, tokens), reference(x, tokens)) and decoder_dtypes == [torch.float32]


def test_a_fast_supervised_fit_matches_the_reference_and_records_its_path(tmp_path):
    """A short phantom fit on both paths: the same loss curve up to rounding and predictions that
    agree but for pixels at class borders; the fast run records its path (so that predict and a
    resume use it), the reference records none.

    Weights are not compared: the convolution biases before batch norm have a zero gradient up to
    rounding, which AdamW scales up to lr-sized steps whatever the path (the reference on 1 vs 2
    threads differs as much as it differs from channels-last: docs/results.md, section 4.1)."""
    from fewsam.data.phantom import write_phantom_dataset
    from fewsam.methods import supervised
    from fewsam.methods.student import StudentPredictor
    from fewsam.runs import LOG, prepare_run_dir

    data = write_phantom_dataset(tmp_path / "data", n_train=2, n_val=1, slices=3, seed=1)
    cfg = supervised.SupervisedConfig(steps=6, val_every=3, **{**TINY_STUDENT, "batch_size": 2})
    runs = {}
    for acceleration in (REFERENCE, FP32_FAST):
        ctx = replace(context(data, tmp_path / acceleration.name, n_cases=1), acceleration=acceleration)
        record = {"method": "supervised", "values": ctx.values, **cfg.derived_record(0),
                  **({} if acceleration == REFERENCE else {"acceleration": acceleration.name})}
        run, _ = prepare_run_dir(tmp_path / acceleration.name / "run", record)
        supervised.fit(ctx, cfg, run)
        runs[acceleration] = run
    losses = {a: [r["loss"] for r in map(json.loads, (run / LOG).read_text().splitlines()) if "loss" in r]
              for a, run in runs.items()}
    assert len(losses[REFERENCE]) == 6 and losses[REFERENCE] != losses[FP32_FAST]  # other kernels ran
    # Rounding differences grow step by step: 6 steps apart by 1e-5 on an AVX2 host, 1.2e-4 on an
    # AVX-512/AMX one (other oneDNN kernels); a wrong layout would be off by far more.
    np.testing.assert_allclose(losses[FP32_FAST], losses[REFERENCE], rtol=1e-3)
    reference, fast = StudentPredictor(runs[REFERENCE]), StudentPredictor(runs[FP32_FAST])
    assert fast.module.model[0].conv.unit0.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert reference.module.model[0].conv.unit0.conv.weight.is_contiguous()
    case = ctx.dataset.load(ctx.val_ids[0])
    agree = float(np.mean(reference.predict_case(case) == fast.predict_case(case)))
    assert agree >= 0.95, agree  # 6 steps of a tiny U-Net: many pixels sit on a class border (0.969 seen, 1 thread)


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed")
def test_fp32_and_bf16_embeddings_of_one_slice_are_two_entries(tmp_path):
    model = tiny_sam()
    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    ref = EmbeddingCache(tmp_path, model)
    fast = EmbeddingCache(tmp_path, model, OPENVINO_BF16)
    assert ref.dir != fast.dir and ref.key(image) != fast.key(image)
    a, b = ref.embed([image])[0], fast.embed([image])[0]
    assert ref.path_for(ref.key(image)).exists() and fast.path_for(fast.key(image)).exists()
    assert ref.get(image) is not None and fast.get(image) is not None
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(a.array.astype(np.float32)).flatten(),
                                                torch.from_numpy(b.array.astype(np.float32)).flatten(), dim=0)
    assert cos > 0.99  # the same encoder, other numerics
    again = EmbeddingCache(tmp_path, model, OPENVINO_BF16)  # a new process reads the saved IR back
    assert (tmp_path / f"{model_folder(model)}-openvino-ir" / "encoder.xml").exists()
    assert np.array_equal(again.embed([np.flipud(image).copy()])[0].array.shape, a.array.shape)


def cosines(a: list, b: list) -> torch.Tensor:
    flat = lambda embs: torch.stack([torch.from_numpy(e.array.astype(np.float64)).flatten() for e in embs])  # noqa
    return torch.nn.functional.cosine_similarity(flat(a), flat(b), dim=1)


def small_tiny_vit():
    from fewsam.models.tiny_vit import TinyViT

    torch.manual_seed(0)
    return TinyViT(embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                   window_sizes=(7, 7, 7, 7), out_chans=256).eval()


def test_the_mixed_stages_compose_to_the_encoder_and_keep_the_convolutions_in_fp32():
    from fewsam.models.precision import stage_plan

    encoder, x = small_tiny_vit(), torch.rand(2, 3, 64, 64)
    plan = stage_plan(encoder, EncoderPrecision("mixed", "openvino"))
    assert [hint for _, hint in plan] == ["fp32", "bf16"]
    assert [m for m in plan[0][0]] == [encoder.patch_embed, encoder.layers[0]]
    with torch.no_grad():
        staged = x
        for module, _ in plan:
            staged = module(staged)
        assert torch.equal(staged, encoder(x))
    assert stage_plan(encoder, OPENVINO_BF16) == [(encoder, "bf16")]


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed")
def test_the_mixed_encoder_is_compiled_one_graph_per_precision_and_cached_apart(tmp_path):
    from fewsam.models.registry import _assemble
    from fewsam.models.sam import Preprocessing

    model = _assemble("smallvit", small_tiny_vit(), Preprocessing(64, "unit"))
    image = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    mixed = EmbeddingCache(tmp_path, model, EncoderPrecision("mixed", "openvino"))
    fp32 = EmbeddingCache(tmp_path, model, EncoderPrecision("fp32", "openvino"))
    assert mixed.dir != fp32.dir and mixed.key(image) != fp32.key(image)
    a, b = mixed.embed([image])[0].array, fp32.embed([image])[0].array
    stages = sorted(p.name for p in tmp_path.glob("*-openvino-ir-fp32-bf16/*.xml"))
    assert stages == ["stage-0.xml", "stage-1.xml"]
    assert float(cosines([mixed.embed([image])[0]], [fp32.embed([image])[0]])[0]) > 0.99
    again = EmbeddingCache(tmp_path, model, EncoderPrecision("mixed", "openvino"))  # reads the staged IR back
    assert np.array_equal(again.embed([image])[0].array, a) and a.shape == b.shape


def test_an_encoder_without_a_mixed_split_is_cached_as_compiled_fp32(tmp_path, notes):
    cache = EmbeddingCache(tmp_path, tiny_sam(), EncoderPrecision("mixed", "openvino"))
    assert cache.precision.signature == "openvino-fp32"
    assert "has no measured mixed-precision split" in notes.text


@pytest.mark.parametrize("flags", [frozenset({"avx2"}), frozenset({"avx2", "avx512_bf16", "amx_bf16"})])
def test_bench_times_every_encoder_its_paths_compare(flags, monkeypatch):
    """The bench's encoder table has a row for the encoder of each path it compares, on hosts with
    and without bf16 (the default path's encoder is looked up in it)."""
    from fewsam import bench

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    paths = bench.compared_paths("cpu", flags)
    assert {p.encoder_name for p in paths.values()} <= set(bench.encoder_names("cpu", flags))


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed")
def test_a_conversion_killed_while_it_was_kept_leaves_no_folder_behind(tmp_path):
    """kill -9 while the converted encoder was being written left its hidden ``.ir-RANDOM`` folder (tens of
    MB) in the cache for good; the next conversion kept there removes it, and no folder of the user's."""
    model = tiny_sam()
    killed, users = tmp_path / f"{precision.IR_TEMPORARY}0123abcd", tmp_path / f"{precision.IR_TEMPORARY}mine"
    for folder in (killed, users):
        folder.mkdir()
        (folder / "encoder.bin").write_bytes(b"half of it")
        old = time.time() - 2 * atomic.ABANDONED_GRACE_S
        os.utime(folder, (old, old))
    EmbeddingCache(tmp_path, model, OPENVINO_BF16).embed([np.zeros((40, 48), np.float32)])
    assert (tmp_path / f"{model_folder(model)}-openvino-ir" / "encoder.xml").exists()
    assert not killed.exists() and users.is_dir()
