"""Post-hoc Laplace approximation of a LoRA fit, with laplace-torch.

    1. fit LoRA exactly as the `lora` method does (same loop, budget and model selection);
    2. q(θ) = N(θ_MAP, (H_GGN / σ² + P_0)⁻¹) over a subset θ of the trained weights:
         subset_of_weights="all"         every weight the LoRA fit trained (A and B of each
                                         adapter and the `modules_to_save` head); diagonal GGN
         subset_of_weights="last_layer"  the last linear layer (the head); Kronecker-factored
                                         (default), diagonal or full GGN
    3. the prior precision P_0 (and, for regression, the noise σ) maximise the Laplace
       marginal likelihood on the training data (no validation data needed);
    4. prediction: S samples of the linearised (GLM) predictive f ~ N(f_MAP(x), J Σ Jᵀ),
       summarised by `balora.predict.summarize` like every other method (classification:
       softmax of each logit sample; regression: epistemic = variance of the S function
       samples, aleatoric = σ²). The Jacobians J cost about a training epoch's gradients, and
       an evaluation asks for the same inputs at several S: the moments (f_MAP, J Σ Jᵀ) of
       recent inputs are kept (keyed by the inputs' content and the posterior's
       hyperparameters), so each S value only draws new samples.

Why these variants: laplace-torch's Kronecker factors (KFAC) exist only for ``nn.Linear`` /
``nn.Conv2d`` modules, and an adapter's A and B are parameters of a wrapper layer, so over the
adapter weights only the diagonal GGN applies (its full GGN fails on our wrappers in
laplace-torch 0.3 and would need P² memory anyway). ``all``/``diag`` is METHOD.md's "Laplace on
the adapter parameters" and works for any architecture (it differentiates the model output);
``last_layer``/``kron`` is laplace-torch's own recommended default and is cheaper, but needs
the model's output to be the output of one linear layer (not, e.g., multiple-choice logits
reshaped from per-choice scores).

Regression takes laplace-torch's homoscedastic Gaussian likelihood: a Gaussian
(mean, log-variance) head (``gaussian=True``) is not supported (`NotImplementedError`).

laplace-torch is imported lazily; without it `fit` raises an `ImportError` that says how to
install it.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from balora.config import check_choice
from balora.dataset import Data, Inputs, tensor_digest
from balora.inject import get_adapter
from balora.io import write_files
from balora.methods.adapters import LoRA
from balora.methods.budget import FitReport
from balora.predict import Prediction, model_output, summarize

SUBSETS = ("all", "last_layer")
HESSIANS = ("diag", "kron", "full")
PRIOR_STRUCTURES = ("scalar", "layerwise", "diag")
TARGET_KEY = "_balora_target"
LAPLACE_TENSORS = "laplace.safetensors"
LAPLACE_META = "laplace.json"
# Bound on the elements of the Jacobian (examples x outputs x posterior parameters) of one
# predictive call; larger batches are predicted in chunks of examples.
MAX_JACOBIAN_ELEMENTS = 1 << 22
# Bound on the elements of the kept predictive moments (means and output covariances; about
# 64 MiB in float32); the oldest are dropped first.
MAX_CACHED_ELEMENTS = 1 << 24


def _import_laplace() -> Any:
    try:
        import laplace
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'laplace' method needs laplace-torch: pip install laplace-torch (on a CPU-only "
            "torch, install torchvision from the CPU wheel index as well, or leave it out: "
            "laplace-torch does not import it)"
        ) from err
    return laplace


class _Outputs(nn.Module):
    """The adapted model as laplace-torch wants it: one input (a tensor, or a dict whose target
    entry is dropped) in, a (b, k) tensor of logits / regression outputs out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Inputs) -> Tensor:
        if isinstance(x, Mapping):
            # laplace-torch moves tensor batches to the model's device, but not dict batches
            device = next(self.model.parameters()).device
            x = {
                k: v.to(device) if isinstance(v, Tensor) else v
                for k, v in x.items()
                if k != TARGET_KEY
            }
        out = model_output(self.model, x)
        return out.reshape(out.shape[0], -1)


class _Examples(Dataset):
    """`Data` as laplace-torch's loader expects it: ``(x, y)`` pairs for tensor inputs, dicts
    with the target under `TARGET_KEY` for dict inputs; regression targets flattened to (k,)."""

    def __init__(self, data: Data, regression: bool, dtype: torch.dtype) -> None:
        self.data = data
        self.targets = data.targets.reshape(len(data), -1).to(dtype) if regression else data.targets

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        inputs = self.data.inputs
        if isinstance(inputs, Tensor):
            return inputs[i], self.targets[i]
        return {**{k: v[i] for k, v in inputs.items()}, TARGET_KEY: self.targets[i]}


