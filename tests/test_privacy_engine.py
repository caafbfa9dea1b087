"""PerExampleGrads (gradclip.privacy._engine): ghost norms and weighted sums vs torch.func."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gradclip._errors import ConfigError, InputTypeError
from gradclip.privacy._engine import PerExampleGrads


class Scale(nn.Module):
    """A layer with no formula: parameters used elementwise."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))
        self.b = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return torch.tanh(x * self.w + self.b)


class Reuse(nn.Module):
    """One Linear called twice (weight reuse), one frozen parameter."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 1)
        self.out.bias.requires_grad_(False)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


class EmbedNet(nn.Module):
    def __init__(self, vocab: int, dim: int, twice: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, 1)
        self.twice = twice

    def forward(self, idx):
        h = self.emb(idx)
        if self.twice:
            h = h + self.emb(idx.flip(1)) * 0.5
        return self.head(torch.tanh(h)).mean(1)


def _mlp():
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.ReLU(inplace=True),
                         nn.Linear(7, 2))


def _seq():  # Linear(16, 16) at T=8 takes the Gram path, Linear(16, 2) the materialised one
    return nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2))


def _cnn2d():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ReLU(),
                         nn.Conv2d(4, 4, 2, dilation=2, bias=False), nn.Flatten(), nn.LazyLinear(2))


def _cnn1d():
    return nn.Sequential(nn.Conv1d(3, 5, 3, padding=2), nn.Tanh(), nn.Conv1d(5, 4, 2, stride=2),
                         nn.Flatten(1), nn.LazyLinear(1))


def _norms():
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 6),
                         nn.RMSNorm(6), nn.Linear(6, 1))


def _custom():
    return nn.Sequential(nn.Linear(4, 6), Scale(6), nn.Conv1d(1, 2, 3, groups=1), nn.Flatten(),
                         nn.LazyLinear(1))


CASES = {
    "mlp": (_mlp, lambda g: torch.randn(9, 5, generator=g)),
    "seq": (_seq, lambda g: torch.randn(6, 8, 3, generator=g)),
    "emb": (lambda: EmbedNet(50, 4), lambda g: torch.randint(0, 50, (7, 6), generator=g)),
    "emb_small": (lambda: EmbedNet(5, 4, twice=True), lambda g: torch.randint(0, 5, (7, 6), generator=g)),
    "cnn2d": (_cnn2d, lambda g: torch.randn(5, 3, 9, 9, generator=g)),
    "cnn1d": (_cnn1d, lambda g: torch.randn(5, 3, 11, generator=g)),
    "norms": (_norms, lambda g: torch.randn(6, 3, 4, generator=g)),
    "reuse": (Reuse, lambda g: torch.randn(8, 6, generator=g)),
}


def _build(case, dtype=torch.float64):
    make, data = CASES[case]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = make()
    x = data(g)
    model(x[:1])  # materialise lazy layers
    model = model.to(dtype)
    if x.is_floating_point():
        x = x.to(dtype)
    return model, x


def _loss(model, x):
    out = model(x)
    return out.reshape(out.shape[0], -1).pow(2).sum(1) if out.dim() > 1 else out.pow(2)


def _reference(model, x):
    """Per-example gradients of every trainable parameter, with torch.func over the whole model."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss_one(p, xb):
        return _loss_fn(model, p, xb.unsqueeze(0))[0]

    return torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0))(params, x)


def _loss_fn(model, p, x):
    out = torch.func.functional_call(model, p, (x,))
    return out.reshape(out.shape[0], -1).pow(2).sum(1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _check(model, x, ghost=None, tol=1e-10, fallback=()):
    ref = _reference(model, x)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pe = PerExampleGrads(model, ghost=ghost)
    assert [n for n, _ in pe.params] == names
    if ghost is None:
        assert pe.fallback == list(fallback)
    b = x.shape[0]
    norms = pe.norms(_loss(model, x))
    want = torch.stack([ref[n].reshape(b, -1).norm(dim=1) for n in names], 1)
    assert norms.shape == (b, len(names))
    err_norm = _rel(norms, want)
    assert err_norm < tol, err_norm
    coefs = torch.rand(b, len(names), dtype=x.dtype if x.is_floating_point() else torch.float64)
    pe.accumulate(coefs)
    wants = [torch.einsum("b...,b->...", ref[n], coefs[:, j].to(ref[n].dtype))
             for j, n in enumerate(names)]
    scale = max(float(w.abs().max()) for w in wants)  # a gradient may be ~0 (attention key bias)
    errs = [float((p.grad - w).abs().max()) / scale for (_, p), w in zip(pe.params, wants)]
    assert max(errs) < tol, errs
    pe.close()
    return err_norm, max(errs)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ghost", [None, False])
def test_matches_torch_func_float64(case, ghost):
    model, x = _build(case)
    _check(model, x, ghost=ghost)


@pytest.mark.parametrize("case", ["mlp", "seq", "cnn2d", "norms", "emb"])
def test_matches_torch_func_float32(case):
    model, x = _build(case, torch.float32)
    _check(model, x, tol=1e-5)


def test_custom_layer_falls_back_with_one_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.Unflatten(1, (1, 6)),
                          nn.Conv1d(1, 2, 3, groups=1), nn.Conv1d(2, 2, 1, groups=2),
                          nn.Flatten(), nn.Linear(8, 1)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"1 \(Scale\), 4 \(Conv1d\)") as rec:
        pe = PerExampleGrads(model)
    assert len(rec) == 1 and pe.fallback == ["1", "4"]
    pe.close()
    _check(model, x, fallback=["1", "4"])


