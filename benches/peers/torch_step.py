"""PyTorch peer of `ebv-train --bench-steps N --synthetic`: times the same
training step (ResNet forward, cross-entropy with label smoothing 0.1,
backward, SGD momentum 0.9 / wd 2e-5) on random data, f32 on the CPU, and
prints seconds per step (first step excluded as warm-up) and peak RSS.

  python benches/peers/torch_step.py --arch resnet50 --batch 8 --size 224 --threads 1
  python benches/peers/torch_step.py --arch resnet18 --width 32 --small-stem --batch 64 --size 32 --classes 10

The network is torchvision's topology written out here so that the width
multiplier and the small stem match ebv's (`model.width`, `model.small_stem`);
at width 64 with the standard stem it is torchvision's resnet18/34/50
(the parameter count is printed to check).
"""
import argparse, json, resource, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, arch, width, small_stem, classes):
        super().__init__()
        block, layers = {"resnet18": (Basic, [2, 2, 2, 2]), "resnet34": (Basic, [3, 4, 6, 3]),
                         "resnet50": (Bottleneck, [3, 4, 6, 3])}[arch]
        self.small = small_stem
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False) if small_stem else nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin, stages = width, []
        for s, n in enumerate(layers):
            blocks = []
            for b in range(n):
                blocks.append(block(cin, width << s, 2 if s > 0 and b == 0 else 1))
                cin = (width << s) * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if not self.small:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--small-stem", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its algorithms (torch.backends.cudnn.benchmark)")
    p.add_argument("--head", default="fc", choices=["fc", "ebv"])
    p.add_argument("--dim", type=int, default=1000, help="EBV dimension d")
    p.add_argument("--tau", type=float, default=0.07)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    torch.manual_seed(0)
    dev = torch.device(a.device)
    # EBV: fc projects to d; logits = normalize(f) @ B^T / tau against a fixed
    # random unit basis B [C, d] (no gradient), as ebv-train's synthetic bench.
    m = ResNet(a.arch, a.width, a.small_stem, a.dim if a.head == "ebv" else a.classes).to(dev)
    basis = None
    if a.head == "ebv":
        basis = F.normalize(torch.randn(a.classes, a.dim, device=dev), dim=1)
        if a.bf16:
            basis = basis.to(torch.bfloat16)
    if a.channels_last:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=2e-5)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    if a.channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.arange(a.batch, device=dev) % a.classes
    m.train()
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    times = []
    for i in range(a.steps + 1):
        sync()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            out = m(x)
            if basis is not None:
                out = F.normalize(out, dim=1) @ basis.t() / a.tau
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        sync()
        if i > 0:
            times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    print(json.dumps({
        "peer": f"torch {torch.__version__}", "arch": a.arch, "width": a.width, "batch": a.batch, "size": a.size,
        "threads": a.threads, "device": a.device, "bf16": a.bf16, "head": a.head,
        "channels_last": a.channels_last, "cudnn_benchmark": a.cudnn_benchmark, "classes": a.classes, "dim": a.dim,
        "images_per_second": a.batch / mean, "parameters": sum(p.numel() for p in m.parameters()),
        "step_seconds": times, "mean_step_seconds": mean,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
