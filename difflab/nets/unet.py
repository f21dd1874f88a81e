"""The DDPM U-Net (Ho et al. 2020): ResNet blocks, self-attention, skip connections, noise-level embedding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
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


# Memory-lean training on the CPU (issue 9). The plain modules keep, for the backward pass, every map they make:
# a ResBlock half GN -> SiLU -> (dropout ->) conv keeps the GN input, the GN output (for SiLU), the float dropout
# noise and the conv input; Upsample keeps the 4x larger upsampled map. The autograd Functions below keep only
# what the rest cannot be rebuilt from (the block input, the GN's per-group mean and rstd, the dropout mask as
# bools; Upsample's input) and rebuild the rest in the backward pass with elementwise work only (the convs are
# not rerun). They call the ATen ops that autograd calls for the plain modules, in the same order, with the same
# random draws, so outputs and gradients are the same (tests/test_unet_speed_options.py). UNet.lean_training
# chooses them (automatically: for large batches, see there).


def _lean_ok(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Per call: the memory-lean Functions take this input (4-d, dense, one dtype, something needs a gradient)."""
    return (x.dim() == 4 and all(w.dtype == x.dtype for w in weights)
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
            and (x.requires_grad or any(w.requires_grad for w in weights)))


def _conv_args(conv: nn.Conv2d):
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    return tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups


def _conv_backward(grad, inp, weight, has_bias, conv_args, mask):
    stride, padding, dilation, groups = conv_args
    return torch.ops.aten.convolution_backward(grad, inp, weight, [weight.shape[0]] if has_bias else None,
                                               list(stride), list(padding), list(dilation), False, [0, 0], groups,
                                               list(mask))


