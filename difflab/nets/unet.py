"""The DDPM U-Net (Ho et al. 2020): ResNet blocks, self-attention, skip connections, noise-level embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .embeddings import LabelEmbedding, TimeEmbedding, noise_input

__all__ = ["UNet", "ResBlock", "AttentionBlock", "group_norm"]


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= groups that divides channels and leaves at least 4 channels
    per group. (With one channel per group the norm subtracts each channel's mean, which erases the
    per-channel noise-level and label embedding a ResBlock adds just before it.)"""
    g = max(1, min(groups, channels // 4))
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """(N, in_ch, H, W), emb (N, emb_dim) already SiLU'd -> (N, out_ch, H, W).

    GN-SiLU-conv3x3, + Linear(emb), GN-SiLU-dropout-conv3x3 (zero-init); 1x1-conv skip if channels differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, groups: int = 32,
                 recompute_activations: bool = False):
        super().__init__()
        self.recompute_activations = recompute_activations
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self._recomputed(self._half1, x) + self.emb(emb)[:, :, None, None]
        h = self._recomputed(self._half2, h)
        return self.skip(x) + h

    def _half1(self, x):
        return self.conv1(F.silu(self.norm1(x)))

    def _half2(self, h):
        return self.conv2(self.dropout(F.silu(self.norm2(h))))

    def _recomputed(self, fn, x):
        if self.recompute_activations and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions: (N, C, H, W) -> (N, C, H, W).

    GN, qkv 1x1, scaled_dot_product_attention per head, proj 1x1 (zero-init), residual."""

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.channels, self.num_heads = channels, num_heads
        self.norm = group_norm(channels, groups)
        # 1x1 convs as Linear layers on the (N, HW, C) tokens: same maths, no extra reshapes.
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        heads = self.num_heads
        t = self.norm(x).flatten(2).transpose(1, 2)                       # (N, HW, C)
        qkv = self.qkv(t).reshape(n, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])        # (N, heads, HW, C/heads)
        a = self.proj(a.transpose(1, 2).reshape(n, h * w, c))             # (N, HW, C)
        return x + a.transpose(1, 2).reshape(n, c, h, w)


class Downsample(nn.Module):
    """Stride-2 conv3x3: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then conv3x3: (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """A ResBlock optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x, emb):
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class UNet(nn.Module):
    """The DDPM U-Net. forward(x (N, C, H, W), c (N,) float noise level in [0, 1000], y (N,) int64 | None)
    -> (N, out_channels, H, W).

    Args:
        in_channels, out_channels: image channels in and out (out defaults to in; 2*in for learned variance).
        base_channels: channels at the top level; level i has base_channels * channel_mult[i].
        channel_mult: one entry per resolution level; H and W must be divisible by 2**(len-1).
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes at which self-attention follows each ResBlock. The sizes
            are those of an image_size input; if image_size is None the lowest level is taken to have size
            max(attention_resolutions) (so the defaults put attention at 4x4 for 8x8 inputs).
        dropout: in the ResBlocks. num_heads: attention heads.
        num_classes: if set, a label embedding (with a null label, index num_classes or -1) is added to the
            time embedding; y=None means the null label.
        image_size: nominal input size (only used to place attention); inputs of other sizes still run.
        groups: GroupNorm groups, reduced to a divisor of each channel count.
        recompute_activations: in training, keep only each ResBlock's input and middle sum and recompute its
            GroupNorm-SiLU-(dropout-)conv halves in the backward pass (torch.utils.checkpoint, same dropout
            masks): same outputs and gradients, less peak memory (benchmarks/speed.py, memory table), 9% more
            forward+backward time (measured at 8x8, batch 128, one CPU thread).

    The middle block (ResBlock-Attention-ResBlock) always has attention. `UNet(**net.config)` rebuilds it.
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 64,
                 channel_mult=(1, 2), num_res_blocks: int = 2, attention_resolutions=(4,),
                 dropout: float = 0.1, num_heads: int = 1, num_classes: int | None = None,
                 image_size: int | None = None, groups: int = 32, recompute_activations: bool = False):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        if not channel_mult:
            raise ValueError("channel_mult must have at least one entry")
        out_channels = out_channels or in_channels
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                           attention_resolutions=list(attention_resolutions), dropout=dropout,
                           num_heads=num_heads, num_classes=num_classes, image_size=image_size, groups=groups,
                           recompute_activations=recompute_activations)
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None and image_size % self.factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2**(len(channel_mult)-1) = "
                             f"{self.factor} for channel_mult={channel_mult}")
        top = image_size if image_size is not None else max(attention_resolutions, default=0) * self.factor
        sizes = [top // 2 ** i for i in range(len(channel_mult))]
        self.attention_levels = [i for i, s in enumerate(sizes) if s in attention_resolutions]

        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, emb_dim)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None

        def res(i, o):
            return ResBlock(i, o, emb_dim, dropout, groups, recompute_activations)

        def attn(ch, level):
            return AttentionBlock(ch, num_heads, groups) if level in self.attention_levels else None

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(_Level(res(ch, base_channels * mult), attn(base_channels * mult, level)))
                ch = base_channels * mult
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.mid1 = res(ch, ch)
        self.mid_attn = AttentionBlock(ch, num_heads, groups)
        self.mid2 = res(ch, ch)

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(_Level(res(ch + skips.pop(), base_channels * mult),
                                      attn(base_channels * mult, level)))
                ch = base_channels * mult
            if level != 0:
                self.up.append(Upsample(ch))
        assert not skips

        self.out_norm = group_norm(ch, groups)
        self.out_conv = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} must be divisible by {self.factor} "
                             f"(2**(len(channel_mult)-1), channel_mult={self.config['channel_mult']})")
        emb = self.time_embed(noise_input(c, n, x.device))
        if self.label_embed is not None:
            emb = emb + self.label_embed(y, n)
        emb = F.silu(emb)
        dtype = self.input_conv.weight.dtype
        h_ = self.input_conv(x.to(dtype))
        if self._channels_last(h_):
            h_ = h_.contiguous(memory_format=torch.channels_last)
        hs = [h_]
        for block in self.down:
            h_ = block(h_, emb) if isinstance(block, _Level) else block(h_)
            hs.append(h_)
        h_ = self.mid2(self.mid_attn(self.mid1(h_, emb)), emb)
        for block in self.up:
            if isinstance(block, _Level):
                h_ = block(torch.cat([h_, hs.pop()], dim=1), emb)
            else:
                h_ = block(h_)
        return self.out_conv(F.silu(self.out_norm(h_))).contiguous()

    # Feature maps in channels_last (NHWC) memory: True, False, or None = automatic: on CPU, without autograd
    # (sampling), for batches of 64 or more of maps of 32x32 or more. Measured on a 2-core AVX2 CPU
    # (benchmarks/speed.py): inference 17% faster at 32x32 (batch 64), but 27% slower at 28x28 with 32 channels and
    # 10% slower at 8x8 (CPU GroupNorm on NHWC is slow for small maps), and training never faster.
    channels_last: bool | None = None

    def _channels_last(self, h: torch.Tensor) -> bool:
        if self.channels_last is None:
            return (h.device.type == "cpu" and not torch.is_grad_enabled() and h.shape[0] >= 64
                    and h.shape[2] * h.shape[3] >= 1024)
        return self.channels_last