class Laplace(LoRA):
    """LoRA, then a post-hoc Laplace approximation (laplace-torch) with a GLM predictive."""

    name = "laplace"
    stochastic = True

    def __init__(
        self,
        *args: Any,
        subset_of_weights: str = "all",
        hessian_structure: str | None = None,
        prior_structure: str | None = None,
        last_layer_name: str | None = None,
        marglik_steps: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.gaussian:
            raise NotImplementedError(
                "laplace: a Gaussian (mean, log-variance) head is not supported; laplace-torch's "
                "regression likelihood is homoscedastic: use gaussian=False (σ is then fitted "
                "by the marginal likelihood)"
            )
        self.subset_of_weights = check_choice("subset_of_weights", subset_of_weights, SUBSETS)
        if hessian_structure is None:
            hessian_structure = "diag" if subset_of_weights == "all" else "kron"
        self.hessian_structure = check_choice("hessian_structure", hessian_structure, HESSIANS)
        if self.subset_of_weights == "all" and self.hessian_structure != "diag":
            raise ValueError(
                f"laplace: subset_of_weights='all' supports hessian_structure='diag' only, got "
                f"{hessian_structure!r} (Kronecker factors need nn.Linear modules, and the "
                "adapters' A and B are parameters of a wrapper layer); use "
                "subset_of_weights='last_layer' for 'kron' or 'full'"
            )
        if prior_structure is None:
            prior_structure = "layerwise" if subset_of_weights == "all" else "scalar"
        self.prior_structure = check_choice("prior_structure", prior_structure, PRIOR_STRUCTURES)
        if self.subset_of_weights == "last_layer" and self.prior_structure == "layerwise":
            raise ValueError(
                "laplace: subset_of_weights='last_layer' supports prior_structure 'scalar' or "
                "'diag', got 'layerwise'"
            )
        if (
            isinstance(marglik_steps, bool)
            or not isinstance(marglik_steps, int)
            or marglik_steps < 1
        ):
            raise ValueError(f"marglik_steps must be an integer >= 1, got {marglik_steps!r}")
        self.last_layer_name = last_layer_name
        self.marglik_steps = marglik_steps
        self._laplace: Any = None
        self._dict_key_x: str | None = None
        self._moments: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    @property
    def laplace(self) -> Any:
        """The fitted laplace-torch object (``None`` before `fit` / `load`)."""
        return self._laplace

    @laplace.setter
    def laplace(self, value: Any) -> None:
        self._laplace = value
        self._moments.clear()  # moments of another posterior

    def fit(self, train: Data, val: Data | None = None, **options: Any) -> FitReport:
        """Fit LoRA (the shared loop), then the Laplace approximation on `train`; the
        reported `train_seconds` include the Laplace fit."""
        laplace = _import_laplace()  # fail before training, not after
        report = super().fit(train, val, **options)
        start = time.perf_counter()
        self.laplace = self._fit_laplace(laplace, train)
        report.train_seconds += time.perf_counter() - start
        return report

    # -- fitting -----------------------------------------------------------------------------
    def _posterior_parameters(self, model: nn.Module) -> None:
        """Leave `requires_grad` on exactly the weights the LoRA fit trained (laplace-torch
        puts its posterior on those): A and B of each adapter and `modules_to_save`; the unused
        α parameters of the LoRA layers are frozen."""
        adapter = get_adapter(model)
        keep = {id(p) for layer in adapter.layers.values() for p in (layer.lora_A, layer.lora_B)}
        if self.head_mode != "probe":  # a probed head is frozen while the adapters train
            for name in adapter.modules_to_save:
                keep.update(id(p) for p in model.get_submodule(name).parameters())
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)

    def _default_last_layer(self, model: nn.Module) -> str | None:
        """The last ``nn.Linear`` inside `modules_to_save` (e.g. ``classifier`` or
        ``classifier.out_proj``); ``None`` lets laplace-torch find the last layer itself."""
        found = None
        for name in get_adapter(model).modules_to_save:
            for sub, module in model.get_submodule(name).named_modules():
                if isinstance(module, nn.Linear):
                    found = f"{name}.{sub}" if sub else name
        return found

    def _new_laplace(self, laplace: Any, dict_key_x: str | None) -> Any:
        """An unfitted laplace-torch object over the trained LoRA model (the posterior
        parameters selected, the model in eval mode)."""
        model = self.model
        if model is None:
            raise RuntimeError("laplace: the LoRA fit must run before the Laplace fit")
        model.eval()
        self._posterior_parameters(model)
        options: dict[str, Any] = {
            "subset_of_weights": self.subset_of_weights,
            "hessian_structure": self.hessian_structure,
        }
        if self.subset_of_weights == "last_layer":
            name = self.last_layer_name or self._default_last_layer(model)
            if name is not None:
                options["last_layer_name"] = f"model.{name}"
        if dict_key_x is not None:
            options["dict_key_x"] = dict_key_x
            options["dict_key_y"] = TARGET_KEY
        likelihood = "regression" if self.task == "regression" else "classification"
        return laplace.Laplace(_Outputs(model), likelihood, **options)

    def _fit_laplace(self, laplace: Any, train: Data) -> Any:
        dict_key_x = next(iter(train.inputs)) if isinstance(train.inputs, Mapping) else None
        la = self._new_laplace(laplace, dict_key_x)
        self._dict_key_x = dict_key_x
        net = _Outputs(self.model)  # the model as laplace-torch calls it
        regression = self.task == "regression"
        dtype = next(self.model.parameters()).dtype
        loader = DataLoader(
            _Examples(train, regression, dtype),
            batch_size=self.train_config.batch_size,
            shuffle=False,
        )
        la.fit(loader)
        if regression:
            self._fit_hyperparameters(la, train, net, dtype)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
                la.optimize_prior_precision(
                    pred_type="glm",
                    method="marglik",
                    n_steps=self.marglik_steps,
                    prior_structure=self.prior_structure,
                )
        return la

    def _fit_hyperparameters(self, la: Any, train: Data, net: nn.Module, dtype: Any) -> None:
        """Regression: maximise the marginal likelihood over the prior precision and σ
        jointly, σ starting at the training RMSE (its maximum-likelihood value)."""
        with torch.no_grad():
            sq, count = 0.0, 0
            for batch in train.batches(self.train_config.batch_size * 2):
                out = net(batch.inputs)
                sq += (out - batch.targets.reshape(out.shape).to(out.dtype)).pow(2).sum().item()
                count += out.numel()
        rmse = max(math.sqrt(sq / count), 1e-6)
        size = {"scalar": 1, "layerwise": la.n_layers, "diag": la.n_params}[self.prior_structure]
        log_prior = torch.zeros(size, dtype=dtype, requires_grad=True)
        log_sigma = torch.tensor([math.log(rmse)], dtype=dtype, requires_grad=True)
        opt = torch.optim.Adam([log_prior, log_sigma], lr=0.1)
        with warnings.catch_warnings():
            # laplace-torch's Kronecker log-determinant converts a tensor with grad to a float
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            for _ in range(self.marglik_steps):
                opt.zero_grad()
                loss = -la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
                loss.backward()
                opt.step()
        la.prior_precision = log_prior.detach().exp()
        la.sigma_noise = log_sigma.detach().exp()

    # -- persistence -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """The LoRA adapter, plus the posterior (`laplace-torch`'s state: tensors in
        ``laplace.safetensors``, the rest in ``laplace.json``), written together atomically."""
        if self.laplace is None:
            raise RuntimeError("laplace: call fit() before save()")
        super().save(directory)
        tensors: dict[str, Tensor] = {}
        tree = _flatten(self.laplace.state_dict(), "", tensors)
        meta = json.dumps({"dict_key_x": self._dict_key_x, "state": tree}, indent=1)
        blob = save_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        directory = Path(directory)
        write_files(
            {
                directory / LAPLACE_TENSORS: lambda p: Path(p).write_bytes(blob),
                directory / LAPLACE_META: lambda p: Path(p).write_text(meta),
            }
        )
        return directory

    def load(self, directory: str | os.PathLike[str]) -> Self:
        laplace = _import_laplace()
        super().load(directory)
        directory = Path(directory)
        for name in (LAPLACE_TENSORS, LAPLACE_META):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"no Laplace posterior at {directory / name}")
        try:
            meta = json.loads((directory / LAPLACE_META).read_text())
            tensors = load_file(directory / LAPLACE_TENSORS)
            state = _unflatten(meta["state"], tensors)
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise ValueError(f"cannot read the Laplace posterior in {directory}: {e}") from e
        device = next(self.model.parameters()).device
        state = _to_device(state, device)
        self._dict_key_x = meta["dict_key_x"]
        la = self._new_laplace(laplace, self._dict_key_x)
        la.load_state_dict(state)
        self.laplace = la
        return self

    # -- prediction --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, inputs: Inputs, num_samples: int = 32, seed: int | None = 0) -> Prediction:
        """S samples of the linearised predictive (0: the MAP point estimate)."""
        if self.model is None or self.laplace is None:
            raise RuntimeError("laplace: call fit() before predict()")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
        model, la = self.model, self.laplace
        model.eval()
        mean = model_output(model, inputs)  # (b, ...): the MAP outputs in the model's shape
        b, shape = mean.shape[0], mean.shape[1:]
        if num_samples == 0:
            samples = mean.unsqueeze(0)
        else:
            device = next(model.parameters()).device
            generator = None if seed is None else torch.Generator(device).manual_seed(seed)
            step = max(1, MAX_JACOBIAN_ELEMENTS // (mean[0].numel() * la.n_params))
            parts = []
            for start in range(0, b, step):
                f_mu, f_var = self._glm_moments(_slice(inputs, start, start + step))
                # laplace-torch's own sampler, as its `functional_samples` calls it
                f = _import_laplace().utils.normal_samples(f_mu, f_var, num_samples, generator)
                parts.append(f)
            samples = torch.cat(parts, dim=1).reshape(num_samples, b, *shape).to(mean.dtype)
        if self.task == "classification":
            return summarize(samples, "classification", num_samples)
        # a Gaussian per sample with the fitted noise: aleatoric = σ², epistemic = var_s f_s
        log_var = torch.full_like(samples, 2 * math.log(float(la.sigma_noise)))
        return summarize(
            torch.stack([samples, log_var], dim=-1), "regression", num_samples, gaussian=True
        )

    def _glm_moments(self, inputs: Inputs) -> tuple[Tensor, Tensor]:
        """f_MAP (b, k) and J Σ Jᵀ (b, k, k) of the GLM predictive at `inputs`, from the
        cache when these inputs were seen under the current hyperparameters."""
        la = self.laplace
        key = _moments_key(inputs, la)
        if key is not None and key in self._moments:
            self._moments.move_to_end(key)
            return self._moments[key]
        with torch.enable_grad():
            # what laplace-torch's `functional_samples` computes before it samples (the
            # last-layer variants take the last layer's Jacobians)
            f_mu, f_var = la._glm_predictive_distribution(inputs)
        moments = (f_mu.detach(), f_var.detach())
        if key is not None:
            self._moments[key] = moments
            while sum(m.numel() + v.numel() for m, v in self._moments.values()) > (
                MAX_CACHED_ELEMENTS
            ):
                self._moments.popitem(last=False)
        return moments


def _moments_key(inputs: Inputs, la: Any) -> str | None:
    """The inputs' content and the hyperparameters the predictive moments depend on (the
    prior precision and, for regression, σ); ``None`` for inputs that are not all tensors."""
    named = {"x": inputs} if isinstance(inputs, Tensor) else dict(inputs)
    if not all(isinstance(v, Tensor) for v in named.values()):
        return None
    hyper = {"prior": la.prior_precision, "sigma": torch.as_tensor(la.sigma_noise)}
    return tensor_digest({**{f"x.{k}": v for k, v in named.items()}, **hyper})


def _slice(inputs: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    return {
        k: v[start:stop] if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in inputs.items()
    }


# laplace-torch's state: nested dicts / lists of tensors and plain values. Tensors go to a
# safetensors file under their path ("H.0.1"); the JSON tree keeps {"tensor": path} in their
# place, so nothing is pickled.
def _flatten(value: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    if isinstance(value, Tensor):
        tensors[path] = value
        return {"tensor": path}
    if isinstance(value, Mapping):
        return {
            "dict": {
                str(k): _flatten(v, f"{path}.{k}".lstrip("."), tensors) for k, v in value.items()
            }
        }
    if isinstance(value, list | tuple):
        return {
            "list": [_flatten(v, f"{path}.{i}".lstrip("."), tensors) for i, v in enumerate(value)]
        }
    value = getattr(value, "value", value)  # str-valued enums (laplace-torch's Likelihood)
    if value is not None and not isinstance(value, bool | int | float | str):
        raise TypeError(f"laplace: cannot save a {type(value).__name__} at {path!r}")
    return {"value": value}


def _unflatten(node: Any, tensors: dict[str, Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {k: _unflatten(v, tensors) for k, v in node["dict"].items()}
    if "list" in node:
        return [_unflatten(v, tensors) for v in node["list"]]
    return node["value"]


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value
