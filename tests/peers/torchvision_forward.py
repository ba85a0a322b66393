# Reference values for src/model tests: torchvision's ResNet with weights and
# inputs set by a closed-form formula (so no weight file is needed), run in
# float64. Prints the logits of a train-mode forward (batch statistics,
# running stats updated), then one running_mean, then eval-mode logits.
#   python tests/peers/torchvision_forward.py resnet18|resnet50
import math, sys, torch, torchvision

def fill(name, t):
    k = sum(name.encode()) % 997
    n = t.numel()
    i = torch.arange(n, dtype=torch.float64)
    base = torch.sin(0.37 * i + 1.3 * k)
    if name.endswith("running_var"):
        v = 0.5 + 0.25 * (1 + base)
    elif name.endswith("running_mean"):
        v = 0.1 * base
    elif t.dim() == 4:
        fan_in = t.shape[1] * t.shape[2] * t.shape[3]
        v = math.sqrt(2.0 / fan_in) * 1.5 * base
    elif name.endswith("bn1.weight") or ".bn" in name or "downsample.1" in name:
        v = (1 + 0.2 * base) if name.endswith("weight") else 0.1 * base
    else:
        v = 0.05 * base
    return v.reshape(t.shape)

arch = sys.argv[1]
torch.manual_seed(0)
m = getattr(torchvision.models, arch)(num_classes=10).double()
sd = m.state_dict()
with torch.no_grad():
    for name, t in sd.items():
        if name.endswith("num_batches_tracked"):
            continue
        t.copy_(fill(name, t))
x = torch.sin(0.05 * torch.arange(2 * 3 * 64 * 64, dtype=torch.float64)).reshape(2, 3, 64, 64)
m.train()
with torch.no_grad():
    y = m(x)
print("train", [round(v, 10) for v in y.flatten().tolist()])
print("layer4.1.bn1.running_mean[:4]", [round(v, 10) for v in m.state_dict()["layer4.1.bn1.running_mean"][:4].tolist()])
m.eval()
with torch.no_grad():
    y = m(x)
print("eval", [round(v, 10) for v in y.flatten().tolist()])
