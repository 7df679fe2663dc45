"""Eight small architectures written in torch.nn (no hub, no torchvision), each a factory
returning (module, example_inputs) as `model: {torch: "module:factory"}` expects.

The transformers mirror Hugging Face's module layout (GPT-2's `transformer.h.0.attn.c_attn`,
Llama's rotary embedding under torch.no_grad(), T5's relative position bias and RMS norm),
tiny so the tests stay fast. Dropout is left out: gradients are compared with autograd's.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

VOCAB, SEQ, BATCH = 23, 6, 2


def _upcast(x):
    """Hugging Face computes softmax and RMS statistics in float32 for half-precision
    models; a float64 model stays float64 (so gradients can be compared at 1e-10)."""
    return x if x.dtype == torch.float64 else x.float()


def _tokens(seed: int = 0, batch: int = BATCH, seq: int = SEQ, vocab: int = VOCAB):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (batch, seq), generator=g)
    t[0, 0], t[-1, -1] = 0, vocab - 1           # the example spans the whole vocabulary
    return t


# ---------------------------------------------------------------------------- GPT-2
class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored (in, out), y = x @ W + b (addmm)."""

    def __init__(self, nx: int, nf: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.randn(nf) * 0.02)

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


class GPT2Attention(nn.Module):
    def __init__(self, d: int, heads: int, seq: int):
        super().__init__()
        self.heads = heads
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)
        self.register_buffer("bias", torch.tril(torch.ones(seq, seq, dtype=torch.bool))
                             .view(1, 1, seq, seq), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        w = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        w = w.masked_fill(~self.bias[:, :, :t, :t], torch.finfo(w.dtype).min)
        y = (w.softmax(-1) @ v).transpose(1, 2).contiguous().view(b, t, d)
        return self.c_proj(y)


class GPT2MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.c_fc, self.c_proj = Conv1D(d, 4 * d), Conv1D(4 * d, d)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, d: int, heads: int, seq: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = GPT2Attention(d, heads, seq), GPT2MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.h = nn.ModuleList(GPT2Block(d, heads, seq) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, input_ids):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its LM head tied to the token embedding."""

    def __init__(self, vocab=VOCAB, d=16, layers=2, heads=2, seq=SEQ):
        super().__init__()
        self.transformer = GPT2Model(vocab, d, layers, heads, seq)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids):
        return self.lm_head(self.transformer(input_ids))


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(), (_tokens(1),)


# ---------------------------------------------------------------------------- BERT
class BertSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = (m(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for m in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2).reshape(b, t, d)


class BertLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attention = BertSelfAttention(d, heads)
        self.attention_output = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=1e-12)
        self.intermediate = nn.Linear(d, 4 * d)
        self.output = nn.Linear(4 * d, d)
        self.output_norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x, mask):
        x = self.attention_norm(x + self.attention_output(self.attention(x, mask)))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class BertForSequenceClassification(nn.Module):
    def __init__(self, vocab=VOCAB, d=16, layers=2, heads=2, seq=SEQ, types=2, classes=3):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d)
        self.position_embeddings = nn.Embedding(seq, d)
        self.token_type_embeddings = nn.Embedding(types, d)
        self.embeddings_norm = nn.LayerNorm(d, eps=1e-12)
        self.layer = nn.ModuleList(BertLayer(d, heads) for _ in range(layers))
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, classes)

    def forward(self, input_ids, token_type_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1])
        x = self.embeddings_norm(self.word_embeddings(input_ids) + self.position_embeddings(pos)
                                 + self.token_type_embeddings(token_type_ids))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layer:
            x = layer(x, mask)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def bert():
    torch.manual_seed(0)
    types = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    return BertForSequenceClassification(), (_tokens(2), types, mask)


# ---------------------------------------------------------------------------- T5
class T5LayerNorm(nn.Module):
    """RMS norm without a shift (T5, Llama): x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class T5Attention(nn.Module):
    def __init__(self, d: int, heads: int, bidirectional: bool, has_bias: bool, buckets=8):
        super().__init__()
        self.heads, self.bidirectional, self.buckets = heads, bidirectional, buckets
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        if has_bias:
            self.relative_attention_bias = nn.Embedding(buckets, heads)

    def bucket(self, rel):
        n = self.buckets
        if self.bidirectional:
            n //= 2
            out = (rel > 0).long() * n
            rel = rel.abs()
        else:
            out = torch.zeros_like(rel)
            rel = -torch.clamp(rel, max=0)
        exact = n // 2
        large = exact + (torch.log(rel.float() / exact + 1e-6) / math.log(16 / exact)
                         * (n - exact)).long()
        large = torch.clamp(large, max=n - 1)
        return out + torch.where(rel < exact, rel, large)

    def position_bias(self, tq, tk):
        ctx = torch.arange(tq)[:, None]
        mem = torch.arange(tk)[None, :]
        values = self.relative_attention_bias(self.bucket(mem - ctx))
        return values.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x, kv=None, bias=None, mask=None):
        b, t, d = x.shape
        kv = x if kv is None else kv
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(kv).view(b, kv.shape[1], self.heads, -1).transpose(1, 2)
        v = self.v(kv).view(b, kv.shape[1], self.heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2)
        if bias is None and hasattr(self, "relative_attention_bias"):
            bias = self.position_bias(t, kv.shape[1])
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = scores + mask
        y = (_upcast(scores).softmax(-1).type_as(scores) @ v).transpose(1, 2).reshape(b, t, d)
        return self.o(y), bias