def test_flat_coefs_and_micro_batches_equal_one_batch():
    model, x = _build("seq")
    ref = _reference(model, x)
    c = torch.rand(x.shape[0], dtype=x.dtype)
    with PerExampleGrads(model) as pe:
        for part, cp in zip(x.split(3), c.split(3)):
            pe.norms(_loss(model, part))
            pe.accumulate(cp)
    for n, p in model.named_parameters():
        assert _rel(p.grad, torch.einsum("b...,b->...", ref[n], c)) < 1e-10


def test_norms_leave_grad_untouched_and_second_forward_restarts():
    model, x = _build("mlp")
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    with PerExampleGrads(model) as pe:
        pe.norms(_loss(model, x[:4]))
        assert all(bool((p.grad == 3.0).all()) for p in model.parameters())
        n = pe.norms(_loss(model, x))  # a new forward drops the unused step
        assert n.shape[0] == x.shape[0]


def test_forward_under_no_grad_is_not_recorded():
    model, x = _build("mlp")
    with PerExampleGrads(model) as pe, torch.no_grad():
        model(x)
        with pytest.raises(ConfigError, match="no forward pass recorded"):
            pe.norms(torch.zeros(x.shape[0]))


def test_errors():
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        PerExampleGrads(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    with pytest.raises(ConfigError, match="ghost=True.*1"):
        PerExampleGrads(nn.Sequential(nn.Linear(2, 2), Scale(2)), ghost=True)
    with pytest.raises(ConfigError, match="ghost must be"):
        PerExampleGrads(nn.Linear(2, 2), ghost="yes")
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(ConfigError, match="shared"):
        PerExampleGrads(tied)
    nonleaf = nn.Sequential(nn.Linear(2, 2))
    nonleaf.extra = nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="has submodules"):
        PerExampleGrads(nonleaf)
    with pytest.raises(ConfigError, match="scale_grad_by_freq"):
        PerExampleGrads(nn.Embedding(4, 2, scale_grad_by_freq=True))
    model = nn.Linear(3, 1)
    pe = PerExampleGrads(model)
    out = model(torch.randn(4, 3))
    with pytest.raises(InputTypeError, match=r"received \(\).*reduction='none'"):
        pe.norms(out.sum())
    with pytest.raises(InputTypeError, match=r"shape \(4,\).*received \(3,\)"):
        pe.norms(out[:3, 0])
    with pytest.raises(ConfigError, match="then norms"):
        pe.accumulate(torch.ones(4))
    pe.norms(out[:, 0])
    with pytest.raises(InputTypeError, match=r"coefs must be.*\(4,\) or \(4, 2\)"):
        pe.accumulate(torch.ones(5))
    pe.close()
    assert not model._forward_hooks


class Twice(nn.Module):
    """A fallback layer and a LayerNorm, each called twice."""

    def __init__(self):
        super().__init__()
        self.sc, self.ln, self.o = Scale(5), nn.LayerNorm(5), nn.Linear(5, 1)

    def forward(self, x):
        return self.o(self.ln(self.sc(self.ln(self.sc(x)))))


def test_reused_fallback_and_norm_layers():
    torch.manual_seed(0)
    _check(Twice().double(), torch.randn(6, 5, dtype=torch.float64), fallback=["sc"])


def test_opacus_layers_attention_and_lstm():
    layers = pytest.importorskip("opacus.layers")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.att = layers.DPMultiheadAttention(8, 2, batch_first=True)
            self.rnn = layers.DPLSTM(8, 4, batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            h, _ = self.att(x, x, x, need_weights=False)
            return self.head(self.rnn(h)[0]).mean(1)

    torch.manual_seed(0)
    _check(Net().double(), torch.randn(4, 5, 8, dtype=torch.float64))


def test_uncapturable_layers_refused():
    with pytest.raises(ConfigError, match="MultiheadAttention.*DPMultiheadAttention"):
        PerExampleGrads(nn.MultiheadAttention(4, 2))
    with pytest.raises(ConfigError, match="GRU.*DPGRU"):
        PerExampleGrads(nn.Sequential(nn.GRU(3, 2)))

    class Functional(nn.Module):  # uses a child's weight without calling the child
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x):
            return nn.functional.linear(self.a(x), self.b.weight, self.b.bias)

    model = Functional()
    pe = PerExampleGrads(model)
    with pytest.raises(ConfigError, match="b.weight has a gradient but its module 'b' was never"):
        pe.norms(model(torch.randn(2, 3))[:, 0])
