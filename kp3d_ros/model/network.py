"""The keypoint + body-part segmentation network: a small point transformer with a voting head.

Input: one person's centred points (B, N, 3). Per-point MLP embedding, a few pre-norm self-attention
blocks over all N points (global context, no kNN), then two per-point heads:
- segmentation: logits over the 15 classes (B, N, 15);
- keypoints: for each joint j, every point i gives a score s_ij and an offset o_ij; the joint is the
  softmax(s_.j)-weighted mean of (p_i + o_ij). Regression by voting: the estimate moves with the
  input, and the offsets reach joints inside the body. Then the bone-length calibration
  (model.calibration; the identity unless Stage II set it).
Only matmul/softmax/layernorm/GELU/reshape: exports to ONNX and TensorRT without custom ops.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from kp3d_ros.model.calibration import BoneCalibration
from kp3d_ros.skeleton import NUM_CLASSES, NUM_JOINTS


@dataclass
class NetworkConfig:
    dim: int = 64
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    latents: int = 0  # 0: full self-attention over the N points; > 0: that many latent tokens (see LatentBlock)
    num_joints: int = NUM_JOINTS
    num_classes: int = NUM_CLASSES

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, N, d)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.proj(out)


class CrossAttention(nn.Module):
    """Queries (B, Q, D) attend to keys/values (B, K, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, Q, D = queries.shape
        K = context.shape[1]
        h, d = self.heads, D // self.heads
        q = self.q(queries).reshape(B, Q, h, d).transpose(1, 2)
        kv = self.kv(context).reshape(B, K, 2, h, d).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q * self.scale) @ kv[0].transpose(-2, -1), dim=-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(B, Q, D))


def mlp(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))


class LatentBlock(nn.Module):
    """Global mixing through M latent tokens (cost N*M instead of N^2): latents read the points,
    mix among themselves, then every point reads the latents."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm_points = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.read = CrossAttention(dim, heads)
        self.mix = Block(dim, heads, mlp_ratio)
        self.norm_back = nn.LayerNorm(dim)
        self.write = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = latents + self.read(self.norm_latents(latents), self.norm_points(x))
        latents = self.mix(latents)
        x = x + self.write(self.norm_back(x), latents)
        return x + self.mlp(self.norm_mlp(x)), latents


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class KeypointNet(nn.Module):
    """(B, N, 3) -> keypoints (B, J, 3), part logits (B, N, C)."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = config = config or NetworkConfig()
        d, J = config.dim, config.num_joints
        self.embed = nn.Sequential(nn.Linear(3, d), nn.GELU(), nn.Linear(d, d))
        if config.latents:
            self.latents = nn.Parameter(0.02 * torch.randn(1, config.latents, d))
            self.blocks = nn.ModuleList(LatentBlock(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        else:
            self.blocks = nn.ModuleList(Block(d, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d)
        # Global context for the per-point heads: max-pooled features appended to each point.
        self.seg_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, config.num_classes))
        self.vote_head = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 4 * J))
        self.calibration = BoneCalibration()  # bone-length factors, all 1 unless Stage II calibrated them

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = points.shape
        J = self.config.num_joints
        x = self.embed(points)
        if self.config.latents:
            latents = self.latents.expand(B, -1, -1)
            for block in self.blocks:
                x, latents = block(x, latents)
        else:
            for block in self.blocks:
                x = block(x)
        x = self.norm(x)
        glob = x.max(dim=1, keepdim=True).values.expand_as(x)
        feats = torch.cat([x, glob], dim=-1)
        logits = self.seg_head(feats)
        votes = self.vote_head(feats).reshape(B, N, J, 4)
        weights = torch.softmax(votes[..., 0], dim=1)  # (B, N, J), over points
        targets = points.unsqueeze(2) + votes[..., 1:]  # (B, N, J, 3)
        keypoints = (weights.unsqueeze(-1) * targets).sum(dim=1)
        return self.calibration(keypoints), logits


def build_model(config: dict | NetworkConfig | None = None) -> KeypointNet:
    if isinstance(config, dict):
        config = NetworkConfig(**config)
    return KeypointNet(config)


def load_deepened(model: KeypointNet, source: KeypointNet) -> int:
    """Load a shallower trained `source` into `model` (same config except a larger depth): the source's
    blocks become the first blocks and every extra block starts as the identity (its attention and MLP
    output layers zeroed, so each residual adds nothing), so `model` computes what `source` did and
    training goes on with more capacity. Returns the number of blocks added."""
    mine, theirs = model.config.to_dict(), source.config.to_dict()
    added = mine.pop("depth") - theirs.pop("depth")
    if mine != theirs or added < 0:
        raise ValueError(f"cannot deepen {source.config} into {model.config}: only the depth may differ, "
                         "and only upwards")
    if model.config.latents:
        raise ValueError("deepening supports full self-attention blocks only (latents 0)")
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    fresh = {f"blocks.{k}." for k in range(source.config.depth, model.config.depth)}
    if unexpected or any(not any(name.startswith(f) for f in fresh) for name in missing):
        raise ValueError(f"state of {source.config} does not fit {model.config}: {missing} {unexpected}")
    with torch.no_grad():
        for block in model.blocks[source.config.depth:]:
            for layer in (block.attn.proj, block.mlp[2]):
                layer.weight.zero_()
                layer.bias.zero_()
    return added


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