class _NormActConv(torch.autograd.Function):
    """conv(dropout(silu(group_norm(x)))) keeping x, mean, rstd and a bool dropout mask (see above)."""

    @staticmethod
    def forward(ctx, x, gn_weight, gn_bias, conv_weight, conv_bias, groups, eps, p, conv_args):
        n, c = x.shape[:2]
        hxw = x[0, 0].numel()
        y, mean, rstd = torch.ops.aten.native_group_norm(x, gn_weight, gn_bias, n, c, hxw, groups, eps)
        F.silu(y, inplace=True)
        mask = None
        if p > 0:  # F.dropout on the CPU: noise = bernoulli_(1 - p) / (1 - p); out = input * noise
            noise = torch.empty_like(y).bernoulli_(1 - p)
            mask = noise == 0   # the dropped entries
            y.mul_(noise.div_(1 - p))
            del noise
        out = F.conv2d(y, conv_weight, conv_bias, *conv_args)
        ctx.save_for_backward(x, gn_weight, gn_bias, conv_weight, mean, rstd, mask)
        ctx.hyper = (n, c, hxw, groups, eps, p, conv_args, conv_bias is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, gn_weight, gn_bias, conv_weight, mean, rstd, mask = ctx.saved_tensors
        n, c, hxw, groups, eps, p, conv_args, has_bias = ctx.hyper
        need = ctx.needs_input_grad
        # the conv's input silu(norm(x)) * noise (noise 0 where dropped, else scale = 1 / (1 - p)), rebuilt in place
        # in one buffer; the norm's output is rebuilt again below for SiLU's backward rather than kept alongside
        # (one map less at the peak, which is in the backward pass, for one more GroupNorm pass)
        s = torch.ops.aten.native_group_norm(x, gn_weight, gn_bias, n, c, hxw, groups, eps)[0]
        F.silu(s, inplace=True)
        scale = None
        if mask is not None:
            scale = torch.ones((), dtype=s.dtype).div_(1 - p).item()   # the noise's nonzero value, exactly
            s.masked_fill_(mask, 0.0).mul_(scale)   # (+0 where the plain product gives -0: equal values)
        gs, g_cw, g_cb = _conv_backward(grad, s, conv_weight, has_bias, conv_args,
                                        (need[0] or need[1] or need[2], need[3], need[4]))
        del s
        g_x = g_gw = g_gb = None
        if gs is not None:
            if mask is not None:  # dropout's backward: grad * noise
                gs.masked_fill_(mask, 0.0).mul_(scale)
            y = torch.ops.aten.native_group_norm(x, gn_weight, gn_bias, n, c, hxw, groups, eps)[0]  # SiLU's input
            gs = torch.ops.aten.silu_backward.grad_input(gs, y, grad_input=gs)
            del y
            g_x, g_gw, g_gb = torch.ops.aten.native_group_norm_backward(
                gs.contiguous(), x, mean, rstd, gn_weight, n, c, hxw, groups, [need[0], need[1], need[2]])
        return g_x, g_gw, g_gb, g_cw, g_cb if has_bias else None, None, None, None, None


class _UpsampleConv(torch.autograd.Function):
    """conv(nearest x2 upsample(x)) keeping x, not the 4x larger upsampled map (see above)."""

    @staticmethod
    def forward(ctx, x, conv_weight, conv_bias, conv_args):
        out = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv_weight, conv_bias, *conv_args)
        ctx.save_for_backward(x, conv_weight)
        ctx.hyper = (conv_args, conv_bias is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, conv_weight = ctx.saved_tensors
        conv_args, has_bias = ctx.hyper
        need = ctx.needs_input_grad
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            u = F.interpolate(xd, scale_factor=2.0, mode="nearest")
        gu, g_w, g_b = _conv_backward(grad, u.detach(), conv_weight, has_bias, conv_args,
                                      (need[0], need[1], need[2]))
        g_x = torch.autograd.grad(u, xd, gu)[0] if need[0] else None
        return g_x, g_w, g_b if has_bias else None, None


def norm_act_conv(norm: nn.GroupNorm, conv: nn.Conv2d, x: torch.Tensor, dropout: nn.Dropout | None = None,
                  lean: bool = False):
    """conv(dropout(silu(norm(x)))): with lean (UNet.lean_training) through _NormActConv, else the plain modules."""
    p = dropout.p if dropout is not None and dropout.training else 0.0
    args = _conv_args(conv) if lean else None
    if (args is not None and norm.weight is not None and 0.0 <= p < 1.0
            and _lean_ok(x, conv.weight, norm.weight)):
        return _NormActConv.apply(x, norm.weight, norm.bias, conv.weight, conv.bias, norm.num_groups, norm.eps,
                                  p, args)
    h = F.silu(norm(x))
    return conv(h if dropout is None else dropout(h))


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

    def forward(self, x: torch.Tensor, emb: torch.Tensor, lean: bool = False) -> torch.Tensor:
        """lean: through the memory-lean training Functions (UNet.lean_training decides)."""
        # the skip first: the backward pass then finishes the conv path (which holds larger maps) before it
        # computes the skip's gradient, so the two gradients of x are not both held while the conv path runs
        skip = self.skip(x)
        h = self._recomputed(self._half1, x, lean) + self.emb(emb)[:, :, None, None]
        h = self._recomputed(self._half2, h, lean)
        return skip + h

    def _half1(self, x, lean=False):
        return norm_act_conv(self.norm1, self.conv1, x, lean=lean)

    def _half2(self, h, lean=False):
        return norm_act_conv(self.norm2, self.conv2, h, self.dropout, lean=lean)

    def _recomputed(self, fn, x, lean):
        if self.recompute_activations and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(fn, x, lean, use_reentrant=False)
        return fn(x, lean)


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

    def forward(self, x: torch.Tensor, lean: bool = False) -> torch.Tensor:
        """lean: through the memory-lean training Function (UNet.lean_training decides)."""
        args = _conv_args(self.conv) if lean else None
        if args is not None and _lean_ok(x, self.conv.weight):
            return _UpsampleConv.apply(x, self.conv.weight, self.conv.bias, args)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """A ResBlock optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x, emb, lean=False):
        x = self.res(x, emb, lean)
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
            GroupNorm-SiLU-(dropout-)conv halves, convs included, in the backward pass (torch.utils.checkpoint,
            same dropout masks): same outputs and gradients, 9% more forward+backward time (measured at 8x8,
            batch 128, one CPU thread). Where lean_training (below, automatic for large CPU batches) is on it
            saves little more (32x32-rgb, batch 128: peak RSS 1593 MiB against 1619 MiB; benchmarks/speed.py).
        emb_scale: the noise level enters the sinusoidal embedding as emb_scale x c (`TimeEmbedding`); 1 keeps
            runs saved before it as they were, new runs get `NOISE_EMBEDDING_SCALE` (difflab.runs.normalise).

    Attribute lean_training (True / False / None = automatic): memory-lean training Functions, see below.

    The middle block (ResBlock-Attention-ResBlock) always has attention. `UNet(**net.config)` rebuilds it.
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 64,
                 channel_mult=(1, 2), num_res_blocks: int = 2, attention_resolutions=(4,),
                 dropout: float = 0.1, num_heads: int = 1, num_classes: int | None = None,
                 image_size: int | None = None, groups: int = 32, recompute_activations: bool = False,
                 emb_scale: float = 1.0):
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
        if emb_scale != 1.0:  # only when set, so that the configs of earlier runs stay as they were
            self.config["emb_scale"] = float(emb_scale)
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        self.factor = 2 ** (len(channel_mult) - 1)
        if image_size is not None and image_size % self.factor:
            raise ValueError(f"image_size {image_size} must be divisible by 2**(len(channel_mult)-1) = "
                             f"{self.factor} for channel_mult={channel_mult}")
        top = image_size if image_size is not None else max(attention_resolutions, default=0) * self.factor
        sizes = [top // 2 ** i for i in range(len(channel_mult))]
        self.attention_levels = [i for i, s in enumerate(sizes) if s in attention_resolutions]

        emb_dim = 4 * base_channels
        self.time_embed = TimeEmbedding(base_channels, emb_dim, scale=emb_scale)
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
        lean = self._lean_training(h_)
        hs = [h_]
        for block in self.down:
            h_ = block(h_, emb, lean) if isinstance(block, _Level) else block(h_)
            hs.append(h_)
        h_ = self.mid2(self.mid_attn(self.mid1(h_, emb, lean)), emb, lean)
        for block in self.up:
            if isinstance(block, _Level):
                h_ = block(torch.cat([h_, hs.pop()], dim=1), emb, lean)
            else:
                h_ = block(h_, lean) if isinstance(block, Upsample) else block(h_)
        return norm_act_conv(self.out_norm, self.out_conv, h_, lean=lean).contiguous()

    # Feature maps in channels_last (NHWC) memory: True, False, or None = automatic: on CPU, without autograd
    # (sampling), for batches of 16 or more of maps of 32x32 or more. Measured on a 2-core AVX2 CPU
    # (benchmarks/speed.py): inference 17% faster at 32x32 (batch 64; 12-24% at batch 16 and 32, paired forwards
    # of the 32x32-rgb net, one thread), but 27% slower at 28x28 with 32 channels and
    # 10% slower at 8x8 (CPU GroupNorm on NHWC is slow for small maps), and training never faster.
    channels_last: bool | None = None

    # Memory-lean training (the autograd Functions above: same outputs and gradients, under half the activations
    # kept for the backward pass): True, False, or None = automatic: in CPU training in float32/64 (no autocast,
    # not compiling) when the top-level feature map of the batch (N x base_channels x H x W) has at least
    # LEAN_MIN_BYTES, i.e. when the plain modules would keep about a GB or more for the backward pass. Only ever
    # in train mode with autograd on and on the CPU (the Functions replay the CPU dropout's random draws; eval-mode
    # autograd, for likelihoods and guidance, may run backward twice through one graph or differentiate twice).
    # Measured on a loaded 2-core AVX2 CPU (benchmarks/results/speed.md, 32x32-rgb, one thread, paired steps):
    # peak RSS at batch 128 1619 MiB instead of 2755 MiB, and the step 11% faster (fewer fresh large allocations);
    # batch 64 6% faster; batch 32 (top map 8 MiB) 4% slower (rebuilding the maps costs more than it saves there).
    lean_training: bool | None = None
    LEAN_MIN_BYTES = 16 * 2 ** 20

    def _lean_training(self, h: torch.Tensor) -> bool:
        if (torch.compiler.is_compiling() or not self.training or not torch.is_grad_enabled()
                or h.device.type != "cpu" or h.dtype not in (torch.float32, torch.float64)
                or torch.is_autocast_enabled("cpu")):
            return False
        if self.lean_training is None:
            return h.numel() * h.element_size() >= self.LEAN_MIN_BYTES
        return bool(self.lean_training)

    def _channels_last(self, h: torch.Tensor) -> bool:
        if self.channels_last is None:
            return (h.device.type == "cpu" and not torch.is_grad_enabled() and h.shape[0] >= 16
                    and h.shape[2] * h.shape[3] >= 1024)
        return self.channels_last
