"""Where the few-shot decoder's training step goes: the two-way transformer on the 64x64 grid
against the whole step (the transformer, then the upscaling to 256x256, the per-pixel products
and the loss), forward and backward, batch 8, on the default fast path (channels-last, pixels-last
product); then the transformer alone under bf16 autocast and with every weight and activation in
bf16. Inputs are random (timing does not depend on the values). Median of REPEATS, after one warm-up.

It bounds what cheaper work at 256x256 (a loss on sampled pixels, a lower output resolution) could
give: at most the whole step over the transformer's share.
Usage: .venv/bin/python benchmarks/decoder_step_split.py [REPEATS] [THREADS]
"""

import statistics
import sys
import time
from typing import Callable

import torch

from fewsam.methods.fewshot import PrototypeDecoder
from fewsam.models.acceleration import FP32_FAST, prepare_decoder
from fewsam.models.registry import load_model

BATCH, QUERIES, TOKENS = 8, 4, 2


def median_s(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats: int = 5, threads: int = 2) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    decoder = prepare_decoder(PrototypeDecoder(load_model("litemedsam"), QUERIES), FP32_FAST)
    md = decoder.mask_decoder
    state = {"emb": torch.randn(BATCH, 256, 64, 64), "protos": torch.randn(QUERIES, TOKENS, 256)}
    target = torch.randint(0, QUERIES, (BATCH, 256, 256))

    def whole_step() -> None:
        logits = decoder(state["emb"], state["protos"])
        torch.nn.functional.cross_entropy(logits, target).backward()

    def transformer_step() -> None:
        queries = decoder.token_proj(state["protos"]) + decoder.query_embed[:, None, :]
        own = torch.cat([md.iou_token.weight, md.mask_tokens.weight], 0)
        tokens = torch.cat([own, queries.reshape(QUERIES * TOKENS, -1)], 0).unsqueeze(0).expand(BATCH, -1, -1)
        hs, src = md.transformer(state["emb"] + decoder.no_mask, decoder.image_pe.expand(BATCH, -1, -1, -1), tokens)
        (hs.float().sum() + src.float().square().mean()).backward()

    def transformer_autocast() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            transformer_step()

    whole, part = median_s(whole_step, repeats), median_s(transformer_step, repeats)
    print(f"whole step {whole:.3f} s; transformer alone {part:.3f} s ({part / whole:.0%}); "
          f"upscaling, products and loss {whole - part:.3f} s; bound for cheaper 256x256 work {whole / part:.2f}x")
    print(f"transformer alone, bf16 autocast {median_s(transformer_autocast, repeats):.3f} s")
    decoder.to(torch.bfloat16)
    state = {k: v.bfloat16() for k, v in state.items()}
    print(f"transformer alone, pure bf16 {median_s(transformer_step, repeats):.3f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
