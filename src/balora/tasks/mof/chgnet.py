"""CHGNet 0.3.0 as a band-gap regressor with adapters: its embeddings and interaction blocks
re-run on padded graphs under the original module names, then a new Gaussian head.

CHGNet's blocks take and return padded tensors (so that `balora.prefix` can replay them) but
compute on packed rows inside, as CHGNet does, and pad only around adapted layers, where every
linear layer sees ``(b, L, d_in)`` and draws one weight sample per crystal (docs/mof.md).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from balora.layers import BaLoRALayer
from balora.tasks.mof.config import MP_GAP_MEAN, MP_GAP_STD
from balora.tasks.mof.crystal import (
    CrystalOutput,
    CrystalRegressor,
    GaussianOutput,
    mask_of,
    masked_mean,
    padded_linear,
)


@dataclass
class _Layout:
    """Where the real rows of a padded CHGNet batch are, computed once per forward.

    Blocks take and return padded ``(b, L, d)`` tensors (so that `balora.prefix` can replay
    them) but compute on packed rows, like CHGNet itself: padding costs only copies, except
    in adapted layers, which see the padded ``(b, L, d)`` layout (one weight draw per crystal).
    """

    masks: dict[str, Tensor]  # kind -> (b, L) bool
    rows: dict[str, Tensor]  # kind -> (R,) flat positions of the real rows
    atom_graph: Tensor  # (E, 2) packed atom indices
    directed2undirected: Tensor  # (E,) packed bond indices
    bond_graph: Tensor  # (A, 3) packed (atom, bond i, bond j)

    def pack(self, x: Tensor, kind: str) -> Tensor:
        """(b, L, ...) -> (R, ...), the real rows in crystal order."""
        return x.flatten(0, 1).index_select(0, self.rows[kind])

    def pad(self, x: Tensor, kind: str) -> Tensor:
        """(R, ...) -> (b, L, ...) with zeros in the padded rows."""
        b, width = self.masks[kind].shape
        out = x.new_zeros((b * width, *x.shape[1:])).index_copy(0, self.rows[kind], x)
        return out.view(b, width, *x.shape[1:])


def _layout(
    masks: dict[str, Tensor],
    counts: dict[str, Tensor],
    atom_graph: Tensor,
    directed2undirected: Tensor,
    bond_graph: Tensor,
) -> _Layout:
    """The `_Layout` of a trimmed batch: local (per crystal) indices become packed ones."""
    rows = {k: m.flatten().nonzero().squeeze(1) for k, m in masks.items()}
    start = {k: (c.cumsum(0) - c).unsqueeze(1) for k, c in counts.items()}  # (b, 1)
    atoms, bonds = start["atoms"], start["bonds"]
    packed_bond_graph = torch.stack(
        [bond_graph[..., 0] + atoms, bond_graph[..., 1] + bonds, bond_graph[..., 2] + bonds], -1
    )
    return _Layout(
        masks=masks,
        rows=rows,
        atom_graph=(atom_graph + atoms.unsqueeze(-1)).flatten(0, 1)[rows["edges"]],
        directed2undirected=(directed2undirected + bonds).flatten()[rows["edges"]],
        bond_graph=packed_bond_graph.flatten(0, 1)[rows["angles"]],
    )


def _packed_linear(layer: nn.Module, x: Tensor, layout: _Layout, kind: str) -> Tensor:
    """A linear layer on packed rows (R, d); an adapted one runs on the padded layout."""
    if not isinstance(layer, BaLoRALayer):
        return layer(x)
    return layout.pack(padded_linear(layer, layout.pad(x, kind), layout.masks[kind]), kind)


def _sequential_call(layers: nn.Sequential, x: Tensor, layout: _Layout, kind: str) -> Tensor:
    """Run chgnet's MLP layers on packed rows."""
    for layer in layers:
        x = _packed_linear(layer, x, layout, kind)
    return x


def _gated_mlp(g: nn.Module, x: Tensor, layout: _Layout, kind: str) -> Tensor:
    """chgnet's GatedMLP.forward on packed rows."""
    core = _sequential_call(g.mlp_core.layers, x, layout, kind)
    gate = _sequential_call(g.mlp_gate.layers, x, layout, kind)
    if g.norm is not None:
        core, gate = g.bn1(core), g.bn2(gate)
    return g.activation(core) * g.sigmoid(gate)


class _BondBasis(nn.Module):
    """CHGNet's radial bases of the bond lengths, on padded (b, U) lengths."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.rbf_expansion_ag = encoder.rbf_expansion_ag
        self.rbf_expansion_bg = encoder.rbf_expansion_bg

    def forward(self, lengths: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, u = lengths.shape
        flat = lengths.masked_fill(~mask, 1.0).flatten()  # padding at 1 Å: finite bases
        out = []
        for rbf in (self.rbf_expansion_ag, self.rbf_expansion_bg):
            bases = rbf(flat).view(b, u, rbf.num_radial)
            out.append(bases.masked_fill(~mask.unsqueeze(-1), 0.0))
        return out[0], out[1]


class _AngleBasis(nn.Module):
    """CHGNet's Fourier bases of the bond angles, on padded (b, A) angles."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.fourier_expansion = encoder.fourier_expansion

    def forward(self, angles: Tensor, mask: Tensor) -> Tensor:
        b, a = angles.shape
        bases = self.fourier_expansion(angles.flatten())
        bases = bases.view(b, a, bases.shape[-1])
        return bases.masked_fill(~mask.unsqueeze(-1), 0.0)