class T5Block(nn.Module):
    def __init__(self, d: int, heads: int, decoder: bool, first: bool):
        super().__init__()
        self.decoder = decoder
        self.self_norm = T5LayerNorm(d)
        self.self_attention = T5Attention(d, heads, not decoder, first)
        if decoder:
            self.cross_norm = T5LayerNorm(d)
            self.cross_attention = T5Attention(d, heads, True, False)
        self.ff_norm = T5LayerNorm(d)
        self.wi, self.wo = nn.Linear(d, 2 * d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, x, bias, mask, memory=None):
        y, bias = self.self_attention(self.self_norm(x), bias=bias, mask=mask)
        x = x + y
        if self.decoder:
            x = x + self.cross_attention(self.cross_norm(x), kv=memory)[0]
        return x + self.wo(F.relu(self.wi(self.ff_norm(x)))), bias


class T5Stack(nn.Module):
    def __init__(self, d, heads, layers, decoder):
        super().__init__()
        self.decoder = decoder
        self.block = nn.ModuleList(T5Block(d, heads, decoder, i == 0) for i in range(layers))
        self.final_layer_norm = T5LayerNorm(d)

    def forward(self, x, memory=None):
        t = x.shape[1]
        mask = None
        if self.decoder:
            causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
            mask = torch.zeros(t, t, dtype=x.dtype).masked_fill(~causal, torch.finfo(x.dtype).min)
        bias = None
        for block in self.block:
            x, bias = block(x, bias, mask, memory)
        return self.final_layer_norm(x)


class T5ForConditionalGeneration(nn.Module):
    def __init__(self, vocab=VOCAB, d=16, heads=2, layers=2):
        super().__init__()
        self.shared = nn.Embedding(vocab, d)
        self.encoder = T5Stack(d, heads, layers, decoder=False)
        self.decoder = T5Stack(d, heads, layers, decoder=True)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.d = d

    def forward(self, input_ids, decoder_input_ids):
        memory = self.encoder(self.shared(input_ids))
        y = self.decoder(self.shared(decoder_input_ids), memory)
        return self.lm_head(y * self.d ** -0.5)


def t5():
    torch.manual_seed(0)
    return T5ForConditionalGeneration(), (_tokens(3), _tokens(4, seq=SEQ - 1))


