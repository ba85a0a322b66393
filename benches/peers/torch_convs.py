"""PyTorch peer of `ebv-train --check-kernels`'s conv timings (`time_convs`): forward + backward (dX and dW) of
ResNet-50's convolution shapes, sum(conv(x, w) · r) differentiated, mean of `--iters` after one warm-up, in
NCHW and in channels-last, on the GPU.

  python benches/peers/torch_convs.py --batch 32 --dtype bf16
"""
import argparse, json, time
import torch
import torch.nn.functional as F

# c, h (= w), o, k, stride, pad: the same list as src/kernels/check.rs.
LAYERS = [(3, 224, 64, 7, 2, 3), (64, 56, 64, 1, 1, 0), (64, 56, 64, 3, 1, 1), (128, 56, 128, 3, 2, 1),
          (256, 56, 512, 1, 2, 0), (512, 7, 512, 3, 1, 1)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    p.add_argument("--cudnn-benchmark", action="store_true")
    a = p.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    dev = torch.device("cuda")
    rows = []
    for c, h, o, k, s, pad in LAYERS:
        for fmt in ("nchw", "channels_last"):
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            x = torch.randn(a.batch, c, h, h, device=dev, dtype=dt).to(memory_format=mf).requires_grad_()
            w = (torch.randn(o, c, k, k, device=dev, dtype=dt) * 0.05).to(memory_format=mf).requires_grad_()
            ho = (h + 2 * pad - k) // s + 1
            r = torch.randn(a.batch, o, ho, ho, device=dev, dtype=dt).to(memory_format=mf)

            def step():
                x.grad = None
                w.grad = None
                (F.conv2d(x, w, None, s, pad) * r).sum().backward()

            step()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(a.iters):
                step()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) * 1e3 / a.iters
            rows.append({"case": f"x[{a.batch},{c},{h},{h}] w[{o},{c},{k},{k}] s{s} p{pad}", "format": fmt,
                         "ms_forward_backward": ms})
    print(json.dumps({"peer": f"torch {torch.__version__}", "dtype": a.dtype, "batch": a.batch,
                      "cudnn_benchmark": a.cudnn_benchmark, "timings": rows}))


if __name__ == "__main__":
    main()
