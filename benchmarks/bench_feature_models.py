"""Time the real feature models behind our interfaces (random weights, nothing downloaded).

Measures SAM ``set_image``, ``predict`` of R prompt rounds (batched in one decoder call and one
round a call, against segment-anything's ``predict_torch``, which upscales every round), the split
decoder's halves (transformer for all rounds, upscaling all rounds or only the winner), and CLIP
image throughput (crops/s) and text latency. The random weights are saved to a temporary
checkpoint and loaded through the same constructors users call.

    python benchmarks/bench_feature_models.py --sam vit_b --clip ViT-B-32 --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_sam(model_type: str, device: str, size: tuple[int, int], rounds: int, k: int,
              repeats: int, tmp: Path) -> dict:
    import segment_anything
    import torch

    from openmask3d_ros.core.segmenters.sam import SamSegmenter

    torch.manual_seed(0)
    ckpt = tmp / f"sam_{model_type}.pth"
    torch.save(segment_anything.sam_model_registry[model_type](checkpoint=None).state_dict(), ckpt)
    t0 = time.perf_counter()
    seg = SamSegmenter(model_type=model_type, checkpoint=str(ckpt), device=device,
                       prompt_batch=rounds)
    load_s = time.perf_counter() - t0
    h, w = size
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    set_image_s = _timed(lambda: seg.set_image(image), device, max(1, repeats // 3))
    pts = np.stack([rng.uniform(0, w - 1, (rounds, k)), rng.uniform(0, h - 1, (rounds, k))],
                   axis=-1).astype(np.float32)
    ours_s = _timed(lambda: seg.predict(pts), device, repeats)

    p = seg.predictor

    def prompts():
        coords = p.transform.apply_coords_torch(torch.from_numpy(pts).to(device), (h, w))
        return coords, torch.ones(pts.shape[:2], dtype=torch.int, device=device)

    def full_res():   # segment-anything's own path: every round upsampled to (H, W)
        with torch.inference_mode():
            masks, iou, _ = p.predict_torch(*prompts(), multimask_output=False)
            best = int(torch.argmax(iou[:, 0]))
            return masks[best, 0].cpu().numpy(), iou[:, 0].cpu().numpy()
    full_s = _timed(full_res, device, repeats)

    # where the decoder time goes: transformer for all rounds vs upscaling all / only the winner
    with torch.inference_mode():
        side = seg.decoder.image_side(p.get_image_embedding())
        out = seg.decoder.transformer(side, *prompts())
    decode_s = _timed(lambda: _no_grad(lambda: seg.decoder.transformer(side, *prompts())),
                      device, repeats)
    up_all_s = _timed(lambda: _no_grad(lambda: seg.decoder.masks(out.src, out.token)), device,
                      repeats)
    up_one_s = _timed(lambda: _no_grad(lambda: seg.decoder.masks(out.src[:1], out.token[:1])),
                      device, repeats)
    seg.prompt_batch = 1
    sequential_s = _timed(lambda: seg.predict(pts), device, repeats)
    return {"sam_model": model_type, "image": f"{w}x{h}", "load_s": round(load_s, 2),
            "set_image_s": round(set_image_s, 4), "rounds": rounds, "k_sample": k,
            "predict_batched_s": round(ours_s, 4),
            "predict_one_round_a_call_s": round(sequential_s, 4),
            "predict_torch_full_res_s": round(full_s, 4),
            "transformer_all_rounds_s": round(decode_s, 4),
            "upscale_all_rounds_s": round(up_all_s, 4), "upscale_winner_s": round(up_one_s, 4),
            "encoder_calls": seg.encoder_calls}


def _no_grad(fn):
    import torch
    with torch.inference_mode():
        return fn()


def bench_clip(model_name: str, device: str, n_crops: int, batch_size: int, repeats: int,
               tmp: Path) -> dict:
    import open_clip
    import torch

    from openmask3d_ros.core.encoders.clip import ClipEncoder

    torch.manual_seed(0)
    ckpt = tmp / f"clip_{model_name}.bin"
    torch.save(open_clip.create_model(model_name, pretrained=None).state_dict(), ckpt)
    t0 = time.perf_counter()
    enc = ClipEncoder(model_name=model_name, checkpoint=str(ckpt), device=device,
                      batch_size=batch_size)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (int(rng.integers(40, 300)), int(rng.integers(40, 300)), 3),
                          dtype=np.uint8) for _ in range(n_crops)]
    img_s = _timed(lambda: enc.encode_images(crops), device, repeats)

    def text_uncached():
        enc.clear_cache()
        enc.encode_text(["a chair in a scene"])
    text_s = _timed(text_uncached, device, repeats)
    enc.encode_text(["a mug in a scene"])
    cached_s = _timed(lambda: enc.encode_text(["a mug in a scene"]), device, repeats)
    return {"clip_model": model_name, "dim": enc.dim, "load_s": round(load_s, 2),
            "crops": n_crops, "batch_size": batch_size,
            "crops_per_s": round(n_crops / img_s, 1), "ms_per_crop": round(1e3 * img_s / n_crops, 2),
            "text_query_ms": round(1e3 * text_s, 2), "text_cached_ms": round(1e3 * cached_s, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sam", default="vit_b", help="SAM type, or 'none'")
    ap.add_argument("--clip", default="ViT-B-32", help="open_clip model name, or 'none'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--k-sample", type=int, default=5)
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--out", default="", help="write the JSON result here too")
    args = ap.parse_args()

    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = {"device": args.device, "torch_threads": torch.get_num_threads(),
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    with tempfile.TemporaryDirectory() as tmp:
        if args.sam != "none":
            result["sam"] = bench_sam(args.sam, args.device, (args.height, args.width),
                                      args.rounds, args.k_sample, args.repeats, Path(tmp))
        if args.clip != "none":
            result["clip"] = bench_clip(args.clip, args.device, args.crops, args.batch_size,
                                        args.repeats, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
