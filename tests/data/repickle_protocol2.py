"""Re-pickle torch-pickle-f64.pkl (torch's own protocol-4 pickle of a tensor
view) at protocol 2, as `pickle.dumps(v, protocol=2)` writes it, without torch:
the same reduce tuples (torch's __reduce_ex__ and the storage's inner legacy
bytes, kept verbatim), with the bytes written as _codecs.encode(str, 'latin1').

    python3 repickle_protocol2.py torch-pickle-f64.pkl torch-pickle2-f64.pkl
"""
import collections
import pickle
import sys
import types


class Call:
    def __init__(self, f, args):
        self.f, self.args = f, args

    def __reduce__(self):
        return (self.f, self.args)


funcs = {}
sys.modules.setdefault("torch", types.ModuleType("torch"))
for module, name in [("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes")]:
    mod = sys.modules.setdefault(module, types.ModuleType(module))

    def f(*a):
        raise RuntimeError("never called")

    f.__module__, f.__qualname__, f.__name__ = module, name, name
    setattr(mod, name, f)
    funcs[(module, name)] = f


class Loader(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in funcs:
            return lambda *a, f=funcs[(module, name)]: Call(f, a)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name}")


with open(sys.argv[1], "rb") as src:
    obj = Loader(src).load()
with open(sys.argv[2], "wb") as dst:
    dst.write(pickle.dumps(obj, protocol=2))