# ---------------------------------------------------------------------------- Llama
class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        inv = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    @torch.no_grad()
    def forward(self, x, position_ids):
        inv = _upcast(self.inv_freq)
        freqs = inv[None, :, None] @ position_ids[:, None, :].to(inv.dtype)
        emb = torch.cat((freqs, freqs), dim=1).transpose(1, 2)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k = k[:, :, None].expand(b, self.kv_heads, rep, t, self.hd).reshape(b, self.heads, t, -1)
        v = v[:, :, None].expand(b, self.kv_heads, rep, t, self.hd).reshape(b, self.heads, t, -1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class LlamaMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaRMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d) + 0.1 * torch.randn(d)), eps

    def forward(self, x):
        var = _upcast(x).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps)).to(x.dtype)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, d, heads, kv_heads):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(d)
        self.self_attn = LlamaAttention(d, heads, kv_heads)
        self.post_attention_layernorm = LlamaRMSNorm(d)
        self.mlp = LlamaMLP(d, 2 * d)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, vocab=VOCAB, d=16, layers=2, heads=4, kv_heads=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(LlamaDecoderLayer(d, heads, kv_heads) for _ in range(layers))
        self.norm = LlamaRMSNorm(d)
        self.rotary_emb = LlamaRotaryEmbedding(d // heads)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        pos = torch.arange(input_ids.shape[1])[None].expand(input_ids.shape[0], -1)
        cos, sin = self.rotary_emb(x, pos)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


def llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(), (_tokens(5),)


# ---------------------------------------------------------------------------- ViT
class ViTLayer(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(d)
        self.attention = nn.MultiheadAttention(d, heads, batch_first=True)
        self.layernorm_after = nn.LayerNorm(d)
        self.intermediate = nn.Linear(d, 2 * d)
        self.output = nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.layernorm_before(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.output(F.gelu(self.intermediate(self.layernorm_after(x))))


class ViTForImageClassification(nn.Module):
    def __init__(self, image=8, patch=4, channels=3, d=16, heads=2, layers=2, classes=5):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(channels, d, patch, stride=patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.position_embeddings = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        self.layer = nn.ModuleList(ViTLayer(d, heads) for _ in range(layers))
        self.layernorm = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, classes)

    def forward(self, pixel_values):
        x = self.patch_embeddings(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embeddings
        for layer in self.layer:
            x = layer(x)
        return self.classifier(self.layernorm(x)[:, 0])


def vit():
    torch.manual_seed(0)
    return ViTForImageClassification(), (torch.randn(BATCH, 3, 8, 8),)


# ---------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, classes=5, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet():
    torch.manual_seed(0)
    return ResNet(), (torch.randn(4, 3, 12, 12),)


# ---------------------------------------------------------------------------- MobileNet
class SqueezeExcitation(nn.Module):
    def __init__(self, c, squeeze):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        # hardsigmoid written out: torch's float64 hardsigmoid_backward kernel scales by a
        # float32 1/6 (3e-8 relative error), too coarse for the 1e-10 gradient comparison;
        # after decomposition both forms are the same core ATen ops
        return x * (F.relu6(self.fc2(F.relu(self.fc1(s))) + 3.0) / 6.0)


class InvertedResidual(nn.Module):
    def __init__(self, cin, hidden, cout, stride):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.Hardswish())
        self.se = SqueezeExcitation(hidden, 4)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.Hardswish())
        self.blocks = nn.Sequential(InvertedResidual(8, 16, 8, 1),
                                    InvertedResidual(8, 24, 12, 2))
        self.grouped = nn.Conv2d(12, 12, 3, 1, 1, groups=3)
        self.classifier = nn.Sequential(nn.Linear(12, 16), nn.Hardswish(), nn.Linear(16, classes))

    def forward(self, x):
        x = self.grouped(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def mobilenet():
    torch.manual_seed(0)
    return MobileNetV3(), (torch.randn(4, 3, 16, 16),)


# ---------------------------------------------------------------------------- LSTM
class LSTMTagger(nn.Module):
    """A 2-layer nn.LSTM over embedded tokens with a linear head per position."""

    def __init__(self, vocab=VOCAB, d=8, hidden=12, classes=7):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens):
        return self.head(self.lstm(self.embedding(tokens))[0])


def lstm():
    torch.manual_seed(0)
    return LSTMTagger(), (_tokens(6),)


ARCHITECTURES = {"gpt2": gpt2, "bert": bert, "t5": t5, "llama": llama, "vit": vit,
                 "resnet": resnet, "mobilenet": mobilenet, "lstm": lstm}