class _AtomConv(nn.Module):
    """chgnet.model.layers.AtomConv: padded in and out, packed inside (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.twoBody_atom = layer.twoBody_atom
        self.mlp_out = layer.mlp_out if layer.use_mlp_out else None
        self.atom_norm = layer.atom_norm
        self.resnet = layer.resnet

    def forward(
        self, atom_feas: Tensor, bond_feas: Tensor, bond_weights: Tensor, layout: _Layout
    ) -> Tensor:
        atoms = layout.pack(atom_feas, "atoms")  # (N, d)
        bonds = layout.pack(bond_feas, "bonds")  # (U, d)
        center, neighbor = layout.atom_graph[:, 0], layout.atom_graph[:, 1]
        d2u = layout.directed2undirected
        messages = torch.cat([atoms[center], bonds[d2u], atoms[neighbor]], dim=1)  # (E, 3d)
        messages = _gated_mlp(self.twoBody_atom, messages, layout, "edges")
        messages = messages * layout.pack(bond_weights, "bonds")[d2u]
        new = torch.zeros_like(atoms).index_add(0, center, messages)
        if self.mlp_out is not None:
            new = _sequential_call(self.mlp_out.layers, new, layout, "atoms")
        if self.resnet:
            new = new + atoms
        if self.atom_norm is not None:
            new = self.atom_norm(new)
        return layout.pad(new, "atoms")


def _angle_inputs(
    atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, layout: _Layout
) -> tuple[Tensor, Tensor]:
    """Packed bonds (U, d) and the (A, 4d) input of the angle MLPs, in CHGNet's order."""
    atoms = layout.pack(atom_feas, "atoms")
    bonds = layout.pack(bond_feas, "bonds")
    graph = layout.bond_graph
    total = torch.cat(
        [bonds[graph[:, 1]], bonds[graph[:, 2]], layout.pack(angle_feas, "angles"),
         atoms[graph[:, 0]]],
        dim=1,
    )  # fmt: skip
    return bonds, total


class _BondConv(nn.Module):
    """chgnet.model.layers.BondConv: padded in and out, packed inside (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.twoBody_bond = layer.twoBody_bond
        self.mlp_out = layer.mlp_out if layer.use_mlp_out else None
        self.bond_norm = layer.bond_norm
        self.resnet = layer.resnet

    def forward(
        self,
        atom_feas: Tensor,
        bond_feas: Tensor,
        bond_weights: Tensor,
        angle_feas: Tensor,
        layout: _Layout,
    ) -> Tensor:
        bonds, total = _angle_inputs(atom_feas, bond_feas, angle_feas, layout)
        update = _gated_mlp(self.twoBody_bond, total, layout, "angles")  # (A, d)
        weights = layout.pack(bond_weights, "bonds")
        bond_i, bond_j = layout.bond_graph[:, 1], layout.bond_graph[:, 2]
        update = update * weights[bond_i] * weights[bond_j]
        new = torch.zeros_like(bonds).index_add(0, bond_i, update)
        if self.mlp_out is not None:
            new = _sequential_call(self.mlp_out.layers, new, layout, "bonds")
        if self.resnet:
            new = new + bonds
        if self.bond_norm is not None:
            new = self.bond_norm(new)
        return layout.pad(new, "bonds")


class _AngleUpdate(nn.Module):
    """chgnet.model.layers.AngleUpdate: padded in and out, packed inside (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.twoBody_bond = layer.twoBody_bond
        self.angle_norm = layer.angle_norm
        self.resnet = layer.resnet

    def forward(
        self, atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, layout: _Layout
    ) -> Tensor:
        _, total = _angle_inputs(atom_feas, bond_feas, angle_feas, layout)
        new = _gated_mlp(self.twoBody_bond, total, layout, "angles")
        if self.resnet:
            new = new + layout.pack(angle_feas, "angles")
        if self.angle_norm is not None:
            new = self.angle_norm(new)
        return layout.pad(new, "angles")


class CHGNetRegressor(CrystalRegressor):
    """CHGNet's embeddings and interaction blocks on padded graphs, then a Gaussian head on
    the crystal feature: ``(**collate(graphs)) -> (b, 2)``.

    The energy read-out, magnetic-moment head and composition model are dropped, and so is the
    last angle update (its output is never used by CHGNet either).
    """

    def __init__(
        self,
        chgnet: nn.Module,
        *,
        initial_noise_std: float = 1.0,
        gap_mean: float = 0.0,
        gap_std: float = 1.0,
    ) -> None:
        dim = chgnet.atom_fea_dim
        super().__init__(dim, initial_noise_std)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in chgnet.modules()):
            raise ValueError("CHGNet variants with batch norm are not supported (padded rows)")
        self.atom_embedding = chgnet.atom_embedding
        self.bond_basis_expansion = _BondBasis(chgnet.bond_basis_expansion)
        self.bond_embedding = chgnet.bond_embedding
        self.bond_weights_ag = chgnet.bond_weights_ag
        self.bond_weights_bg = chgnet.bond_weights_bg
        self.angle_basis_expansion = _AngleBasis(chgnet.angle_basis_expansion)
        self.angle_embedding = chgnet.angle_embedding
        n = chgnet.n_conv
        self.atom_conv_layers = nn.ModuleList(_AtomConv(m) for m in chgnet.atom_conv_layers)
        self.bond_conv_layers = nn.ModuleList(_BondConv(m) for m in chgnet.bond_conv_layers)
        self.angle_layers = nn.ModuleList(_AngleUpdate(m) for m in chgnet.angle_layers[: n - 2])
        self.readout_norm = chgnet.readout_norm
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2))
        self.output = GaussianOutput(gap_mean, gap_std)
        self.reset_head()

    def reset_head(self) -> None:
        for layer in (self.head[0], self.head[2]):
            layer.reset_parameters()
        with torch.no_grad():  # log σ² starts at initial_noise_std² for every input
            self.head[2].weight[1].zero_()
            self.head[2].bias[1] = 2 * math.log(self.initial_noise_std / self.output.scale)

    def forward(
        self,
        atomic_numbers: Tensor,
        atom_graph: Tensor,
        directed2undirected: Tensor,
        bond_lengths: Tensor,
        bond_graph: Tensor,
        angles: Tensor,
        num_atoms: Tensor,
        num_edges: Tensor,
        num_bonds: Tensor,
        num_angles: Tensor,
        output_hidden_states: bool = False,
        return_dict: bool = False,
    ) -> Tensor | CrystalOutput:
        dtype = self.atom_embedding.embedding.weight.dtype  # (linear layers may be wrapped)
        # trim the batch to its largest crystal (at least one row: a BaLoRA layer pools over
        # positions, and a mean over none is NaN)
        counts = {"atoms": num_atoms, "edges": num_edges, "bonds": num_bonds, "angles": num_angles}
        widths = {k: max(1, int(c.max())) for k, c in counts.items()}
        masks = {k: mask_of(c, widths[k]) for k, c in counts.items()}
        layout = _layout(
            masks,
            counts,
            atom_graph[:, : widths["edges"]].long(),
            directed2undirected[:, : widths["edges"]].long(),
            bond_graph[:, : widths["angles"]].long(),
        )
        bond_mask, angle_mask = masks["bonds"], masks["angles"]

        z = atomic_numbers[:, : widths["atoms"]].long()
        atom_feas = self.atom_embedding((z - 1).clamp(min=0))  # (b, N, d); H is row 0
        lengths = bond_lengths[:, : widths["bonds"]].to(dtype)
        bases_ag, bases_bg = self.bond_basis_expansion(lengths, bond_mask)
        bond_feas = padded_linear(self.bond_embedding, bases_ag, bond_mask)
        weights_ag = padded_linear(self.bond_weights_ag, bases_ag, bond_mask)
        weights_bg = padded_linear(self.bond_weights_bg, bases_bg, bond_mask)
        angle_bases = self.angle_basis_expansion(
            angles[:, : widths["angles"]].to(dtype), angle_mask
        )
        angle_feas = padded_linear(self.angle_embedding, angle_bases, angle_mask)

        for i, atom_layer in enumerate(self.atom_conv_layers):
            atom_feas = atom_layer(atom_feas, bond_feas, weights_ag, layout)
            if i < len(self.bond_conv_layers):
                bond_feas = self.bond_conv_layers[i](
                    atom_feas, bond_feas, weights_bg, angle_feas, layout
                )
            if i < len(self.angle_layers):
                angle_feas = self.angle_layers[i](atom_feas, bond_feas, angle_feas, layout)
        atom_mask = masks["atoms"]
        if self.readout_norm is not None:
            atom_feas = self.readout_norm(atom_feas)
        crystal = masked_mean(atom_feas, atom_mask)  # (b, d): band gaps are intensive
        z = self.head(crystal)
        out = self.output(z[:, 0], z[:, 1])
        return self._answer(out, crystal, output_hidden_states, return_dict)


def load_chgnet(initial_noise_std: float = 1.0) -> CHGNetRegressor:
    """Pretrained CHGNet 0.3.0 as a `CHGNetRegressor` (gaps standardised with the same
    Materials-Project band-gap statistics as the CGCNN checkpoint)."""
    try:
        from chgnet.model import CHGNet
    except ImportError as e:
        raise ImportError("the chgnet backbone needs: pip install chgnet") from e
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        chgnet = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    return CHGNetRegressor(
        chgnet, initial_noise_std=initial_noise_std, gap_mean=MP_GAP_MEAN, gap_std=MP_GAP_STD
    ).eval()
